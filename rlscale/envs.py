"""The only module that knows gymnasium and ale-py.

Both kinds of environment are wrapped in one vector interface, ``VecEnv``, with same-step
autoreset: when an episode ends, ``step`` returns the first observation of the next episode in
``obs`` and the last observation of the ended one in ``final_obs``, which the rollout needs to
bootstrap the value of truncated episodes. Training rewards may be clipped and lives may end
training episodes, but ``episode_returns`` always reports raw, unclipped game scores.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


@lru_cache(maxsize=1)
def _atari_games() -> tuple[str, ...]:
    import ale_py.roms

    return tuple(sorted(ale_py.roms.get_all_rom_ids()))


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def atari_game(env_id: str) -> str:
    """'ALE/SpaceInvaders-v5' -> 'space_invaders' (the ROM id ale-py uses)."""
    name = env_id.split("/", 1)[1].rsplit("-v", 1)[0]
    return _camel_to_snake(name)


@lru_cache(maxsize=1)
def _classic_ids() -> tuple[str, ...]:
    import gymnasium as gym

    ids = []
    for env_id, spec in gym.registry.items():
        ep = spec.entry_point if isinstance(spec.entry_point, str) else ""
        if "classic_control" in ep:
            ids.append(env_id)
    return tuple(sorted(ids))


def known_env_ids() -> list[str]:
    return list(_classic_ids()) + [f"ALE/{''.join(p.capitalize() for p in g.split('_'))}-v5" for g in _atari_games()]


def check_env_id(env_id: str) -> None:
    """Raise ConfigError naming close ids unless env_id is a supported environment."""
    from rlscale.config import ConfigError

    ok = False
    if is_atari(env_id):
        ok = env_id.endswith("-v5") and atari_game(env_id) in _atari_games()
    else:
        ok = env_id in _classic_ids()
    if ok and ("Continuous" in env_id or env_id.startswith("Pendulum")):
        raise ConfigError(f"env.id '{env_id}' has continuous actions; rlscale's PPO needs discrete actions (CartPole-v1, Acrobot-v1, MountainCar-v0, ALE/*-v5)")
    if not ok:
        close = difflib.get_close_matches(env_id, known_env_ids(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; use a classic-control id such as CartPole-v1 or an ALE v5 id such as ALE/Pong-v5"
        raise ConfigError(f"unknown environment id '{env_id}'{hint}")


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
    """E environments stepped together; subclasses fill ``_raw_step``."""

    num_envs: int
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    frames_per_env_step: int = 1
    frame_stack: int = 1  # K > 1: observations are stacks of the last K frames [K, H, W]

    def __init__(self, num_envs: int, clip_rewards: bool):
        self.num_envs = num_envs
        self.clip_rewards = clip_rewards
        self._ret = np.zeros(num_envs, dtype=np.float64)
        self._len = np.zeros(num_envs, dtype=np.int64)

    def _track(self, raw_reward: np.ndarray, game_over: np.ndarray) -> tuple[list[float], list[int]]:
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

    def close(self) -> None:
        self._env.close()


class ClassicVecEnv(VecEnv):
    def __init__(self, env_id: str, num_envs: int, seed: int, clip_rewards: bool = False):
        import gymnasium as gym

        super().__init__(num_envs, clip_rewards)
        self._env = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        )
        space = self._env.single_action_space
        if not isinstance(space, gym.spaces.Discrete):
            from rlscale.config import ConfigError

            raise ConfigError(f"env.id '{env_id}' has {type(space).__name__} actions; only discrete actions are supported")
        self.obs_shape = self._env.single_observation_space.shape
        self.obs_dtype = np.dtype(np.float32)
        self.num_actions = int(space.n)
        self._seed = seed

    def reset(self) -> np.ndarray:
        obs, _ = self._env.reset(seed=self._seed)
        self._env.action_space.seed(self._seed)
        return obs.astype(np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, info = self._env.step(actions)
        obs = obs.astype(np.float32)
        done = terminated | truncated
        final_obs = obs
        if done.any():
            final_obs = obs.copy()
            for i in np.flatnonzero(done):
                final_obs[i] = info["final_obs"][i]
        rets, lens = self._track(reward, done)
        return StepResult(obs, self._train_reward(reward), terminated, truncated, final_obs, done, rets, lens)


class AtariVecEnv(VecEnv):
    """ale-py's C++ vector env: 84x84 grey, frame skip, max-pool, frame stack, no-op starts."""

    def __init__(self, cfg, num_envs: int, seed: int, num_threads: int = 1):
        from ale_py.vector_env import AtariVectorEnv

        super().__init__(num_envs, cfg.clip_rewards)
        self._env = AtariVectorEnv(
            atari_game(cfg.id),
            num_envs,
            num_threads=num_threads,
            repeat_action_probability=cfg.repeat_action_probability,
            noop_max=cfg.noop_max,
            frameskip=cfg.frame_skip,
            stack_num=cfg.frame_stack,
            max_num_frames_per_episode=cfg.max_episode_frames,
            autoreset_mode="SameStep",
            # Rewards come raw so that scores are reported unclipped; clipping is ours.
            reward_clipping=False,
            # ale's own episodic_life resets the whole game at a life loss, which would cut
            # reported scores short; lives are tracked here instead (see step).
            episodic_life=False,
        )
        self.episodic_life = cfg.episodic_life
        self.obs_shape = (cfg.frame_stack, 84, 84)
        self.obs_dtype = np.dtype(np.uint8)
        self.num_actions = int(self._env.single_action_space.n)
        self.frames_per_env_step = cfg.frame_skip
        self.frame_stack = cfg.frame_stack
        # ALE seeds env i with seed + i as a C int: fold the (up to 32-bit) worker seed into
        # [0, 2^31 - num_envs). Seeds already in that range are kept as they are.
        self._seed = int(seed) % (2**31 - num_envs)
        self._lives = None

    def reset(self) -> np.ndarray:
        obs, info = self._env.reset(seed=self._seed)
        self._lives = info["lives"].copy()
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(actions, dtype=np.int64))
        game_over = terminated | truncated
        final_obs = obs
        if game_over.any():
            final_obs = obs.copy()
            final_obs[game_over] = info["final_obs"][game_over]  # [E, ...], valid where done
        lives = info["lives"]
        train_terminated = terminated.copy()
        if self.episodic_life:
            # A lost life ends the training episode (no value bootstrap across it); the game goes on.
            train_terminated |= (lives < self._lives) & ~game_over
        self._lives = lives.copy()
        rets, lens = self._track(reward.astype(np.float64), game_over)
        return StepResult(obs, self._train_reward(reward), train_terminated, truncated, final_obs, game_over, rets, lens)


def make_vector_env(cfg, num_envs: int, seed: int) -> VecEnv:
    """cfg is an EnvConfig; seed fixes the whole vector (env i gets a seed derived from it)."""
    check_env_id(cfg.id)
    if is_atari(cfg.id):
        return AtariVecEnv(cfg, num_envs, seed)
    return ClassicVecEnv(cfg.id, num_envs, seed, clip_rewards=cfg.clip_rewards)
