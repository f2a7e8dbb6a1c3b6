"""The noise of RL batches, on a synthetic case with a closed-form answer.

Per-example gradients g[e, t] = mu + x[e, t] in R^D, with x an AR(1) sequence in time (coefficient
rho, stationary variance sigma^2 per coordinate) for each of E envs, as consecutive steps of one
env are correlated in RL. A batch is E envs x T steps (B = E T). The variance of a batch's mean
gradient, per coordinate, is Var_T / E with Var_T the variance of the mean of T AR(1) steps:

    Var_T = sigma^2 / T * [(1 + rho) / (1 - rho) - 2 rho (1 - rho^T) / (T (1 - rho)^2)]

so the noise a batch really has is tr(Sigma_eff) = B * D * Var_T / E and B_simple = that / |mu|^2.
The between-batch reference and the env-grouped two-batch estimate (micro-batches of whole env
slices) recover it; random micro-batches measure the within-batch spread instead, whose
expectation is also closed form (finite-population sampling from the batch):
    E[S^2] = N (sigma^2 - Var_T / E) / (N - 1)   (N = B, the within-batch sample variance)
    trace_cov_random = D E[S^2],   grad_sq_random = |mu|^2 + D (Var_T / E - E[S^2] / N).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlscale.noise_scale import NoiseProbe, between_batch_estimates, bootstrap_interval
from rlscale.rollout import microbatch_groups

D, E, T, RHO, SIGMA2 = 3, 8, 32, 0.9, 1.0
MU = np.array([0.3, -0.2, 0.1])
N = E * T
VAR_T = SIGMA2 / T * ((1 + RHO) / (1 - RHO) - 2 * RHO * (1 - RHO**T) / (T * (1 - RHO) ** 2))
TRUE_GRAD_SQ = float(MU @ MU)
TRUE_TRACE = N * D * VAR_T / E
EXPECTED_S2 = N * (SIGMA2 - VAR_T / E) / (N - 1)
RANDOM_TRACE = D * EXPECTED_S2
RANDOM_GRAD_SQ = TRUE_GRAD_SQ + D * (VAR_T / E - EXPECTED_S2 / N)


def ar1_batch(rng) -> np.ndarray:
    """Per-example gradients of one batch, time-major [T, E, D] flattened to [N, D]."""
    x = np.empty((T, E, D))
    x[0] = rng.normal(size=(E, D)) * np.sqrt(SIGMA2)
    for t in range(1, T):
        x[t] = RHO * x[t - 1] + np.sqrt(1 - RHO**2) * np.sqrt(SIGMA2) * rng.normal(size=(E, D))
    return (MU + x).reshape(N, D)


LAYOUT = {"env_ids": np.tile(np.arange(E), T), "time": np.repeat(np.arange(T), E), "fragment": np.zeros(N, dtype=np.int64)}


def inloop_estimate(grads: np.ndarray, mode: str, rng) -> tuple[float, float]:
    """The learner's free estimate on one batch (one minibatch, micro-batches of T), via NoiseProbe."""
    cfg = SimpleNamespace(enabled=True, epochs="first", split_policy_value=False, ema_beta=0.95,
                          per_example_interval=0, b_noise_interval=0)
    probe = NoiseProbe(cfg, microbatch_size=T)
    minibatch = rng.permutation(N)
    groups = microbatch_groups(LAYOUT, minibatch, T, mode)
    probe.start_update()
    probe.start_minibatch(0, 0, 0, len(groups))
    g = torch.from_numpy(grads)
    for pos in groups:
        probe.on_microbatch([g[minibatch[pos]].mean(0)], len(pos) / N, full=True)
    probe.on_minibatch([g.mean(0)], N)
    out = probe.end_update()
    return out["noise/grad_sq"], out["noise/trace_cov"]


def mean_and_se(x):
    x = np.asarray(x)
    return x.mean(), x.std(ddof=1) / np.sqrt(len(x))


def test_closed_form_is_right_by_brute_force():
    rng = np.random.default_rng(1)
    means = np.array([ar1_batch(rng).mean(0) for _ in range(4000)])
    assert means.var(0, ddof=1).mean() == pytest.approx(VAR_T / E, rel=0.06)


