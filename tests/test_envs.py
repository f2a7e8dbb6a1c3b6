"""Environment families: the registry, typo suggestions, the encoder from the spec, and a toy
family registered from this file that trains through `rlscale train` with no rlscale edit."""

import json

import numpy as np
import pytest
import torch

from rlscale.cli import main
from rlscale.envs import EnvFamily, EnvSpec, StepResult, VecEnv, check_env_id, families, register_family, unregister_family
from rlscale.errors import ConfigError
from rlscale.model import ActorCritic
from tests.helpers import CARTPOLE


class SignalVecEnv(VecEnv):
    """Each step shows a one-hot signal s in {0, 1}; action s earns 1. Episodes of 8 steps."""

    encoder = "mlp"
    LENGTH = 8

    def __init__(self, num_envs: int, seed: int):
        super().__init__(num_envs, clip_rewards=False)
        self.obs_shape, self.obs_dtype, self.num_actions = (2,), np.dtype(np.float32), 2
        self.rng = np.random.default_rng(seed)
        self.t = np.zeros(num_envs, dtype=np.int64)

    def _observe(self) -> np.ndarray:
        self.signal = self.rng.integers(0, 2, size=self.num_envs)
        return np.eye(2, dtype=np.float32)[self.signal]

    def reset(self) -> np.ndarray:
        self.t[:] = 0
        return self._observe()

    def step(self, actions: np.ndarray) -> StepResult:
        reward = (np.asarray(actions) == self.signal).astype(np.float64)
        self.t += 1
        truncated = self.t >= self.LENGTH
        terminated = np.zeros(self.num_envs, dtype=bool)
        final_obs = np.eye(2, dtype=np.float32)[self.signal]  # ended episodes' last observation
        self.t[truncated] = 0
        obs = self._observe()
        rets, lens = self._track(reward, truncated)
        return StepResult(obs, self._train_reward(reward), terminated, truncated, final_obs, truncated.copy(), rets, lens)


class SignalFamily(EnvFamily):
    name = "toy_signal"

    def claims(self, env_id: str) -> bool:
        return env_id.startswith("Toy/")

    def known_ids(self):
        return ["Toy/Signal-v0"]

    def make(self, env_cfg, num_envs: int, seed: int) -> VecEnv:
        return SignalVecEnv(num_envs, seed)


@pytest.fixture
def toy_family():
    register_family(SignalFamily())
    yield
    unregister_family("toy_signal")


def test_a_family_registered_outside_rlscale_trains_through_the_cli(toy_family, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(CARTPOLE), "env.id=Toy/Signal-v0", "workers.backend=local", "tracking.wandb_mode=disabled",
                 "tracking.progress_bar=false", "total_env_steps=6144", "targets=[]", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env_family"] == "toy_signal" and summary["env_steps_used"] == 6144
    # it learned: a random policy scores 4 of 8
    assert summary["episode_return_mean_last20"] >= 7.0


def test_typos_are_suggested_within_a_family_and_across_families(toy_family):
    with pytest.raises(ConfigError, match="did you mean Toy/Signal-v0"):
        check_env_id("Toy/Signel-v0")
    with pytest.raises(ConfigError, match="did you mean CartPole-v1"):
        check_env_id("CartPol-v1")
    assert [f.name for f in families()][:2] == ["classic_control", "atari"]
    assert check_env_id("ALE/Pong-v5").name == "atari" and check_env_id("Acrobot-v1").name == "classic_control"


def test_the_encoder_comes_from_the_spec_not_from_the_observation_rank():
    def convs(model):
        return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())

    grid = EnvSpec((10, 10, 4), "float32", 6, encoder="mlp")  # a MinAtar-like grid
    assert convs(ActorCritic(grid)) == 0
    logits, value = ActorCritic(grid)(torch.zeros(3, 10, 10, 4))
    assert logits.shape == (3, 6) and value.shape == (3,)
    frames = EnvSpec((4, 84, 84), "uint8", 4, frames_per_env_step=4, frame_stack=4, encoder="nature_cnn")
    assert convs(ActorCritic(frames)) == 3
    assert convs(ActorCritic(frames, encoder="mlp")) == 0  # model.encoder overrides the family's default


@pytest.mark.slow
def test_a_registered_family_reaches_ray_actors(toy_family, ray_local, tmp_path):
    from rlscale.train import train
    from tests.helpers import cfg_for

    cfg = cfg_for("env.id=Toy/Signal-v0", "workers.backend=ray", "workers.num_workers=2", "total_env_steps=1024", "targets=[]")
    s = train(cfg, tmp_path / "run", quiet=True, init_ray=False)
    assert s["env_family"] == "toy_signal" and s["env_steps_used"] == 1024
