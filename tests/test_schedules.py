"""Per-iteration schedules: learning-rate rules, clip annealing, the batch-size hook; one table."""

from typing import get_args

import pytest

from rlscale import schedules
from rlscale.schedules import LR_RULES, LrRule, clip_coef, learning_rate, make_batch_schedule
from tests.helpers import cfg_for


def _ppo(rule="fixed", **kw):
    extra = [f"ppo.{k}={v}" for k, v in kw.items()]
    return cfg_for(f"ppo.lr_rule={rule}", "ppo.lr=0.001", "ppo.lr_reference_env_steps=256", "ppo.anneal_lr=false",
                   "ppo.num_minibatches=1", *extra).ppo


def test_learning_rate_rules():
    def lr(rule, B, b_simple=float("nan")):
        return learning_rate(_ppo(rule), B, b_simple, 0.0)

    assert lr("fixed", 1024) == pytest.approx(1e-3)
    assert lr("linear", 1024) == pytest.approx(4e-3)
    assert lr("sqrt", 1024) == pytest.approx(2e-3)
    # eps_opt(B) ratio with B_noise = 256: (1 + 256/256) / (1 + 256/1024) = 2 / 1.25 = 1.6
    assert lr("noise", 1024, 256.0) == pytest.approx(1.6e-3)
    assert lr("noise", 1024, float("nan")) == pytest.approx(1e-3)  # no estimate yet
    # per gradient: with 4 minibatches b = 256 and b0 = 64: (1 + 256/64) / (1 + 256/256) = 2.5
    assert learning_rate(_ppo("noise", num_minibatches=4), 1024, 256.0, 0.0) == pytest.approx(2.5e-3)


def test_annealing_of_lr_and_clip():
    ppo = _ppo("linear", anneal_lr="true", anneal_clip="true", clip_coef=0.2)
    assert learning_rate(ppo, 512, float("nan"), 0.25) == pytest.approx(2e-3 * 0.75)
    assert learning_rate(ppo, 512, float("nan"), 1.5) == 0.0
    assert clip_coef(ppo, 0.25) == pytest.approx(0.15)
    assert clip_coef(ppo, 1.0) == 1e-8  # never exactly 0 (the ratio clip would freeze the policy)
    assert clip_coef(_ppo(clip_coef=0.2, anneal_clip="false"), 0.9) == pytest.approx(0.2)


def test_one_table_of_rules_for_config_and_sweep():
    from rlscale.config import PPOConfig
    from rlscale.sweep import SweepConfig

    assert tuple(LR_RULES) == get_args(LrRule)
    assert PPOConfig.__annotations__["lr_rule"] == "LrRule"  # the config's type is the table's
    assert SweepConfig.__annotations__["lr_rules"] == "list[LrRule]"


def test_fixed_batch_schedule_follows_the_config():
    sched = make_batch_schedule(_ppo(env_steps_per_iteration=512), 8)
    assert [sched.env_steps_per_iteration(i, b) for i, b in ((0, float("nan")), (5, 10.0), (9, 1e6))] == [512] * 3
    assert sched.state_dict() == {}
    assert isinstance(sched, schedules.FixedBatchSize)