def test_between_batch_reference_recovers_the_true_batch_noise():
    rng = np.random.default_rng(2)
    grad_sq, trace = [], []
    for _ in range(150):
        gs = torch.from_numpy(np.stack([ar1_batch(rng).mean(0) for _ in range(20)]))
        a, b = between_batch_estimates(gs, N)
        grad_sq.append(a)
        trace.append(b)
    for est, truth in ((grad_sq, TRUE_GRAD_SQ), (trace, TRUE_TRACE)):
        m, se = mean_and_se(est)
        assert abs(m - truth) < 3 * se, (m, truth, se)


@pytest.mark.parametrize("mode,grad_sq_truth,trace_truth", [
    ("env", TRUE_GRAD_SQ, TRUE_TRACE),  # whole env slices: the batch's real noise
    ("random", RANDOM_GRAD_SQ, RANDOM_TRACE),  # random micro-batches: the within-batch spread
])
def test_inloop_estimates_have_the_bias_theory_predicts(mode, grad_sq_truth, trace_truth):
    rng = np.random.default_rng(3)
    est = np.array([inloop_estimate(ar1_batch(rng), mode, rng) for _ in range(4000)])
    for col, truth in ((0, grad_sq_truth), (1, trace_truth)):
        m, se = mean_and_se(est[:, col])
        assert abs(m - truth) < 3 * se, (mode, col, m, truth, se)
    if mode == "random":
        # with rho = 0.9 the random split sees about a fourteenth of the real noise and twice the |G|^2
        assert RANDOM_TRACE / TRUE_TRACE == pytest.approx(0.0701, abs=0.0005)
        assert RANDOM_GRAD_SQ / TRUE_GRAD_SQ == pytest.approx(2.056, abs=0.005)


def test_bootstrap_interval_covers_the_truth_about_as_often_as_it_says():
    rng = np.random.default_rng(4)
    truth = TRUE_TRACE / TRUE_GRAD_SQ
    hits = 0
    for i in range(40):
        gs = torch.from_numpy(np.stack([ar1_batch(rng).mean(0) for _ in range(60)]))
        lo, hi = bootstrap_interval(gs, N, n_boot=300, seed=i)
        assert lo < hi
        hits += lo <= truth <= hi
    assert hits >= 32  # nominal 95%: at least 80% of 40 intervals cover (binomial tail < 1e-3)


def test_adam_preconditioned_estimate_recovers_tr_P_sigma_and_G_P_G():
    # Independent per-example gradients g ~ N(G, diag(s^2)) and a fixed diagonal P: the two-batch
    # estimate on P-weighted norms is unbiased for G^T P G and tr(P Sigma).
    rng = np.random.default_rng(5)
    G = np.array([0.5, -0.2, 0.1, 0.0])
    s2 = np.array([1.0, 4.0, 0.25, 2.0])
    P = np.array([2.0, 0.1, 10.0, 1.0])
    cfg = SimpleNamespace(enabled=True, epochs="first", split_policy_value=False, ema_beta=0.95,
                          per_example_interval=0, b_noise_interval=0)
    b, n = 8, 64
    est = []
    for _ in range(3000):
        probe = NoiseProbe(cfg, microbatch_size=b)
        g = torch.from_numpy(G + rng.normal(size=(n, 4)) * np.sqrt(s2))
        probe.start_update()
        probe.start_minibatch(0, 0, 0, n // b, preconditioner=[torch.from_numpy(P)])
        for i in range(0, n, b):
            probe.on_microbatch([g[i:i + b].mean(0)], b / n, full=True)
        probe.on_minibatch([g.mean(0)], n)
        out = probe.end_update()
        est.append((out["noise/adam_grad_sq"], out["noise/adam_trace_cov"]))
    est = np.array(est)
    for col, truth in ((0, float(G @ (P * G))), (1, float(P @ s2))):
        m, se = mean_and_se(est[:, col])
        assert abs(m - truth) < 3 * se, (col, m, truth, se)
