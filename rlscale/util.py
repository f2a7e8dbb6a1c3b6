"""Small shared helpers: atomic writes, the git revision, and the learner process's settings
(seeding, threads, float32 matmul precision, glibc heap)."""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> None:
    """JSON with NaN and inf written as null and numpy/pandas scalars as plain numbers."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def to_jsonable(obj):
    """Nested numpy/pandas values to plain JSON types, with NaN and inf as null."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    pd = sys.modules.get("pandas")  # only pandas values can be pandas' missing markers
    if pd is not None and (obj is pd.NA or obj is pd.NaT):
        return None
    return obj


def git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def seed_everything(seed: int) -> None:
    """The global torch RNG (model initialisation); workers and the learner keep their own."""
    import torch

    torch.manual_seed(seed)


def configure_learner_process(device, torch_threads: int = 0) -> None:
    """Process-wide settings for a learner, applied once before it is built.

    float32 matmuls and convolutions at full precision on every device (no TF32 on CUDA), so
    that the learner computes the log-probabilities the CPU actors computed; intra-op threads;
    on a CPU, glibc keeps freed heap memory (see keep_heap_memory).
    """
    import torch

    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if torch_threads:
        torch.set_num_threads(torch_threads)
    if getattr(device, "type", str(device)) == "cpu":
        keep_heap_memory()


# glibc's malloc serves blocks above a threshold with mmap and returns heap memory above
# another; both adapt to the largest block freed, up to 32 MiB. A CPU learner allocates and
# frees tens of MiB per micro-batch (the float input, activations, gradients), which keeps
# tripping the trim threshold, so the update spends much of its time in page faults
# (scripts/bench_learner.py --page-faults measures them; docs/results/throughput.md).
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_heap_memory() -> bool:
    """Let glibc keep freed heap memory for reuse instead of handing it back to the OS.

    Blocks up to 32 MiB come from the heap and freed memory stays mapped (peak RSS is
    unchanged: the heap never grows beyond the largest working set). Returns whether the
    settings were applied: not on other C libraries, nor when the user set any MALLOC_*_
    tuning variable (which then wins).
    """
    if any(k in os.environ for k in MALLOC_ENV) or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
