"""The PPO loss on a hand-computed case; micro-batch accumulation equals the full gradient;
the update's fixes (KL early stop per epoch, measurement never changes training, log-prob check)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlscale.errors import ConfigError
from rlscale.ppo import ppo_loss
from tests.helpers import cfg_for, make_learner, random_batch


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


def one_update(micro, noise=True, n=256, **kw):
    cfg = cfg_for(f"ppo.microbatch_size={micro}", f"noise.enabled={noise}", "ppo.epochs=1",
                  "ppo.num_minibatches=2", f"ppo.env_steps_per_iteration={n}", *[f"{k}={v}" for k, v in kw.items()])
    learner = make_learner(cfg)
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
    learner = make_learner(cfg)
    steps = 0
    for n in (128, 256, 64):
        m = learner.update(random_batch(n, seed=n), lr=1e-3)
        steps += 2
        assert learner.optimizer_steps == steps
        assert math.isfinite(m["noise/trace_cov"])
    with pytest.raises(ConfigError, match="does not divide"):
        learner.update(random_batch(99, seed=3, num_envs=3), lr=1e-3)


def test_split_policy_value_gradients_add_up_to_the_combined_one():
    # Per micro-batch: grad(policy part) + grad(value part) = grad(total loss); and the probe's
    # accumulated part gradients add up to the minibatch gradient the optimizer steps with.
    learner, _ = one_update(16, noise=True)
    b = random_batch(32, seed=5)
    t = {k: torch.from_numpy(np.asarray(b[k])) for k in ("obs", "actions", "logp", "values", "advantages", "returns")}
    logits, values = learner.model(t["obs"])
    parts, _ = ppo_loss(logits, values, t["actions"], t["logp"], t["values"], t["advantages"], t["returns"],
                        clip_coef=0.2, clip_vloss=True, vf_coef=0.5, ent_coef=0.01)
    g_pi = learner._grads(parts.policy, retain=True)
    g_v = learner._grads(parts.value, retain=True)
    g = learner._grads(parts.total)
    assert max(float((a + c - d).abs().max()) for a, c, d in zip(g_pi, g_v, g)) < 1e-6
    assert all(float(x.abs().sum()) > 0 for x in (g_pi[0], g_v[-1]))  # both parts really contribute

    cfg = cfg_for("ppo.microbatch_size=16", "ppo.epochs=1", "ppo.num_minibatches=2", "ppo.env_steps_per_iteration=256",
                  "noise.split_policy_value=true")
    learner = make_learner(cfg)
    seen = []
    on_minibatch = learner.probe.on_minibatch

    def spy(grads, size):
        seen.append(([x.clone() for x in grads], {k: [x.clone() for x in v] for k, v in learner.probe._part_acc.items()}))
        on_minibatch(grads, size)

    learner.probe.on_minibatch = spy
    m = learner.update(random_batch(256), lr=1e-3)
    assert len(seen) == 2 and all(set(parts) == {"policy", "value"} for _, parts in seen)
    for acc, parts in seen:
        for a, p_, v_ in zip(acc, parts["policy"], parts["value"]):
            torch.testing.assert_close(p_ + v_, a, rtol=1e-5, atol=1e-7)
    for k in ("noise/b_simple_policy", "noise/b_simple_value", "noise/policy_grad_sq", "noise/value_grad_sq"):
        assert k in m


def test_split_policy_value_leaves_the_update_unchanged():
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
        learner = make_learner(cfg, (4, 84, 84), 4, "uint8")
        logits, values = learner.model(torch.from_numpy(batch["obs"][:8]))
        assert logits.dtype == values.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in learner.model.parameters())
        outs[prec] = learner.update(batch, lr=1e-4)
    a, b = outs["fp32"], outs["bf16"]
    for k in ("losses/policy_loss", "losses/value_loss", "noise/b_simple", "noise/b_simple_value",
              "noise/b_simple_per_example", "noise/b_noise"):
        assert math.isfinite(b[k]) and b[k] == pytest.approx(a[k], rel=0.03), k
    assert b["noise/b_simple"] != a["noise/b_simple"]  # it did compute in bfloat16


def test_microbatch_grouping_for_the_noise_estimate_never_changes_the_update():
    # noise.microbatch_mode=env cuts each minibatch into per-env micro-batches for the estimate;
    # the minibatches (and so the update) are those of the random mode, up to float summation order.
    runs = {}
    for mode in ("random", "env"):
        cfg = cfg_for("ppo.microbatch_size=16", "ppo.epochs=3", "ppo.num_minibatches=4", "ppo.env_steps_per_iteration=256",
                      f"noise.microbatch_mode={mode}")
        learner = make_learner(cfg)
        runs[mode] = (learner, learner.update(random_batch(256, num_envs=8), lr=1e-3))
    (a, ma), (b, mb) = runs["random"], runs["env"]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert mb["losses/policy_loss"] == pytest.approx(ma["losses/policy_loss"], rel=1e-5, abs=1e-7)
    assert mb["noise/trace_cov"] != ma["noise/trace_cov"]  # the estimate itself did change


def _scripted_kl(monkeypatch, kls):
    """ppo_loss whose approx_kl diagnostic follows `kls`, one value per minibatch (in order)."""
    import rlscale.ppo as ppo

    real, calls = ppo.ppo_loss, []

    def fake(*args, **kw):
        parts, diags = real(*args, **kw)
        diags["losses/approx_kl"] = torch.tensor(kls[min(len(calls), len(kls) - 1)])
        calls.append(1)
        return parts, diags

    monkeypatch.setattr(ppo, "ppo_loss", fake)


@pytest.mark.parametrize("kls,optimizer_steps,stopped", [
    ([0.0, 0.03], 2, 1.0),  # the epoch's last minibatch is over target_kl: stop (its mean 0.015 is not)
    ([0.05, 0.0, 0.05, 0.0], 6, 0.0),  # the mean so far is over, the last minibatch is not: go on
])
def test_target_kl_checks_the_epochs_last_minibatch(monkeypatch, kls, optimizer_steps, stopped):
    # one micro-batch per minibatch, so each scripted value is one minibatch's KL
    cfg = cfg_for("ppo.microbatch_size=128", "ppo.epochs=3", "ppo.num_minibatches=2", "ppo.env_steps_per_iteration=256",
                  "ppo.target_kl=0.02", "noise.enabled=false")
    learner = make_learner(cfg)
    _scripted_kl(monkeypatch, kls)
    m = learner.update(random_batch(256), lr=1e-3)
    assert learner.optimizer_steps == optimizer_steps and m["losses/early_stop"] == stopped


def test_logp_mismatch_between_actors_and_learner_is_logged():
    cfg = cfg_for("ppo.microbatch_size=32", "ppo.epochs=2", "ppo.num_minibatches=2", "ppo.env_steps_per_iteration=128")
    batch = random_batch(128)
    learner = make_learner(cfg)
    with torch.no_grad():  # behaviour log-probs as an actor with the learner's weights computes them
        _, logp, _ = learner.model.act(torch.from_numpy(batch["obs"]))
        logits, _ = learner.model(torch.from_numpy(batch["obs"]))
    batch["logp"] = torch.distributions.Categorical(logits=logits).log_prob(torch.from_numpy(batch["actions"])).numpy()
    assert learner.update(batch, lr=1e-3)["losses/logp_mismatch"] < 1e-6
    stale = random_batch(128)  # log-probs from elsewhere, at lag 0: a mismatch shows
    stale["versions"][:] = learner.version
    assert learner.update(stale, lr=1e-3)["losses/logp_mismatch"] > 0.1
    stale["versions"][:] = learner.version - 1  # no step at lag 0: nothing to compare
    assert math.isnan(learner.update(stale, lr=1e-3)["losses/logp_mismatch"])


def test_learner_process_computes_float32_at_full_precision():
    from rlscale.util import configure_learner_process

    torch.set_float32_matmul_precision("high")
    configure_learner_process(torch.device("cpu"))
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_b_noise_hessian_is_taken_on_samples_disjoint_from_the_gradients_with_one_minibatch():
    cfg = cfg_for("ppo.microbatch_size=32", "ppo.epochs=1", "ppo.num_minibatches=1", "ppo.env_steps_per_iteration=128",
                  "noise.b_noise_interval=1", "noise.per_example_samples=32")
    learner = make_learner(cfg)
    seen, calls = {}, []
    forward = learner.model.forward

    def spy_forward(obs):
        calls.append(obs.detach().clone())
        return forward(obs)

    def spy_extras(iteration, loss_fn, params, samples, hessian_samples, small, big, b_big):
        seen.update(h=hessian_samples()["obs"], small=len(small), b_big=b_big)

    learner.model.forward = spy_forward
    learner.probe.extras = spy_extras
    learner.update(random_batch(128), lr=1e-3)
    assert seen["small"] == 3 and seen["b_big"] == 96  # 4 micro-batches: 3 for the gradients, 1 for H
    grad_rows = {tuple(r.tolist()) for x in calls[:3] for r in x}
    h_rows = {tuple(r.tolist()) for r in seen["h"]}
    assert len(h_rows) == 32 and not grad_rows & h_rows
    assert h_rows == {tuple(r.tolist()) for r in calls[3]}
