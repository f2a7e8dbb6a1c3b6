import os

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster (loopback, 2 CPUs) for the whole session, shut down at the end."""
    import ray

    from rlscale.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()
