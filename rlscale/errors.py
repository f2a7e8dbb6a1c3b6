"""The errors rlscale raises on purpose, in one module that imports nothing of rlscale.

``ConfigError`` and ``CheckpointError`` are the user's to fix: the command line prints their
one-line message and exits with code 2. ``WorkerFailure`` means rollout workers failed more
often than allowed: the run stopped with a checkpoint and exits with code 1.
"""

from __future__ import annotations


class RlscaleError(Exception):
    """Base of rlscale's own errors; the message is one line."""


class ConfigError(RlscaleError, ValueError):
    """A configuration or input the user must fix; the message names the problem and the fix."""


class CheckpointError(RlscaleError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


class WorkerFailure(RlscaleError, RuntimeError):
    """Rollout workers failed more often than workers.max_restarts allows."""
