"""What a run knows besides the learner: counters, return windows, targets, the fragment buffer.

One object with one ``state_dict`` / ``load_state_dict`` protocol (as the learner's), so a
checkpoint is the pair of them. Accounting: every env step a worker delivers is counted in
``env_steps`` when it enters the buffer and in ``env_steps_used`` when an update consumes it,
so ``env_steps == env_steps_used + len(buffer)`` at every iteration boundary; steps lost with a
failed worker are counted in ``env_steps_discarded`` only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from rlscale.rollout import FragmentBuffer


@dataclass
class Counters:
    iteration: int = 0
    env_steps: int = 0  # delivered by workers (into the buffer)
    env_steps_used: int = 0  # consumed by PPO updates
    env_steps_discarded: int = 0  # lost with fragments of failed workers
    episodes: int = 0
    worker_failures: int = 0
    wall_time_s: float = 0.0
    targets: dict = field(default_factory=dict)  # str(target) -> crossing record


class RunState:
    """Counters, the windows of finished-episode returns, and the buffer of unused steps."""

    def __init__(self, gamma: float, gae_lambda: float, return_window: int):
        self.counters = Counters()
        self.returns: deque[float] = deque(maxlen=return_window)  # the smoothed return's window
        self.last20: deque[float] = deque(maxlen=20)  # summary's episode_return_mean_last20
        self.buffer = FragmentBuffer(gamma, gae_lambda)

    def absorb(self, result) -> None:
        """A pool's SampleResult: fragments into the buffer, steps and episodes counted."""
        c = self.counters
        for frag in result.fragments:
            self.buffer.add(frag)
            c.env_steps += frag.size
            self.returns.extend(frag.episode_returns)
            self.last20.extend(frag.episode_returns)
            c.episodes += len(frag.episode_returns)
        c.env_steps_discarded += result.discarded_env_steps
        c.worker_failures += result.failures

    @property
    def window_full(self) -> bool:
        """A full window of finished episodes: only then does the smoothed return count."""
        return len(self.returns) == self.returns.maxlen

    @property
    def smoothed_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def record_targets(self, targets: list[float], row: dict, noise_summary: Callable[[], dict],
                       score: float | None = None) -> None:
        """First crossing of each target by `score` (an evaluation's mean return) or, without
        one, by the smoothed return once its window is full, with the noise scale measured up
        to it (noise_summary(): NoiseProbe.summary, per part)."""
        mean_ret = self.smoothed_return if score is None else score
        if not targets or (score is None and not self.window_full) or not math.isfinite(mean_ret):
            return
        c = self.counters
        for tgt in targets:
            key = str(tgt)
            if key in c.targets or mean_ret < tgt:
                continue
            noise = noise_summary()
            combined = noise.get("combined", {})
            c.targets[key] = {"reached": True, "iterations": c.iteration, "optimizer_steps": row["optimizer_steps"],
                              "env_steps": c.env_steps, "wall_time_s": c.wall_time_s,
                              "b_simple": combined.get("b_simple"), "b_simple_ci": combined.get("b_simple_ci"),
                              "b_simple_parts": noise}

    def state_dict(self) -> dict:
        return {"counters": asdict(self.counters), "returns": list(self.returns),
                "returns_last20": list(self.last20), "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.counters = Counters(**state["counters"])
        self.returns.clear()
        self.returns.extend(state["returns"])
        self.last20.clear()
        self.last20.extend(state["returns_last20"])
        self.buffer.load_state_dict(state["buffer"])
