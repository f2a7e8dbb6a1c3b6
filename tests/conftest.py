import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")


def cfg_for(*overrides, config="configs/cartpole.yaml"):
    from rlscale.config import load_train_config

    base = ["tracking.wandb_mode=disabled", "tracking.progress_bar=false"]
    return load_train_config(ROOT / config, base + list(overrides))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster (loopback, 2 CPUs) for the whole session, shut down at the end."""
    import ray

    from rlscale.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()
