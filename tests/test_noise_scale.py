"""Tests for rlscale.noise_scale: hand-computed numbers and closed-form linear regression.

Linear regression: x ~ N(0, S), S diagonal, y = x.w* + eps, eps ~ N(0, sigma^2), per-example
loss 0.5 (x.w - y)^2 at w = w* + delta. Per-example grad g = x (x.delta - eps), so
G = S delta, H = S, Sigma = (delta^T S delta + sigma^2) S + S delta delta^T S (Isserlis).
"""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from rlscale.noise_scale import (
    NoiseScaleEMA,
    b_noise_estimates,
    b_simple_ratio,
    hessian_quadratic_forms,
    per_example_estimates,
    per_example_sq_norms,
    two_batch_estimates,
)

DT = torch.float64
S_DIAG = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0], dtype=DT)
D = S_DIAG.numel()
DELTA = torch.tensor([1.0, -0.5, 0.8, -0.3, 0.6, -0.4, 0.2, -0.25], dtype=DT)
W_STAR = torch.linspace(-1.0, 1.0, D, dtype=DT)
SIGMA = 0.5


# ----------------------------------------------------------------------------- analytic truth


def analytic():
    s, d = S_DIAG, DELTA
    q = float((s * d**2).sum())  # delta^T S delta
    sd = s * d  # S delta = G
    sigma_mat = (q + SIGMA**2) * torch.diag(s) + torch.outer(sd, sd)
    grad_sq = float((sd**2).sum())
    trace_cov = float(torch.trace(sigma_mat))
    ghg = float((s**3 * d**2).sum())
    tr_h_sigma = float((s[:, None] * sigma_mat).diagonal().sum())
    return dict(
        sigma_mat=sigma_mat,
        grad_sq=grad_sq,
        trace_cov=trace_cov,
        ghg=ghg,
        tr_h_sigma=tr_h_sigma,
        b_simple=trace_cov / grad_sq,
        b_noise=tr_h_sigma / ghg,
    )


def sample_xy(gen, *shape):
    """x: [*shape, D], y: [*shape] from the model above."""
    x = torch.randn(*shape, D, generator=gen, dtype=DT) * S_DIAG.sqrt()
    eps = SIGMA * torch.randn(*shape, generator=gen, dtype=DT)
    return x, x @ W_STAR + eps


def closed_form_grads(x, y):
    """Per-example grads x (x.w - y) at w = w* + delta: [..., D]."""
    w = W_STAR + DELTA
    return x * (x @ w - y).unsqueeze(-1)


def linear_model():
    model = nn.Linear(D, 1, bias=False).to(DT)
    with torch.no_grad():
        model.weight.copy_((W_STAR + DELTA)[None])
    return model


def make_loss_fn(model):
    def loss_fn(params, batch):
        pred = functional_call(model, params, (batch["x"],)).squeeze(-1)
        return 0.5 * ((pred - batch["y"]) ** 2).mean()

    return loss_fn


# ----------------------------------------------------------------------------- exact numbers


def test_two_batch_estimates_hand_computed():
    g2, tr = two_batch_estimates(5.0, 2.0, 1, 4)
    # grad_sq   = (4*2 - 1*5) / (4 - 1) = 3/3 = 1
    # trace_cov = (5 - 2) / (1/1 - 1/4) = 3/0.75 = 4   (check: 1 + 4/1 = 5, 1 + 4/4 = 2)
    assert isinstance(g2, float) and isinstance(tr, float)
    assert g2 == pytest.approx(1.0, abs=1e-15)
    assert tr == pytest.approx(4.0, abs=1e-15)

    g2, tr = two_batch_estimates(3.0, 1.5, 2, 8)
    # grad_sq   = (8*1.5 - 2*3) / (8 - 2) = 6/6 = 1
    # trace_cov = (3 - 1.5) / (1/2 - 1/8) = 1.5/0.375 = 4
    assert (g2, tr) == (pytest.approx(1.0), pytest.approx(4.0))


