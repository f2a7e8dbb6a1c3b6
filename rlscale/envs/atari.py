"""Atari 2600 games through ale-py's C++ vector env (ids ALE/<Game>-v5)."""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from rlscale.envs.base import EnvFamily, StepResult, VecEnv, unknown_id_error


@lru_cache(maxsize=1)
def atari_games() -> tuple[str, ...]:
    import ale_py.roms

    return tuple(sorted(ale_py.roms.get_all_rom_ids()))


def atari_game(env_id: str) -> str:
    """'ALE/SpaceInvaders-v5' -> 'space_invaders' (the ROM id ale-py uses)."""
    name = env_id.split("/", 1)[1].rsplit("-v", 1)[0]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class AtariVecEnv(VecEnv):
    """ale-py's C++ vector env: 84x84 grey, frame skip, max-pool, frame stack, no-op starts."""

    encoder = "nature_cnn"

    def __init__(self, cfg, num_envs: int, seed: int, num_threads: int = 1):
        from ale_py.vector_env import AtariVectorEnv
        from gymnasium.spaces import Discrete

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
        action_space = self._env.single_action_space
        assert isinstance(action_space, Discrete)  # ale-py's default: discrete actions
        self.num_actions = int(action_space.n)
        self.frames_per_env_step = cfg.frame_skip
        self.frame_stack = cfg.frame_stack
        # ALE seeds env i with seed + i as a C int: fold the (up to 32-bit) worker seed into
        # [0, 2^31 - num_envs). Seeds already in that range are kept as they are.
        self._seed = int(seed) % (2**31 - num_envs)
        self._lives: np.ndarray | None = None

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

    def close(self) -> None:
        self._env.close()


class Atari(EnvFamily):
    name = "atari"

    def claims(self, env_id: str) -> bool:
        return env_id.startswith("ALE/")

    def known_ids(self) -> list[str]:
        return [f"ALE/{''.join(p.capitalize() for p in g.split('_'))}-v5" for g in atari_games()]

    def example_ids(self) -> str:
        return "ALE/Pong-v5 or ALE/Breakout-v5"

    def check(self, env_id: str) -> None:
        if not (env_id.endswith("-v5") and atari_game(env_id) in atari_games()):
            raise unknown_id_error(env_id, self.known_ids(), self.example_ids())

    def make(self, env_cfg, num_envs: int, seed: int) -> VecEnv:
        return AtariVecEnv(env_cfg, num_envs, seed)
