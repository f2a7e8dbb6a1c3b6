"""Starting or joining Ray, with errors a user can act on."""

from __future__ import annotations

import os

from rlscale.config import ConfigError


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) if given, else start a local cluster on loopback."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs = dict(ignore_reinit_error=True, log_to_driver=True, configure_logging=False)
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A local cluster stays on this machine: no dashboard, loopback only.
            ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot reach a Ray cluster at '{address}' ({str(e).splitlines()[0][:160]}); check the address or leave workers.address unset for a local cluster") from None
