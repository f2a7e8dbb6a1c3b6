"""Shared helpers of the benchmark scripts: machine record, timing statistics, synthetic batches.

Every script prints exactly one JSON object to stdout; progress goes to stderr via ``log``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python scripts/bench_x.py` from anywhere
    sys.path.insert(0, str(ROOT))

CARTPOLE_YAML = ROOT / "configs" / "cartpole.yaml"
ATARI_YAML = ROOT / "configs" / "atari.yaml"
# Quiet, side-effect-free runs: no wandb, no progress bar.
BASE_OVERRIDES = ["tracking.wandb_mode=disabled", "tracking.progress_bar=false"]
ATARI_OBS_SHAPE = (4, 84, 84)
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware), the figure 'cores' refers to."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_info(device: str | None = None) -> dict:
    import torch

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": cpu_count(),
        "cpu_count_os": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "numpy_version": np.__version__,
    }
    try:
        info["loadavg_1m_at_start"] = os.getloadavg()[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["cuda_device_name"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def stats(xs: list[float]) -> dict:
    """Median, min, mean, max and count of a list of timings (seconds)."""
    xs = list(xs)
    if not xs:
        return {"n": 0}
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "mean": statistics.fmean(xs),
        "max": max(xs),
        "n": len(xs),
    }


def emit(obj: dict) -> None:
    """The one JSON object on stdout (NaN/inf become null so it stays valid JSON)."""

    def clean(x):
        if isinstance(x, float) and not np.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.generic):
            return clean(x.item())
        return x

    sys.stdout.write(json.dumps(clean(obj), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def set_threads(n: int) -> None:
    import torch

    if n and n > 0:
        torch.set_num_threads(n)


def load_cfg(kind: str, overrides: list[str]):
    """TrainConfig from configs/{cartpole,atari}.yaml plus dotted overrides."""
    from rlscale.config import load_train_config

    path = {"cartpole": CARTPOLE_YAML, "atari": ATARI_YAML}[kind]
    return load_train_config(path, BASE_OVERRIDES + list(overrides))


def env_spec(obs_shape: tuple[int, ...], obs_dtype, num_actions: int, cfg=None):
    """The rlscale.envs.EnvSpec the learner gets for synthetic observations: 84x84 uint8 frame
    stacks are Atari's (Nature CNN, frame skip and stack of cfg.env when given, else 4 and K),
    anything else a flat vector for the MLP."""
    from rlscale.envs import EnvSpec

    obs_shape, dtype = tuple(int(d) for d in obs_shape), str(np.dtype(obs_dtype))
    if len(obs_shape) == 3 and dtype == "uint8":
        skip = cfg.env.frame_skip if cfg is not None else 4
        return EnvSpec(obs_shape, dtype, int(num_actions), frames_per_env_step=skip, frame_stack=obs_shape[0],
                       encoder="nature_cnn")
    return EnvSpec(obs_shape, dtype, int(num_actions))


def configure_learner(device, threads: int = 0) -> None:
    """What `rlscale train` does once per learner process (rlscale.util.configure_learner_process:
    full-precision fp32 matmuls, threads, and on a CPU glibc's heap kept for reuse unless the
    environment sets a MALLOC_*_ variable)."""
    from rlscale.util import configure_learner_process

    configure_learner_process(device, threads)


def make_learner(cfg, spec, device):
    """A Learner seeded as `rlscale train` seeds it (the global torch RNG at cfg.seed), so
    learners built from configs with the same seed start from the same weights."""
    from rlscale.ppo import Learner
    from rlscale.util import seed_everything

    seed_everything(cfg.seed)
    return Learner(cfg, spec, device)


def _tiled_uint8(rng, shape: tuple[int, ...], frame_pool: int) -> np.ndarray:
    pool = rng.integers(0, 256, size=(min(shape[0], frame_pool), *shape[1:]), dtype=np.uint8)
    out = np.empty(shape, dtype=np.uint8)
    for s in range(0, shape[0], len(pool)):
        m = min(len(pool), shape[0] - s)
        out[s:s + m] = pool[:m]
    return out


def stacked_obs(rng, n: int, obs_shape: tuple[int, ...], num_envs: int, frame_pool: int = 256):
    """FrameStacks of n steps (time-major [T, E]) as rollout workers record them: K frames per
    env at t = 0, then one new frame per step, each stack the previous one shifted by one."""
    from rlscale.rollout import FrameStacks

    K, E = obs_shape[0], num_envs
    T = -(-n // E)
    index = np.empty((T, E, K), dtype=np.int32)
    index[0] = np.arange(E * K).reshape(E, K)
    for t in range(1, T):
        index[t, :, :-1] = index[t - 1, :, 1:]
        index[t, :, -1] = E * K + (t - 1) * E + np.arange(E)
    index = index.reshape(T * E, K)[:n]
    # exactly the frames the n steps use (no compaction: its copy would inflate peak memory)
    frames = _tiled_uint8(rng, (int(index.max()) + 1, *obs_shape[1:]), frame_pool)
    return FrameStacks(frames, np.ascontiguousarray(index))


def synthetic_batch(n: int, obs_shape: tuple[int, ...], obs_dtype, num_actions: int, seed: int = 0,
                    num_envs: int = 8, frame_pool: int = 256, frame_stacks: bool = False) -> dict:
    """A flat batch in rlscale.rollout's format (BATCH_KEYS + 'fragment'), built with numpy.

    uint8 observations are filled by tiling a pool of `frame_pool` random frames (a small, fixed
    transient, so it does not distort peak-memory figures across batch sizes): every byte is
    written (so it is resident memory), without the seconds a fresh random draw of gigabytes
    would take. The content does not change dense CNN compute. frame_stacks=True gives the
    observations as rollout workers send Atari frame stacks (rlscale.rollout.FrameStacks).
    """
    rng = np.random.default_rng(seed)
    obs_dtype = np.dtype(obs_dtype)
    E = max(1, min(num_envs, n))
    if frame_stacks:
        obs = stacked_obs(rng, n, obs_shape, E, frame_pool)
    elif obs_dtype == np.uint8:
        obs = _tiled_uint8(rng, (n, *obs_shape), frame_pool)
    else:
        obs = rng.normal(size=(n, *obs_shape)).astype(obs_dtype)
    idx = np.arange(n)
    return {
        "obs": obs,
        "actions": rng.integers(0, num_actions, size=n).astype(np.int64),
        "logp": np.log(rng.uniform(0.2, 0.8, size=n)).astype(np.float32),
        "values": rng.normal(size=n).astype(np.float32),
        "advantages": rng.normal(size=n).astype(np.float32),
        "returns": rng.normal(size=n).astype(np.float32),
        # time-major [T, E] flattened, as flatten_fragment lays it out
        "env_ids": (idx % E).astype(np.int64),
        "time": (idx // E).astype(np.int64),
        "versions": np.zeros(n, dtype=np.int64),
        "fragment": np.zeros(n, dtype=np.int64),
    }


def batch_nbytes(batch: dict[str, np.ndarray], keys=None) -> int:
    keys = batch.keys() if keys is None else keys
    return int(sum(batch[k].nbytes for k in keys))


# Keys Learner.update moves to the device (the rest stay on the host).
DEVICE_KEYS = ("obs", "actions", "logp", "values", "advantages", "returns")


def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)
