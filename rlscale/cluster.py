"""Starting or joining Ray, with errors a user can act on."""

from __future__ import annotations

import os
from typing import Any

from rlscale.errors import ConfigError


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) if given, else start a local cluster on loopback."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        _loopback_only()
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = dict(ignore_reinit_error=True, log_to_driver=True, configure_logging=False)
    if address and address not in ("auto", "local") and not address.startswith("ray://"):
        _probe(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A local cluster stays on this machine: no dashboard, loopback only.
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConfigError(f"cannot reach a Ray cluster at '{address}' ({str(e).splitlines()[0][:160]}); check the address or leave workers.address unset for a local cluster") from None


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nobody listens on (ray.init would retry for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"cannot reach a Ray cluster at '{address}' ({reason}); check the address (HOST:6379) or leave workers.address unset for a local cluster") from None


def _loopback_only() -> None:
    """Make a local Ray cluster bind its servers to 127.0.0.1.

    Ray resolves "127.0.0.1" to the machine's routable address unless its multi-node mode is
    off (the switch Ray uses on macOS and Windows). The variable reaches the raylet and the
    workers through the environment; the constant covers a ray module imported already.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import sys

    if "ray" in sys.modules:
        import ray._private.ray_constants as rc

        rc.ENABLE_RAY_CLUSTER = False
