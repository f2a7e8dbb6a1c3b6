"""Checkpoints: written atomically, loaded with torch's safe (weights-only) unpickler, and
checked against the config a run resumes with.

A checkpoint holds ``config`` (the resolved config it was written under), ``spec`` (the env's
EnvSpec), ``learner`` and ``run`` (their state dicts), ``torch_rng`` and ``wandb_id``.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch

from rlscale.errors import CheckpointError, ConfigError
from rlscale.util import atomic_write_bytes

FORMAT = 2
_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
# Keys a resumed run may not change: they fix the environment, the network and the seeds.
FROZEN_ON_RESUME = ("seed", "env", "model")


def _to_torch(obj):
    # numpy arrays become tensors so that the weights-only unpickler accepts them.
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_torch(v) for v in obj)
    return obj


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt_{iteration:08d}.pt"


def save(run_dir: Path, iteration: int, state: dict, keep: int = 3) -> Path:
    path = checkpoint_path(run_dir, iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(_to_torch({"format": FORMAT, **state}), buf)
    atomic_write_bytes(path, buf.getvalue())
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        workers_path(old).unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = Path(run_dir) / "checkpoints"
    return sorted(p for p in d.glob("ckpt_*.pt") if _NAME.match(p.name)) if d.is_dir() else []


def load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({type(e).__name__}); delete it to fall back to an earlier one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(f"checkpoint '{path}' is not an rlscale checkpoint of format {FORMAT} (found {found}); "
                              "resume it with the rlscale version that wrote it, or start a new run")
    return state


def load_latest(run_dir: Path, warn=print) -> tuple[Path, dict]:
    """The newest checkpoint that loads; corrupt ones are reported and skipped."""
    paths = list_checkpoints(run_dir)
    if not paths:
        raise CheckpointError(f"no checkpoint in '{Path(run_dir) / 'checkpoints'}'; start the run again without --resume")
    errors = []
    for p in reversed(paths):
        try:
            return p, load(p)
        except CheckpointError as e:
            errors.append(str(e))
            warn(f"warning: {e}; trying the previous checkpoint")
    raise CheckpointError(f"no valid checkpoint in '{Path(run_dir) / 'checkpoints'}': {errors[0]}")


def workers_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name.replace("ckpt_", "workers_").replace(".pt", ".pkl"))


def save_workers(ckpt: Path, blobs: list[bytes]) -> None:
    """In-process workers' environments, beside their checkpoint (local backend only).

    Environment state is arbitrary Python, so this file is a pickle: it is the run's own
    output, read back only by --resume of the same run directory.
    """
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    import pickle

    atomic_write_bytes(workers_path(ckpt), pickle.dumps(blobs))


def load_workers(ckpt: Path) -> list[bytes] | None:
    import pickle

    p = workers_path(ckpt)
    if not p.is_file():
        return None
    try:
        blobs = pickle.loads(p.read_bytes())
        return blobs if isinstance(blobs, list) else None
    except Exception:
        return None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_compatible(state: dict, config: dict, spec=None) -> None:
    """Refuse to resume `state` under `config` (a resolved config dict) if the environment, the
    network or the seed would change: those overrides cannot be honoured. Others are. With the
    env's `spec`, also refuse observations or actions unlike the checkpoint's."""
    saved, now = _flat(state["config"]), _flat(config)
    for key in sorted(set(saved) | set(now)):
        if key.split(".")[0] in FROZEN_ON_RESUME and saved.get(key) != now.get(key):
            raise ConfigError(f"cannot change {key} on resume (the run has {saved.get(key)!r}, asked {now.get(key)!r}); "
                              "resume without that override, or start a new run")
    if spec is None:
        return
    if tuple(state["spec"]["obs_shape"]) != tuple(spec.obs_shape) or state["spec"]["num_actions"] != spec.num_actions:
        raise CheckpointError(
            f"checkpoint is for observations {tuple(state['spec']['obs_shape'])} with {state['spec']['num_actions']} actions, "
            f"the environment now gives {tuple(spec.obs_shape)} with {spec.num_actions}; resume with the run's own config")
