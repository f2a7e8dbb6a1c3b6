"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CARTPOLE = ROOT / "configs" / "cartpole.yaml"


def cfg_for(*overrides, config="configs/cartpole.yaml"):
    """A train config from a repo config file, W&B and the progress bar off, then `overrides`."""
    from rlscale.config import load_train_config

    base = ["tracking.wandb_mode=disabled", "tracking.progress_bar=false"]
    return load_train_config(ROOT / config, base + list(overrides))


def make_learner(cfg, obs_shape=(4,), num_actions=2, obs_dtype="float32", encoder=None):
    """A Learner seeded as `rlscale train` seeds it (the global torch RNG at cfg.seed)."""
    import torch

    from rlscale.envs import EnvSpec
    from rlscale.ppo import Learner
    from rlscale.util import seed_everything

    if encoder is None:
        encoder = "nature_cnn" if len(obs_shape) == 3 else "mlp"
    seed_everything(cfg.seed)
    return Learner(cfg, EnvSpec(tuple(obs_shape), obs_dtype, num_actions, encoder=encoder), torch.device("cpu"))


def stacked_ids(ids):
    """FrameStacks [T, E] of K = 2 one-pixel frames: step (t, e) is [id of (t-1, e), id of (t, e)],
    with -1 - id for the frame before t = 0; each frame stored once."""
    from rlscale.rollout import FrameStacks

    T, E = ids.shape
    frames = np.concatenate([-1 - ids[0], ids.reshape(-1)]).reshape(-1, 1, 1)
    cur = E + np.arange(T * E).reshape(T, E)
    prev = np.concatenate([np.arange(E)[None], cur[:-1]])
    return FrameStacks(frames, np.stack([prev, cur], axis=-1).astype(np.int32))


def make_fragment(T, E, start, version=0, env_offset=0, stacks=False):
    """A fragment whose steps are numbered start, start + 1, ... (in obs and actions)."""
    from rlscale.rollout import Fragment

    ids = start + np.arange(T * E).reshape(T, E)
    z = np.zeros((T, E), np.float32)
    return Fragment(
        obs=stacked_ids(ids) if stacks else ids.reshape(T, E, 1).astype(np.float32), actions=ids.astype(np.int64), logp=z, values=z,
        rewards=z + 1, terminated=np.zeros((T, E), bool), truncated=np.zeros((T, E), bool),
        next_values=z, policy_version=version, env_ids=np.arange(env_offset, env_offset + E),
    )


def random_batch(n, obs_dim=4, num_actions=2, seed=0, num_envs=4):
    """A flat batch of n steps (num_envs envs x n / num_envs steps) with random content."""
    from rlscale.rollout import FragmentBuffer

    rng = np.random.default_rng(seed)
    buf = FragmentBuffer(0.99, 0.95)
    T, E = n // num_envs, num_envs
    f = make_fragment(T, E, 0)
    f.obs = rng.normal(size=(T, E, obs_dim)).astype(np.float32)
    f.actions = rng.integers(0, num_actions, size=(T, E))
    f.logp = np.log(rng.uniform(0.2, 0.8, size=(T, E))).astype(np.float32)
    f.values = rng.normal(size=(T, E)).astype(np.float32)
    f.rewards = rng.normal(size=(T, E)).astype(np.float32)
    f.next_values = rng.normal(size=(T, E)).astype(np.float32)
    buf.add(f)
    return buf.take(n)


def strip_times(m: pd.DataFrame) -> pd.DataFrame:
    """A metrics table without its wall-clock columns (what a repeat must reproduce exactly)."""
    return m[[c for c in m.columns if not c.startswith("time/") and c not in ("wall_time_s", "charts/SPS")]]


def rlscale_imports(path: Path) -> set[str]:
    """The rlscale modules a source file imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rlscale")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlscale"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found
