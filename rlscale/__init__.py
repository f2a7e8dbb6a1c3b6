"""rlscale: a testbed for large-batch scaling in deep reinforcement learning."""

__version__ = "0.1.0"