def test_noise_batch_schedule_on_a_synthetic_noise_history():
    # 8 envs, 2 minibatches: B on a grid of lcm(8, 2) = 8; B = clamp(2 x B_simple x 2, 64, 1024);
    # B_min for 3 warm-up iterations and whenever the estimate is undefined.
    ppo = _ppo(env_steps_per_iteration=128, num_minibatches=2, microbatch_size=15, batch_schedule="noise",
               batch_min=60, batch_max=1004, batch_scale=2, batch_warmup_iterations=3, lr_rule="noise",
               lr_reference_env_steps=0)
    sched = make_batch_schedule(ppo, 8)
    nan = float("nan")
    history = [(0, 50.0), (1, nan), (2, 80.0), (3, nan), (4, 30.0), (5, 31.0), (6, 10.0), (7, 500.0), (8, -3.0)]
    got = [sched.env_steps_per_iteration(i, b) for i, b in history]
    # bounds on the grid: 60 -> 64, 1004 -> 1000; 4 x 30 = 120; 4 x 31 = 124 -> 128 (nearest multiple of 8)
    assert got == [64, 64, 64, 64, 120, 128, 64, 1000, 64]
    assert sched.followed() == [[0, 64, pytest.approx(nan, nan_ok=True)], [4, 120, 60.0], [5, 128, 62.0],
                                [6, 64, 20.0], [7, 1000, 1000.0], [8, 64, pytest.approx(nan, nan_ok=True)]]
    # the learning rate of an iteration follows eps_opt for the B it uses, from B0 = the configured 128
    # (b0 = 64 per gradient): at B = 1000 (b = 500) and B_noise = 31 per gradient:
    assert learning_rate(ppo, 1000, 31.0, 0.0) == pytest.approx(1e-3 * (1 + 31 / 64) / (1 + 31 / 500))
    # a resumed schedule continues its record
    again = make_batch_schedule(ppo, 8)
    again.load_state_dict(sched.state_dict())
    assert again.current == 64 and again.env_steps_per_iteration(9, 100.0) == 400
    assert [h[:2] for h in again.followed()][-2:] == [[8, 64], [9, 400]]


@pytest.mark.parametrize("over,fragment", [
    (["ppo.batch_min=64", "ppo.batch_max=32"], "ppo.batch_max=32 is below ppo.batch_min=64"),
    (["ppo.batch_min=64", "ppo.microbatch_size=64"], "lower ppo.microbatch_size to 32"),
    (["noise.enabled=false"], "needs the noise estimate"),
    (["ppo.batch_scale=0"], "ppo.batch_scale"),
    (["workers.collect=needed", "workers.fragment_length=8", "workers.num_envs_per_worker_list=[4,2]"],
     "give every worker the same envs"),
])
def test_noise_batch_schedule_bad_settings(over, fragment):
    from rlscale.errors import ConfigError

    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        cfg_for("ppo.batch_schedule=noise", *over)


def test_collect_needed_without_a_fixed_fragment_length_or_with_overlap_is_refused():
    from rlscale.errors import ConfigError

    with pytest.raises(ConfigError, match="workers.collect=needed varies the envs taking part at a fixed T"):
        cfg_for("workers.collect=needed")
    with pytest.raises(ConfigError, match="cannot run with workers.overlap=true"):
        cfg_for("workers.collect=needed", "workers.fragment_length=8", "workers.overlap=true")


def test_fragment_lengths_give_t_to_the_workers_a_batch_needs():
    from rlscale.train import delivery_unit, fragment_lengths

    needed = cfg_for("workers.collect=needed", "workers.fragment_length=16", "workers.num_envs_per_worker=2")
    assert fragment_lengths(needed, [2, 2, 2, 2], 32) == [16, 0, 0, 0]
    assert fragment_lengths(needed, [2, 2, 2, 2], 33) == [16, 16, 0, 0]  # 64 collected, 31 wait in the buffer
    assert fragment_lengths(needed, [2, 2, 2, 2], 1000) == [16] * 4  # a round of every worker, then another
    assert fragment_lengths(needed, [3, 1, 2], 60) == [16, 16, 0]
    assert delivery_unit(needed, [2, 2, 2, 2]) == 32
    every = cfg_for("workers.fragment_length=16")
    assert fragment_lengths(every, [2, 2, 2, 2], 32) == [16] * 4 and delivery_unit(every, [2, 2, 2, 2]) == 8
    auto = cfg_for()
    assert fragment_lengths(auto, [2, 2, 2, 2], 33) == [5] * 4 and delivery_unit(auto, [2, 2, 2, 2]) == 8
