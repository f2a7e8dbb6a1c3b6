"""MinAtar (Young & Tian 2019): five miniature Atari games on 10x10 binary grids, through the
`minatar` package's gymnasium ids (MinAtar/Breakout-v1, ...; -v1 with each game's minimal
action set, -v0 with all 6 actions).

The games keep MinAtar's own defaults: sticky actions with probability 0.1 and difficulty
ramping. Observations [10, 10, C] bool become [C, 10, 10] uint8 for the `minatar_cnn` encoder
(the paper's network). MinAtar sets no time limit of its own; a game is truncated after
`env.max_episode_frames` steps (one frame per step here; 108,000 by default, far beyond any
game a PPO agent plays in this testbed), so that a good agent's episodes still end.
"""

from __future__ import annotations

import importlib.util
import logging
from contextlib import contextmanager

import numpy as np

from rlscale.envs.base import EnvFamily, VecEnv
from rlscale.envs.classic import ClassicVecEnv
from rlscale.errors import ConfigError

GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")
INSTALL_HINT = "pip install -e '.[minatar]' (or pip install minatar==1.0.15)"


def minatar_ids() -> tuple[str, ...]:
    """The ids minatar.gym.register_envs() registers (fixed by the package, so listed without importing it)."""
    return tuple(f"MinAtar/{g}-v{v}" for g in GAMES for v in (0, 1))


class _SeabornWarningFilter(logging.Filter):
    """Drops minatar's 'Cannot import seaborn' / 'Cannot import matplotlib and/or seaborn' log
    records (seaborn only colours MinAtar's human rendering, which training never uses)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Cannot import") and "seaborn" in msg and "minatar" in record.pathname)


@contextmanager
def _quiet_seaborn_warning():
    root = logging.getLogger()
    filt = _SeabornWarningFilter()
    # minatar warns through logging.warning, which would also install a stderr handler on the
    # root logger if it has none (logging.basicConfig); a placeholder handler prevents that.
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)
        if placeholder is not None:
            root.removeHandler(placeholder)


def minatar_installed() -> bool:
    return importlib.util.find_spec("minatar") is not None


def register_minatar_envs() -> None:
    """Import minatar's gymnasium module (its seaborn warning silenced) and register its ids once."""
    import gymnasium as gym

    with _quiet_seaborn_warning():
        import minatar.gym

    if not all(i in gym.registry for i in minatar_ids()):
        minatar.gym.register_envs()


class MinAtarVecEnv(ClassicVecEnv):
    """E MinAtar games stepped in one process (gymnasium's SyncVectorEnv, same-step autoreset)."""

    encoder = "minatar_cnn"

    def __init__(self, env_id: str, num_envs: int, seed: int, clip_rewards: bool = False, max_episode_steps: int = 108_000):
        register_minatar_envs()
        # MinAtar seeds env i with a numpy RandomState(seed + i): keep seed + i below 2^32.
        super().__init__(env_id, num_envs, int(seed) % (2**32 - num_envs), clip_rewards,
                         make_kwargs={"max_episode_steps": max_episode_steps})
        h, w, c = self.obs_shape
        self.obs_shape = (c, h, w)
        self.obs_dtype = np.dtype(np.uint8)

    def _convert(self, obs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(obs.transpose(0, 3, 1, 2), dtype=np.uint8)


class MinAtar(EnvFamily):
    name = "minatar"

    def claims(self, env_id: str) -> bool:
        return env_id.startswith("MinAtar/")

    def known_ids(self) -> tuple[str, ...]:
        return minatar_ids()

    def example_ids(self) -> str:
        return "MinAtar/Breakout-v1 or MinAtar/SpaceInvaders-v1"

    def check(self, env_id: str) -> None:
        super().check(env_id)
        if not minatar_installed():
            raise ConfigError(f"env.id '{env_id}' needs the minatar package: {INSTALL_HINT}")

    def make(self, env_cfg, num_envs: int, seed: int) -> VecEnv:
        self.check(env_cfg.id)
        return MinAtarVecEnv(env_cfg.id, num_envs, seed, clip_rewards=env_cfg.clip_rewards,
                             max_episode_steps=env_cfg.max_episode_frames)