def test_two_batch_estimates_tensors_elementwise():
    small = torch.tensor([5.0, 3.0, 1.0], dtype=DT)
    big = torch.tensor([2.0, 3.0, 2.0], dtype=DT)
    g2, tr = two_batch_estimates(small, big, 1, 4)
    assert isinstance(g2, torch.Tensor) and isinstance(tr, torch.Tensor)
    # [ (8-5)/3, (12-3)/3, (8-1)/3 ] and [ 3/0.75, 0/0.75, -1/0.75 ]
    torch.testing.assert_close(g2, torch.tensor([1.0, 3.0, 7.0 / 3.0], dtype=DT))
    torch.testing.assert_close(tr, torch.tensor([4.0, 0.0, -4.0 / 3.0], dtype=DT))


@pytest.mark.parametrize("b_small,b_big", [(4, 4), (8, 4), (0, 4), (-1, 4)])
def test_two_batch_estimates_rejects_bad_sizes(b_small, b_big):
    with pytest.raises(ValueError, match="b_small"):
        two_batch_estimates(1.0, 1.0, b_small, b_big)


def test_b_simple_ratio():
    assert b_simple_ratio(2.0, 8.0) == 4.0
    assert b_simple_ratio(torch.tensor(2.0), torch.tensor(8.0)) == 4.0
    assert b_simple_ratio(2.0, 0.0) == 0.0
    for g2, tr in [(0.0, 1.0), (-1e-12, 1.0), (-3.0, 5.0), (1.0, -2.0), (math.nan, 1.0),
                   (1.0, math.inf), (math.inf, 1.0)]:
        assert math.isnan(b_simple_ratio(g2, tr)), (g2, tr)


def test_ema_bias_correction_exact():
    ema = NoiseScaleEMA(beta=0.5)
    assert math.isnan(ema.grad_sq) and math.isnan(ema.trace_cov) and math.isnan(ema.b_simple)
    ema.update(2.0, 4.0)
    # raw = 0.5*0 + 0.5*2 = 1, corrected 1/(1-0.5) = 2; raw = 2, corrected 4
    assert ema.grad_sq == pytest.approx(2.0) and ema.trace_cov == pytest.approx(4.0)
    assert ema.b_simple == pytest.approx(2.0)
    ema.update(4.0, 12.0)
    # raw = 0.5*1 + 0.5*4 = 2.5, corrected 2.5/(1-0.25) = 10/3
    # raw = 0.5*2 + 0.5*12 = 7,   corrected 7/0.75 = 28/3; ratio 28/10 = 2.8
    assert ema.grad_sq == pytest.approx(10.0 / 3.0)
    assert ema.trace_cov == pytest.approx(28.0 / 3.0)
    assert ema.b_simple == pytest.approx(2.8) and ema.ratio == ema.b_simple
    ema.update(math.nan, 1.0)
    ema.update(1.0, math.inf)
    assert ema.skipped == 2 and ema.n == 2
    assert ema.grad_sq == pytest.approx(10.0 / 3.0)


def test_ema_state_dict_roundtrip():
    ema = NoiseScaleEMA(beta=0.9)
    for g2, tr in [(1.0, 3.0), (2.0, 5.0), (math.nan, 0.0), (torch.tensor(1.5), torch.tensor(4.0))]:
        ema.update(g2, tr)
    sd = ema.state_dict()
    assert all(type(v) in (float, int) for v in sd.values())
    other = NoiseScaleEMA(beta=0.5)
    other.load_state_dict(sd)
    assert other.state_dict() == sd
    assert (other.grad_sq, other.trace_cov, other.skipped) == (ema.grad_sq, ema.trace_cov, 1)
    ema.update(3.0, 3.0)
    other.update(3.0, 3.0)
    assert other.b_simple == ema.b_simple


def test_ema_rejects_bad_beta():
    with pytest.raises(ValueError):
        NoiseScaleEMA(beta=1.0)


# ----------------------------------------------------------------------------- known answers


