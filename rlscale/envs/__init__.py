"""Environment families as a registry: the only package that knows gymnasium and ale-py.

A family (``EnvFamily``) owns a set of ids: it recognises them, checks them (with suggestions
for typos), builds their vector env (``VecEnv``, same-step autoreset) and names the default
encoder of their observations in the env's ``EnvSpec``. Built in: classic control
(``CartPole-v1``), Atari (``ALE/Pong-v5``), MinAtar (``MinAtar/Breakout-v1``, the ``minatar``
extra) and Box2D (``LunarLander-v3``, the ``box2d`` extra). Adding a family is one new module with an
``EnvFamily`` subclass and one ``register_family`` call, here or in user code before training:

    from rlscale.envs import EnvFamily, register_family
    register_family(MyFamily())

Families are asked in the order they were registered; the first that claims an id owns it.
"""

from __future__ import annotations

from rlscale.envs.atari import Atari
from rlscale.envs.base import EnvFamily, EnvSpec, StepResult, VecEnv, unknown_id_error
from rlscale.envs.box2d import Box2D
from rlscale.envs.classic import ClassicControl
from rlscale.envs.minatar import MinAtar

__all__ = ["EnvFamily", "EnvSpec", "StepResult", "VecEnv", "register_family", "families", "family_for",
           "check_env_id", "make_vector_env", "known_env_ids"]

_FAMILIES: list[EnvFamily] = []


def register_family(family: EnvFamily) -> EnvFamily:
    """Add a family (a later one with the same name replaces the earlier one)."""
    if not family.name:
        raise ValueError("an EnvFamily needs a name")
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != family.name]
    _FAMILIES.append(family)
    return family


def unregister_family(name: str) -> None:
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != name]


def families() -> list[EnvFamily]:
    return list(_FAMILIES)


def family_for(env_id: str) -> EnvFamily | None:
    return next((f for f in _FAMILIES if f.claims(env_id)), None)


def known_env_ids() -> list[str]:
    return [i for f in _FAMILIES for i in f.known_ids()]


def check_env_id(env_id: str) -> EnvFamily:
    """The family of env_id, or a ConfigError naming close ids of every family."""
    family = family_for(env_id)
    if family is None:
        examples = "; ".join(f.example_ids() for f in _FAMILIES)
        raise unknown_id_error(env_id, known_env_ids(), examples)
    family.check(env_id)
    return family


def make_vector_env(env_cfg, num_envs: int, seed: int) -> VecEnv:
    """env_cfg is an EnvConfig; seed fixes the whole vector (env i gets a seed derived from it)."""
    return check_env_id(env_cfg.id).make(env_cfg, num_envs, seed)


register_family(ClassicControl())
register_family(Atari())
register_family(MinAtar())
register_family(Box2D())
