"""Gymnasium's classic-control games (CartPole-v1, Acrobot-v1, MountainCar-v0, ...)."""

from __future__ import annotations

from functools import cache

import numpy as np

from rlscale.envs.base import EnvFamily, StepResult, VecEnv
from rlscale.errors import ConfigError


@cache
def gymnasium_ids(entry_point_part: str) -> tuple[str, ...]:
    """The ids gymnasium registers whose entry point names `entry_point_part` (a package of
    gymnasium.envs: 'classic_control', 'box2d'), sorted."""
    import gymnasium as gym

    return tuple(sorted(env_id for env_id, spec in gym.registry.items()
                        if isinstance(spec.entry_point, str) and entry_point_part in spec.entry_point))


def classic_ids() -> tuple[str, ...]:
    return gymnasium_ids("classic_control")


class ClassicVecEnv(VecEnv):
    """gymnasium's synchronous vector env of one registered game with discrete actions (classic
    control, Box2D; MinAtar converts its observations in a subclass). `make_kwargs` go to
    gymnasium.make for each env."""

    encoder = "mlp"

    def __init__(self, env_id: str, num_envs: int, seed: int, clip_rewards: bool = False, make_kwargs: dict | None = None):
        import gymnasium as gym

        super().__init__(num_envs, clip_rewards)
        self._env = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
            **(make_kwargs or {}),
        )
        space = self._env.single_action_space
        if not isinstance(space, gym.spaces.Discrete):
            raise ConfigError(f"env.id '{env_id}' has {type(space).__name__} actions; only discrete actions are supported")
        obs_shape = self._env.single_observation_space.shape
        assert obs_shape is not None, "gymnasium envs here have Box observations"
        self.obs_shape = tuple(obs_shape)
        self.obs_dtype = np.dtype(np.float32)
        self.num_actions = int(space.n)
        self._seed = seed

    def _convert(self, obs: np.ndarray) -> np.ndarray:
        """gymnasium's batch of observations [E, ...] -> the learner's [E, *obs_shape]."""
        return obs.astype(np.float32)

    def reset(self) -> np.ndarray:
        obs, _ = self._env.reset(seed=self._seed)
        self._env.action_space.seed(self._seed)
        return self._convert(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, info = self._env.step(actions)
        obs = self._convert(obs)
        done = terminated | truncated
        final_obs = obs
        if done.any():
            final_obs = obs.copy()
            for i in np.flatnonzero(done):
                final_obs[i] = self._convert(np.asarray(info["final_obs"][i])[None])[0]
        rets, lens = self._track(np.asarray(reward, dtype=np.float64), done)
        return StepResult(obs, self._train_reward(reward), terminated, truncated, final_obs, done, rets, lens)

    def close(self) -> None:
        self._env.close()


class ClassicControl(EnvFamily):
    name = "classic_control"

    def claims(self, env_id: str) -> bool:
        return "/" not in env_id and env_id in classic_ids()

    def known_ids(self) -> tuple[str, ...]:
        return classic_ids()

    def example_ids(self) -> str:
        return "CartPole-v1 or Acrobot-v1"

    def check(self, env_id: str) -> None:
        super().check(env_id)
        if "Continuous" in env_id or env_id.startswith("Pendulum"):
            raise ConfigError(f"env.id '{env_id}' has continuous actions; rlscale's PPO needs discrete actions "
                              "(CartPole-v1, Acrobot-v1, MountainCar-v0, ALE/*-v5)")

    def make(self, env_cfg, num_envs: int, seed: int) -> VecEnv:
        return ClassicVecEnv(env_cfg.id, num_envs, seed, clip_rewards=env_cfg.clip_rewards)
