"""Per-iteration decisions, each from one table: the learning rate, the clip range, the batch size.

The train loop asks once per iteration, before the update (as SB3's ``_on_rollout_end``).
``LR_RULES`` is the one list of learning-rate rules: the config's ``ppo.lr_rule`` type, its
validation, the train loop and the sweep all read it. ``BATCH_SCHEDULES`` holds the batch-size
schedules (``ppo.batch_schedule``): ``fixed`` keeps ``ppo.env_steps_per_iteration``; ``noise``
follows the measured noise scale (McCandlish et al. 2018, adaptive batch sizes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

LrRule = Literal["fixed", "linear", "sqrt", "noise"]
BatchScheduleName = Literal["fixed", "noise"]


def _noise_rule(lr: float, B: int, B0: int, b_noise: float, num_minibatches: int) -> float:
    # eps_opt(b) = eps_max / (1 + B_noise / b), b = examples per gradient: scale lr tuned at b0 to b.
    if not (b_noise > 0 and math.isfinite(b_noise)):
        return lr  # no estimate yet
    b, b0 = B / num_minibatches, B0 / num_minibatches
    return lr * (1 + b_noise / b0) / (1 + b_noise / b)


# rule -> lr(B) from (lr tuned at B0, B, B0, measured noise scale, minibatches per iteration)
LR_RULES: dict[str, Callable[[float, int, int, float, int], float]] = {
    "fixed": lambda lr, B, B0, b_noise, nmb: lr,
    "linear": lambda lr, B, B0, b_noise, nmb: lr * B / B0,
    "sqrt": lambda lr, B, B0, b_noise, nmb: lr * math.sqrt(B / B0),
    "noise": _noise_rule,
}
assert tuple(LR_RULES) == get_args(LrRule), "LR_RULES and LrRule must list the same rules"


def learning_rate(ppo, env_steps_per_iteration: int, b_simple: float, progress: float) -> float:
    """The learning rate for the next iteration (ppo is a PPOConfig).

    ppo.lr is tuned at the reference batch B0 = ppo.lr_reference_env_steps (0: the configured
    ppo.env_steps_per_iteration, which an adaptive batch schedule moves away from); the
    rule scales it to the batch B: fixed (lr), linear (lr B/B0), sqrt (lr sqrt(B/B0)) or noise,
    which follows eps_opt(B) = eps_max / (1 + B_noise/B) with B_noise the B_simple EMA measured
    so far: lr (1 + B_noise/b0) / (1 + B_noise/b), b = B / num_minibatches examples per gradient
    (before any estimate exists it falls back to lr). Annealing multiplies by 1 - progress.
    """
    B = env_steps_per_iteration
    B0 = ppo.lr_reference_env_steps or ppo.env_steps_per_iteration  # the configured B, whatever B is now
    lr = LR_RULES[ppo.lr_rule](ppo.lr, B, B0, b_simple, ppo.num_minibatches)
    if ppo.anneal_lr:
        lr *= max(0.0, 1.0 - progress)
    return lr


def clip_coef(ppo, progress: float) -> float:
    """PPO's ratio clip for the next iteration, annealed to (almost) 0 with ppo.anneal_clip."""
    clip = ppo.clip_coef * (1.0 - progress if ppo.anneal_clip else 1.0)
    return max(clip, 1e-8)


class FixedBatchSize:
    """B = ppo.env_steps_per_iteration at every iteration (a resumed run takes its config's B)."""

    def __init__(self, ppo):
        self.env_steps = self.current = ppo.env_steps_per_iteration
        self.last_b_simple = math.nan  # no estimate sets B

    def env_steps_per_iteration(self, iteration: int, b_simple: float) -> int:
        """B of the next iteration (called once per iteration, before its sampling)."""
        return self.env_steps

    def describe(self) -> str:
        return f"B = {self.env_steps} env steps/iteration"

    def followed(self) -> list[list[float]]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def batch_bounds(ppo) -> tuple[int, int]:
    """(B_min, B_max) of the 'noise' schedule, defaults resolved (ppo is a PPOConfig)."""
    lo = ppo.batch_min or ppo.env_steps_per_iteration
    return lo, ppo.batch_max or 32 * lo


class NoiseBatchSize:
    """B = clamp(c x B_simple, B_min, B_max) before each iteration, rounded to a whole number of
    steps per env and of minibatches.

    B_simple is the run's current estimate (the bias-corrected EMA ratio, env steps per
    gradient) times the minibatches per iteration: env steps per iteration, the units of B. The
    first ``batch_warmup_iterations`` iterations, and any iteration whose estimate is undefined
    (|G|^2 not resolved), run at B_min. Rounding goes to the nearest multiple of
    lcm(unit, num_minibatches) inside the bounds, where `unit` is what the workers deliver a
    batch in (one step of every env, or T steps of one worker's envs: train.delivery_unit), so
    a batch needs no leftover steps and splits into equal minibatches; the buffer hands out exactly B
    steps, so no collected step is wasted or used twice whatever the sequence of B.

    ``history`` holds the change points [iteration, B, B_simple that set it]: the schedule the
    run followed (checkpointed, so a resumed run continues it).
    """

    def __init__(self, ppo, unit: int):
        self.scale, self.warmup, self.num_minibatches = ppo.batch_scale, ppo.batch_warmup_iterations, ppo.num_minibatches
        self.granule = math.lcm(unit, ppo.num_minibatches)
        lo, hi = batch_bounds(ppo)
        self.low = -(-lo // self.granule) * self.granule  # the bounds themselves on the grid
        self.high = max(self.low, hi // self.granule * self.granule)
        self.history: list[list[float]] = []
        self.current = self.low  # the B last handed out
        self.last_b_simple = math.nan  # the estimate that set it (nan: warm-up / undefined)

    def env_steps_per_iteration(self, iteration: int, b_simple: float) -> int:
        b_iter = b_simple * self.num_minibatches
        if iteration < self.warmup or not (b_iter > 0 and math.isfinite(b_iter)):
            B, self.last_b_simple = self.low, math.nan
        else:
            B = round(self.scale * b_iter / self.granule) * self.granule
            B, self.last_b_simple = min(self.high, max(self.low, B)), b_iter
        if not self.history or self.history[-1][1] != B:
            self.history.append([iteration, B, self.last_b_simple])
        self.current = int(B)
        return self.current

    def describe(self) -> str:
        return (f"B = {self.scale:g} x B_simple in [{self.low}, {self.high}] env steps/iteration "
                f"({self.low} for the first {self.warmup} iterations)")

    def followed(self) -> list[list[float]]:
        """Change points [iteration, B, B_simple in env steps per iteration that set it]."""
        return [list(h) for h in self.history]

    def state_dict(self) -> dict:
        return {"history": self.followed(), "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        if "history" in state:  # absent when the checkpoint's run had a fixed batch
            self.history = [list(h) for h in state["history"]]
            self.current = int(state["current"])


BATCH_SCHEDULES: dict[str, Callable] = {"fixed": FixedBatchSize, "noise": NoiseBatchSize}
assert tuple(BATCH_SCHEDULES) == get_args(BatchScheduleName)


def make_batch_schedule(ppo, unit: int):
    """The run's batch schedule; unit: the env steps the workers deliver a batch in (the rounding grid)."""
    if ppo.batch_schedule == "noise":
        return NoiseBatchSize(ppo, unit)
    return FixedBatchSize(ppo)
