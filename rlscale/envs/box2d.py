"""Gymnasium's Box2D games with discrete actions (LunarLander-v3), through gymnasium's box2d
extra. The other Box2D ids (BipedalWalker, CarRacing, continuous LunarLander) are recognised
and refused: rlscale's PPO takes discrete actions and vector observations."""

from __future__ import annotations

import importlib.util

from rlscale.envs.base import EnvFamily, VecEnv
from rlscale.envs.classic import ClassicVecEnv, gymnasium_ids
from rlscale.errors import ConfigError

DISCRETE_IDS = ("LunarLander-v3",)
INSTALL_HINT = "pip install -e '.[box2d]' (or pip install \"gymnasium[box2d]\")"


def box2d_ids() -> tuple[str, ...]:
    return gymnasium_ids("box2d")


class Box2DVecEnv(ClassicVecEnv):
    """A Box2D world does not survive pickling (the lander's bodies are lost), so the env refuses
    to be saved: a run resumes with fresh episodes, as on Atari, instead of with broken ones."""

    def __getstate__(self):
        raise TypeError("Box2D environments cannot be pickled")


def box2d_installed() -> bool:
    return importlib.util.find_spec("Box2D") is not None


class Box2D(EnvFamily):
    name = "box2d"

    def claims(self, env_id: str) -> bool:
        return "/" not in env_id and env_id in box2d_ids()

    def known_ids(self) -> tuple[str, ...]:
        return box2d_ids()

    def example_ids(self) -> str:
        return " or ".join(DISCRETE_IDS)

    def check(self, env_id: str) -> None:
        super().check(env_id)
        if env_id not in DISCRETE_IDS:
            raise ConfigError(f"env.id '{env_id}' has continuous actions or image observations; rlscale's PPO trains "
                              f"the Box2D game {' or '.join(DISCRETE_IDS)}")
        if not box2d_installed():
            raise ConfigError(f"env.id '{env_id}' needs Box2D: {INSTALL_HINT}")

    def make(self, env_cfg, num_envs: int, seed: int) -> VecEnv:
        self.check(env_cfg.id)
        return Box2DVecEnv(env_cfg.id, num_envs, seed, clip_rewards=env_cfg.clip_rewards)