def test_isserlis_covariance_monte_carlo():
    """The closed-form Sigma (and hence tr Sigma, tr H Sigma) matches a Monte-Carlo estimate."""
    gen = torch.Generator().manual_seed(0)
    truth = analytic()
    g = closed_form_grads(*sample_xy(gen, 400_000))  # [N, D]
    torch.testing.assert_close(g.mean(0), S_DIAG * DELTA, atol=0.02, rtol=0.0)
    cov = torch.cov(g.T)
    rel = float((cov - truth["sigma_mat"]).norm() / truth["sigma_mat"].norm())
    assert rel < 0.02, rel
    assert float(torch.trace(cov)) == pytest.approx(truth["trace_cov"], rel=0.01)
    assert float((S_DIAG[:, None] * cov).diagonal().sum()) == pytest.approx(truth["tr_h_sigma"], rel=0.01)
    # the model's Hessian is S: closed-form grads agree with autograd through nn.Linear
    x, y = sample_xy(gen, 5)
    model = linear_model()
    loss = make_loss_fn(model)(dict(model.named_parameters()), {"x": x, "y": y})
    (gw,) = torch.autograd.grad(loss, model.weight)
    torch.testing.assert_close(gw[0], closed_form_grads(x, y).mean(0))


def two_batch_trials(gen, n_trials, b_small, b_big):
    """Vectorised trials: (sq_norm_small [T], sq_norm_big [T]) from closed-form grads."""
    k = b_big // b_small
    g = closed_form_grads(*sample_xy(gen, n_trials, k, b_small))  # [T, k, b_small, D]
    g_small = g.mean(2)  # [T, k, D]
    sq_small = g_small.pow(2).sum(-1).mean(1)  # mean over the k small batches
    sq_big = g_small.mean(1).pow(2).sum(-1)  # the big batch is the union of the small ones
    return sq_small, sq_big


@pytest.mark.parametrize("b_small,b_big", [(1, 8), (4, 32), (16, 64)])
def test_two_batch_estimates_unbiased(b_small, b_big):
    gen = torch.Generator().manual_seed(100 + b_small)
    truth = analytic()
    n = 2000
    g2, tr = two_batch_estimates(*two_batch_trials(gen, n, b_small, b_big), b_small, b_big)
    for est, true in [(g2, truth["grad_sq"]), (tr, truth["trace_cov"])]:
        se = float(est.std()) / math.sqrt(n)
        assert abs(float(est.mean()) - true) < 3 * se, (float(est.mean()), true, se)


def test_b_simple_recovered_with_ema():
    gen = torch.Generator().manual_seed(1)
    truth = analytic()
    # big batches keep the per-trial noise low: relative sd of the result ~0.6% over seeds
    b_small, b_big = 16, 256
    g2, tr = two_batch_estimates(*two_batch_trials(gen, 2000, b_small, b_big), b_small, b_big)
    ema = NoiseScaleEMA(beta=0.999)
    for a, b in zip(g2.tolist(), tr.tolist()):
        ema.update(a, b)
    rel = abs(ema.b_simple / truth["b_simple"] - 1.0)
    print(f"B_simple: ema {ema.b_simple:.4f} vs analytic {truth['b_simple']:.4f}, rel err {rel:.4f}")
    assert rel < 0.05


def test_b_noise_recovered_with_hvps():
    """b_noise_estimates with real HVPs through nn.Linear; H on a design batch with X^T X/n = S."""
    gen = torch.Generator().manual_seed(2)
    truth = analytic()
    model = linear_model()
    loss_fn = make_loss_fn(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    # H batch independent of the gradient samples: rows sqrt(D * s_i) e_i give X^T X / D = S
    h_batch = {"x": torch.diag((D * S_DIAG).sqrt()), "y": torch.zeros(D, dtype=DT)}
    # relative sd of the EMA ratio ~0.8% over seeds at these sizes (1.9% at (4, 32))
    b_small, b_big, n_trials = 16, 256, 1000
    k = b_big // b_small
    x, y = sample_xy(gen, n_trials * k, b_small)
    small = vmap(grad(loss_fn), in_dims=(None, 0))(params, {"x": x, "y": y})  # weight: [T*k, 1, D]
    small_w = small["weight"].reshape(n_trials, k, 1, D)
    ema = NoiseScaleEMA(beta=0.999)
    sums = [0.0, 0.0]  # plain means as well as the EMA
    for t in range(n_trials):
        small_grads = [{"weight": small_w[t, j]} for j in range(k)]
        big_grad = {"weight": small_w[t].mean(0)}
        ghg, tr_hs = b_noise_estimates(loss_fn, params, h_batch, small_grads, big_grad, b_small, b_big)
        ema.update(ghg, tr_hs)
        sums[0] += ghg
        sums[1] += tr_hs
    mean_ratio = sums[1] / sums[0]
    rel_ema = abs(ema.ratio / truth["b_noise"] - 1.0)
    rel_mean = abs(mean_ratio / truth["b_noise"] - 1.0)
    print(f"B_noise: ema {ema.ratio:.4f}, mean {mean_ratio:.4f} vs analytic {truth['b_noise']:.4f}, "
          f"rel err {rel_ema:.4f} / {rel_mean:.4f}")
    assert rel_ema < 0.05 and rel_mean < 0.05


def test_hessian_quadratic_forms_linear_is_s():
    model = linear_model()
    params = dict(model.named_parameters())
    h_batch = {"x": torch.diag((D * S_DIAG).sqrt()), "y": torch.zeros(D, dtype=DT)}
    vs = [torch.randn(1, D, generator=torch.Generator().manual_seed(i), dtype=DT) for i in range(3)]
    forms = hessian_quadratic_forms(make_loss_fn(model), params, h_batch, [{"weight": v} for v in vs])
    expected = [float((S_DIAG * v[0] ** 2).sum()) for v in vs]
    assert forms == pytest.approx(expected, rel=1e-12)


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)


