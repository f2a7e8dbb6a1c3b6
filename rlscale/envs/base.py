"""What every environment family provides: the vector-env interface, its spec, the family type.

``VecEnv`` steps E environments with same-step autoreset: when an episode ends, ``step``
returns the first observation of the next episode in ``obs`` and the last observation of the
ended one in ``final_obs``, which the rollout needs to bootstrap the value of truncated
episodes. Training rewards may be clipped and lives may end training episodes, but
``episode_returns`` always reports raw, unclipped game scores.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rlscale.errors import ConfigError


@dataclass(frozen=True)
class EnvSpec:
    """What the learner and the model need to know about an environment."""

    obs_shape: tuple[int, ...]
    obs_dtype: str
    num_actions: int
    frames_per_env_step: int = 1
    """Emulator frames per agent step (Atari frame skip); 1 elsewhere."""
    frame_stack: int = 1
    """K > 1: observations are stacks of the last K frames [K, H, W]."""
    encoder: str = "mlp"
    """The family's default encoder (a key of rlscale.model.ENCODERS)."""


@dataclass
class StepResult:
    obs: np.ndarray  # [E, *obs_shape], first obs of the next episode where one ended
    reward: np.ndarray  # [E] float32, training reward (clipped if asked)
    terminated: np.ndarray  # [E] bool, true end of the training episode (no bootstrap)
    truncated: np.ndarray  # [E] bool, time limit (bootstrap from final_obs)
    final_obs: np.ndarray  # [E, *obs_shape], last obs of the ended episode (= obs elsewhere)
    reset: np.ndarray  # [E] bool, the env was reset: obs is a new game's first observation
    episode_returns: list[float]  # raw scores of games that ended at this step
    episode_lengths: list[int]  # their lengths in env steps


class VecEnv:
    """E environments stepped together. Subclasses set the spec attributes in ``__init__`` and
    implement ``reset`` and ``step``; ``_track`` and ``_train_reward`` do the bookkeeping."""

    num_envs: int
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    frames_per_env_step: int = 1
    frame_stack: int = 1
    encoder: ClassVar[str] = "mlp"

    def __init__(self, num_envs: int, clip_rewards: bool):
        self.num_envs = num_envs
        self.clip_rewards = clip_rewards
        self._ret = np.zeros(num_envs, dtype=np.float64)
        self._len = np.zeros(num_envs, dtype=np.int64)

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(tuple(self.obs_shape), str(self.obs_dtype), int(self.num_actions),
                       self.frames_per_env_step, self.frame_stack, self.encoder)

    def reset(self) -> np.ndarray:
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> StepResult:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def clear_episode_stats(self) -> None:
        """Forget the running scores of games in progress (after a reset that starts new games)."""
        self._ret[:] = 0.0
        self._len[:] = 0

    def games_in_progress(self) -> tuple[np.ndarray, np.ndarray]:
        """Raw score so far and length in env steps of each env's current game."""
        return self._ret.copy(), self._len.copy()

    def _track(self, raw_reward: np.ndarray, game_over: np.ndarray) -> tuple[list[float], list[int]]:
        """Add a step's raw rewards; return the scores and lengths of the games that ended."""
        self._ret += raw_reward
        self._len += 1
        if not game_over.any():
            return [], []
        idx = np.flatnonzero(game_over)
        rets, lens = self._ret[idx].tolist(), self._len[idx].tolist()
        self._ret[idx] = 0.0
        self._len[idx] = 0
        return rets, lens

    def _train_reward(self, raw: np.ndarray) -> np.ndarray:
        return (np.sign(raw) if self.clip_rewards else raw).astype(np.float32)


class EnvFamily:
    """One family of environments: which ids it owns, how to check and build them.

    Subclasses set ``name`` and implement ``claims`` (cheap, no heavy import: it decides which
    family an id belongs to), ``known_ids`` (for typo suggestions) and ``make``; ``check`` may
    refuse ids the family owns but rlscale cannot train (with a one-line ConfigError).
    """

    name: ClassVar[str] = ""

    def claims(self, env_id: str) -> bool:
        raise NotImplementedError

    def known_ids(self) -> Sequence[str]:
        raise NotImplementedError

    def check(self, env_id: str) -> None:
        if env_id not in self.known_ids():
            raise unknown_id_error(env_id, self.known_ids(), self.example_ids())

    def example_ids(self) -> str:
        ids = list(self.known_ids())[:2]
        return " or ".join(ids)

    def make(self, env_cfg: Any, num_envs: int, seed: int) -> VecEnv:
        """A vector env of `num_envs` copies of env_cfg.id; `seed` fixes the whole vector."""
        raise NotImplementedError


def unknown_id_error(env_id: str, candidates: Sequence[str], examples: str) -> ConfigError:
    close = difflib.get_close_matches(env_id, list(candidates), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; use an id such as {examples}"
    return ConfigError(f"unknown environment id '{env_id}'{hint}")
