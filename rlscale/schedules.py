"""Per-iteration decisions, each from one table: the learning rate, the clip range, the batch size.

The train loop asks once per iteration, before the update (as SB3's ``_on_rollout_end``).
``LR_RULES`` is the one list of learning-rate rules: the config's ``ppo.lr_rule`` type, its
validation, the train loop and the sweep all read it. ``BATCH_SCHEDULES`` holds the batch-size
schedules (``ppo.batch_schedule``); ``fixed`` keeps ``ppo.env_steps_per_iteration``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

LrRule = Literal["fixed", "linear", "sqrt", "noise"]
BatchScheduleName = Literal["fixed"]


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

    ppo.lr is tuned at the reference batch B0 = ppo.lr_reference_env_steps (0: this batch); the
    rule scales it to the batch B: fixed (lr), linear (lr B/B0), sqrt (lr sqrt(B/B0)) or noise,
    which follows eps_opt(B) = eps_max / (1 + B_noise/B) with B_noise the B_simple EMA measured
    so far: lr (1 + B_noise/b0) / (1 + B_noise/b), b = B / num_minibatches examples per gradient
    (before any estimate exists it falls back to lr). Annealing multiplies by 1 - progress.
    """
    B = env_steps_per_iteration
    B0 = ppo.lr_reference_env_steps or B
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
        self.env_steps = ppo.env_steps_per_iteration

    def env_steps_per_iteration(self, iteration: int, b_simple: float) -> int:
        return self.env_steps

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


BATCH_SCHEDULES: dict[str, Callable] = {"fixed": FixedBatchSize}
assert tuple(BATCH_SCHEDULES) == get_args(BatchScheduleName)


def make_batch_schedule(ppo):
    return BATCH_SCHEDULES[ppo.batch_schedule](ppo)
