"""The PPO loss on a hand-computed case; micro-batch accumulation equals the full gradient."""

import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlscale.ppo import Learner, ppo_loss
from rlscale.rollout import FragmentBuffer
from tests.conftest import cfg_for
from tests.test_rollout import make_fragment


def test_ppo_loss_hand_computed():
    # logits [0, 0] -> p(a=0) = 0.5; old p = 0.4 -> ratio 1.25, clipped to 1.2 for A = 1:
    # pg = max(-1.25, -1.2) = -1.2. Value: V = 2, V_old = 1, R = 3, clip 0.2 -> V_clip = 1.2,
    # 0.5 * max((2-3)^2, (1.2-3)^2) = 1.62. Entropy = ln 2.
    # total = -1.2 - 0.01 ln 2 + 0.5 * 1.62 = -0.39693147
    parts, d = ppo_loss(
        torch.zeros(1, 2), torch.tensor([2.0]), torch.tensor([0]), torch.tensor([math.log(0.4)]),
        torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([3.0]),
        clip_coef=0.2, clip_vloss=True, vf_coef=0.5, ent_coef=0.01,
    )
    assert parts.total.item() == pytest.approx(-0.39693147, abs=1e-6)
    assert d["losses/policy_loss"].item() == pytest.approx(-1.2, abs=1e-6)
    assert d["losses/value_loss"].item() == pytest.approx(1.62, abs=1e-6)
    assert d["losses/entropy"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert d["losses/approx_kl"].item() == pytest.approx(0.25 - math.log(1.25), abs=1e-6)
    assert d["losses/clipfrac"].item() == 1.0
    # Unclipped value loss: 0.5 * (2 - 3)^2 = 0.5
    _, d2 = ppo_loss(torch.zeros(1, 2), torch.tensor([2.0]), torch.tensor([0]), torch.tensor([math.log(0.4)]),
                     torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([3.0]),
                     clip_coef=0.2, clip_vloss=False, vf_coef=0.5, ent_coef=0.01)
    assert d2["losses/value_loss"].item() == pytest.approx(0.5, abs=1e-6)


def random_batch(n, obs_dim=4, num_actions=2, seed=0):
    rng = np.random.default_rng(seed)
    buf = FragmentBuffer(0.99, 0.95)
    T, E = n // 4, 4
    f = make_fragment(T, E, 0)
    f.obs = rng.normal(size=(T, E, obs_dim)).astype(np.float32)
    f.actions = rng.integers(0, num_actions, size=(T, E))
    f.logp = np.log(rng.uniform(0.2, 0.8, size=(T, E))).astype(np.float32)
    f.values = rng.normal(size=(T, E)).astype(np.float32)
    f.rewards = rng.normal(size=(T, E)).astype(np.float32)
    f.next_values = rng.normal(size=(T, E)).astype(np.float32)
    buf.add(f)
    return buf.take(n)


def one_update(micro, noise=True, n=256, **kw):
    cfg = cfg_for(f"ppo.microbatch_size={micro}", f"noise.enabled={noise}", "ppo.epochs=1",
                  "ppo.num_minibatches=2", f"ppo.env_steps_per_iteration={n}", *[f"{k}={v}" for k, v in kw.items()])
    torch.manual_seed(0)
    learner = Learner(cfg, (4,), 2, torch.device("cpu"))
    metrics = learner.update(random_batch(n), lr=1e-3)
    return learner, metrics


def test_microbatch_accumulation_equals_full_minibatch():
    full, m_full = one_update(128, noise=False)
    for micro in (8, 32, 50):  # 50 does not divide 128: the last micro-batch is smaller
        acc, m_acc = one_update(micro)
        for p, q in zip(full.model.parameters(), acc.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert m_acc["losses/policy_loss"] == pytest.approx(m_full["losses/policy_loss"], rel=1e-5, abs=1e-7)
        assert m_acc["losses/grad_norm"] == pytest.approx(m_full["losses/grad_norm"], rel=1e-5)


def test_noise_estimate_is_measured_and_free_of_side_effects():
    on, m_on = one_update(16, noise=True)
    off, _ = one_update(16, noise=False)
    for p, q in zip(on.model.parameters(), off.model.parameters()):
        torch.testing.assert_close(p, q)  # measuring changes nothing in the update
    assert math.isfinite(m_on["noise/grad_sq"]) and math.isfinite(m_on["noise/trace_cov"])
    assert "noise/b_simple_ema" in m_on


def test_batch_size_can_change_between_iterations():
    cfg = cfg_for("ppo.num_minibatches=2", "ppo.microbatch_size=16", "ppo.epochs=1")
    learner = Learner(cfg, (4,), 2, torch.device("cpu"))
    steps = 0
    for n in (128, 256, 64):
        learner.set_env_steps_per_iteration(n)
        m = learner.update(random_batch(n, seed=n), lr=1e-3)
        steps += 2
        assert learner.optimizer_steps == steps
        assert math.isfinite(m["noise/trace_cov"])
    from rlscale.config import ConfigError

    with pytest.raises(ConfigError, match="does not divide"):
        learner.set_env_steps_per_iteration(99)


def test_split_policy_value_sums_to_combined():
    _, m = one_update(16, noise=True, **{"noise.split_policy_value": "true"})
    for k in ("noise/b_simple_policy", "noise/b_simple_value", "noise/policy_grad_sq", "noise/value_grad_sq"):
        assert k in m
    comb, _ = one_update(16, noise=True)
    split, _ = one_update(16, noise=True, **{"noise.split_policy_value": "true"})
    for p, q in zip(comb.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_per_example_and_b_noise_estimates_run_in_the_learner():
    _, m = one_update(16, noise=True, **{"noise.per_example_interval": 1, "noise.b_noise_interval": 1,
                                          "noise.per_example_samples": 64})
    for k in ("noise/b_simple_per_example", "noise/per_example_trace_cov", "noise/gHg", "noise/trace_H_cov", "noise/b_noise_ema"):
        assert k in m, k
    assert m["noise/per_example_trace_cov"] > 0


_HEAP_PROBE = """
import resource, sys, numpy as np, torch
sys.path.insert(0, "scripts")
from _common import synthetic_batch
from rlscale.ppo import Learner
from tests.conftest import cfg_for
cfg = cfg_for("ppo.env_steps_per_iteration=256", "ppo.num_minibatches=1", "ppo.microbatch_size=128",
              "ppo.epochs=1", config="configs/atari.yaml")
learner = Learner(cfg, (4, 84, 84), 4, torch.device("cpu"))
batch = synthetic_batch(256, (4, 84, 84), np.uint8, 4, frame_stacks=True)
for _ in range(3):
    learner.update(batch, lr=1e-4)
faults = []
for _ in range(3):  # the fewest of 3: now and then a torch thread's first allocation adds ~1,000
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    learner.update(batch, lr=1e-4)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(min(faults))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings")
@pytest.mark.parametrize("env", [{}, {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_cpu_learner_reuses_freed_heap_memory(env):
    # A CPU learner keeps freed heap memory: a settled Atari update (one minibatch of two
    # micro-batches of 128) re-uses its blocks without a page fault. Measured with glibc's own
    # settings: 13,000 faults per such update (the heap trimmed and faulted in again); a user's
    # MALLOC_*_ variable wins over the learner's settings (here: trim at 128 KiB, 60,000 faults).
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[1])
    n = int(out.stdout.split()[-1])
    if env:
        assert n > 20_000
    else:
        assert n < 500


def test_bf16_learner_measures_what_fp32_does():
    # model.precision=bf16: the Nature CNN runs under autocast, weights and outputs stay float32,
    # and every noise estimate (two-batch, policy/value split, per-example, B_noise) works and
    # agrees with float32 to a few percent on the same batch and initial weights.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from _common import synthetic_batch

    batch = synthetic_batch(256, (4, 84, 84), np.uint8, 4, frame_stacks=True)
    outs = {}
    for prec in ("fp32", "bf16"):
        cfg = cfg_for("ppo.env_steps_per_iteration=256", "ppo.num_minibatches=1", "ppo.microbatch_size=64",
                      "ppo.epochs=1", f"model.precision={prec}", "noise.per_example_interval=1",
                      "noise.b_noise_interval=1", "noise.per_example_samples=32", "noise.split_policy_value=true",
                      config="configs/atari.yaml")
        learner = Learner(cfg, (4, 84, 84), 4, torch.device("cpu"))
        logits, values = learner.model(torch.from_numpy(batch["obs"][:8]))
        assert logits.dtype == values.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in learner.model.parameters())
        outs[prec] = learner.update(batch, lr=1e-4)
    a, b = outs["fp32"], outs["bf16"]
    for k in ("losses/policy_loss", "losses/value_loss", "noise/b_simple", "noise/b_simple_value",
              "noise/b_simple_per_example", "noise/b_noise"):
        assert math.isfinite(b[k]) and b[k] == pytest.approx(a[k], rel=0.03), k
    assert b["noise/b_simple"] != a["noise/b_simple"]  # it did compute in bfloat16