def mlp_loss_fn(model):
    def loss_fn(params, batch):
        out = functional_call(model, params, (batch["x"],))
        return ((out - batch["y"]) ** 2).sum(-1).mean()

    return loss_fn


def mlp_batch(n: int, seed: int):
    """A random batch for tiny_mlp, and the generator that made it (tests draw more from it)."""
    gen = torch.Generator().manual_seed(seed)
    return gen, {"x": torch.randn(n, 3, generator=gen, dtype=DT), "y": torch.randn(n, 2, generator=gen, dtype=DT)}


def test_hessian_quadratic_forms_matches_double_backward():
    model = tiny_mlp()
    gen, batch = mlp_batch(10, seed=3)
    params = dict(model.named_parameters())
    vectors = [{k: torch.randn(p.shape, generator=gen, dtype=DT) for k, p in params.items()}
               for _ in range(3)]
    loss_fn = mlp_loss_fn(model)
    expected = []
    for v in vectors:
        loss = loss_fn(params, batch)
        gs = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        gv = sum((g * v[k]).sum() for g, k in zip(gs, params))
        hv = torch.autograd.grad(gv, list(params.values()))
        expected.append(float(sum((h * v[k]).sum() for h, k in zip(hv, params))))
    assert hessian_quadratic_forms(loss_fn, params, batch, vectors) == pytest.approx(expected, rel=1e-10)
    assert hessian_quadratic_forms(loss_fn, params, batch, vectors, vectorize=False) == pytest.approx(
        expected, rel=1e-10
    )


def test_b_noise_estimates_rejects_bad_sizes():
    model = linear_model()
    params = dict(model.named_parameters())
    batch = {"x": torch.eye(D, dtype=DT), "y": torch.zeros(D, dtype=DT)}
    with pytest.raises(ValueError):
        b_noise_estimates(make_loss_fn(model), params, batch, [params], params, 8, 8)


def test_per_example_sq_norms_matches_autograd_loop():
    model = tiny_mlp()
    gen, batch = mlp_batch(13, seed=4)
    params = dict(model.named_parameters())
    loss_fn = mlp_loss_fn(model)
    expected = []
    for i in range(13):
        loss = loss_fn(params, {k: v[i : i + 1] for k, v in batch.items()})
        gs = torch.autograd.grad(loss, list(params.values()))
        expected.append(float(sum(g.pow(2).sum() for g in gs)))
    expected = torch.tensor(expected, dtype=DT)
    for chunk in (None, 4):
        got = per_example_sq_norms(loss_fn, params, batch, chunk_size=chunk)
        assert got.shape == (13,) and not got.requires_grad
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=0.0)
    # per_example_estimates is two_batch_estimates(mean sq norm, |batch grad|^2, 1, N)
    loss = loss_fn(params, batch)
    sq_big = float(sum(g.pow(2).sum() for g in torch.autograd.grad(loss, list(params.values()))))
    want = two_batch_estimates(float(expected.mean()), sq_big, 1, 13)
    for chunk in (None, 5):
        got = per_example_estimates(loss_fn, params, batch, chunk_size=chunk)
        assert got == pytest.approx(want, rel=1e-10)


def test_per_example_estimates_linear_known_answer():
    gen = torch.Generator().manual_seed(5)
    truth = analytic()
    model = linear_model()
    x, y = sample_xy(gen, 100_000)
    g2, tr = per_example_estimates(make_loss_fn(model), dict(model.named_parameters()), {"x": x, "y": y},
                                   chunk_size=25_000)
    rel = (abs(g2 / truth["grad_sq"] - 1), abs(tr / truth["trace_cov"] - 1),
           abs(b_simple_ratio(g2, tr) / truth["b_simple"] - 1))
    print(f"per-example: grad_sq {g2:.4f}/{truth['grad_sq']:.4f}, "
          f"trace_cov {tr:.4f}/{truth['trace_cov']:.4f}, rel errs {rel}")
    assert max(rel) < 0.05


def test_b_simple_stays_correct_when_the_batch_size_changes():
    # The learner's batch (hence B_big and the micro-batch count) may change between
    # iterations; |G|^2 and tr(Sigma) do not depend on it, so one EMA fed with estimates from
    # alternating (B_small, B_big) pairs still recovers the analytic B_simple.
    gen = torch.Generator().manual_seed(7)
    truth = analytic()
    ema = NoiseScaleEMA(beta=0.999)
    pairs = [(16, 256), (32, 128), (16, 512), (64, 256)]
    chunks = [two_batch_estimates(*two_batch_trials(gen, 500, bs, bb), bs, bb) for bs, bb in pairs]
    for i in range(500):  # interleave: a different batch size at every update
        for g2, tr in chunks:
            ema.update(float(g2[i]), float(tr[i]))
    assert abs(ema.b_simple / truth["b_simple"] - 1.0) < 0.05


def test_probe_state_round_trips_and_a_resumed_ema_beta_wins():
    from types import SimpleNamespace

    from rlscale.noise_scale import NoiseProbe

    def cfg(beta):
        return SimpleNamespace(enabled=True, epochs="first", split_policy_value=False, ema_beta=beta,
                               per_example_interval=0, b_noise_interval=0)

    a = NoiseProbe(cfg(0.95), 8)
    a.ema["combined"].update(2.0, 10.0)
    a.history.append(5.0)
    b = NoiseProbe(cfg(0.5), 8)
    b.load_state_dict(a.state_dict())
    assert b.history == [5.0] and b.ema["combined"].n == 1 and b.b_simple == pytest.approx(5.0)
    assert b.ema["combined"].beta == 0.5


def test_summary_is_a_ratio_of_averaged_estimates_unresolved_updates_included():
    import numpy as np

    from rlscale.noise_scale import ratio_of_means

    # |G|^2 of the second update is not resolved (negative); it still counts in the average.
    ratio, lo, hi = ratio_of_means(np.array([1.0, -0.5, 1.5]), np.array([10.0, 10.0, 10.0]))
    assert ratio == pytest.approx(15.0)  # 30 / 2; the mean of the resolved ratios would be 8.33
    assert ratio_of_means(np.array([1.0, -2.0]), np.array([1.0, 1.0]))[0] is None  # averaged |G|^2 <= 0
    rng = np.random.default_rng(0)
    g = 1.0 + 0.3 * rng.normal(size=400)
    t = 50.0 + 10 * rng.normal(size=400)
    ratio, lo, hi = ratio_of_means(g, t)
    assert lo < ratio < hi and lo < 50.0 < hi and hi - lo < 10


def test_summary_counts_finite_updates_apart_from_unresolved_ones():
    from types import SimpleNamespace

    from rlscale.noise_scale import NoiseProbe

    probe = NoiseProbe(SimpleNamespace(enabled=True, epochs="first", split_policy_value=False, ema_beta=0.95,
                                       per_example_interval=0, b_noise_interval=0), 8)
    probe.raw = {"combined": [(1.0, 4.0), (-3.0, 4.0), (float("nan"), 4.0)],  # averaged |G|^2 < 0: unresolved
                 "value": [(float("nan"), 1.0), (2.0, float("inf"))]}  # no finite estimate at all
    s = probe.summary()
    assert s["combined"]["b_simple"] is None and (s["combined"]["updates"], s["combined"]["finite_updates"]) == (3, 2)
    assert s["value"]["b_simple"] is None and (s["value"]["updates"], s["value"]["finite_updates"]) == (2, 0)
