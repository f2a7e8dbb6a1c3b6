"""Gradient noise scale estimators (McCandlish et al. 2018, arXiv 1812.06162).

B_simple = tr(Sigma) / |G|^2 and B_noise = tr(H Sigma) / (G^T H G), from the unbiased
two-batch-size estimates of the paper's Appendix A.1. Numerator and denominator are
smoothed separately (NoiseScaleEMA) because their ratio is biased. Pure torch.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch.func import grad, jvp, vmap

Params = Mapping[str, torch.Tensor]
Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[Params, Batch], torch.Tensor]  # (params, batch) -> scalar MEAN loss

__all__ = [
    "two_batch_estimates",
    "b_simple_ratio",
    "NoiseScaleEMA",
    "per_example_sq_norms",
    "per_example_estimates",
    "hessian_quadratic_forms",
    "b_noise_estimates",
]


def _check_batch_sizes(b_small, b_big) -> None:
    if not (0 < b_small < b_big):
        raise ValueError(
            f"two-batch estimates need 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}"
        )


def two_batch_estimates(sq_norm_small, sq_norm_big, b_small, b_big):
    """Unbiased (|G|^2, tr(Sigma)) from two batch sizes (Appendix A.1).

    Uses E|G_B|^2 = |G|^2 + tr(Sigma)/B at B = b_small and B = b_big.
    `sq_norm_small`: MEAN of |G_small|^2 over the small batches; `sq_norm_big`: |G_big|^2.
    Floats give floats; tensors give tensors (elementwise, broadcasting).
    """
    _check_batch_sizes(b_small, b_big)
    grad_sq = (b_big * sq_norm_big - b_small * sq_norm_small) / (b_big - b_small)
    trace_cov = (sq_norm_small - sq_norm_big) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq, trace_cov


def b_simple_ratio(grad_sq, trace_cov) -> float:
    """trace_cov / grad_sq, or nan where the ratio is undefined.

    nan when grad_sq <= 0 (a noisy estimate can go non-positive: dividing would give a huge
    or negative batch size), when either input is not finite, and when trace_cov < 0 (a
    negative variance estimate means the noise is not resolved yet, not a negative scale).
    """
    g, t = float(grad_sq), float(trace_cov)
    if not (math.isfinite(g) and math.isfinite(t)) or g <= 0.0 or t < 0.0:
        return float("nan")
    return t / g


class NoiseScaleEMA:
    """Bias-corrected EMAs of (grad_sq, trace_cov), kept separately; ratio of the smoothed values.

    Also serves B_noise: feed (gHg, trHSigma) and read `ratio`.
    """

    def __init__(self, beta: float = 0.99):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.n = 0  # accepted updates; drives the bias correction 1 - beta**n
        self.skipped = 0  # updates dropped for non-finite input
        self._ema_grad_sq = 0.0
        self._ema_trace_cov = 0.0

    def update(self, grad_sq, trace_cov) -> None:
        """Fold in one pair of estimates; a pair with any non-finite value is skipped whole
        so both averages cover the same steps."""
        g, t = float(grad_sq), float(trace_cov)
        if not (math.isfinite(g) and math.isfinite(t)):
            self.skipped += 1
            return
        b = self.beta
        self._ema_grad_sq = b * self._ema_grad_sq + (1.0 - b) * g
        self._ema_trace_cov = b * self._ema_trace_cov + (1.0 - b) * t
        self.n += 1

    def _corrected(self, ema: float) -> float:
        if self.n == 0:
            return float("nan")
        return ema / (1.0 - self.beta**self.n)

    @property
    def grad_sq(self) -> float:
        return self._corrected(self._ema_grad_sq)

    @property
    def trace_cov(self) -> float:
        return self._corrected(self._ema_trace_cov)

    @property
    def b_simple(self) -> float:
        return b_simple_ratio(self.grad_sq, self.trace_cov)

    @property
    def ratio(self) -> float:
        """Generic name for b_simple (B_noise when fed (gHg, trHSigma))."""
        return self.b_simple

    def state_dict(self) -> dict:
        return {
            "beta": self.beta,
            "n": self.n,
            "skipped": self.skipped,
            "ema_grad_sq": self._ema_grad_sq,
            "ema_trace_cov": self._ema_trace_cov,
        }

    def load_state_dict(self, d: Mapping) -> None:
        self.beta = float(d["beta"])
        self.n = int(d["n"])
        self.skipped = int(d["skipped"])
        self._ema_grad_sq = float(d["ema_grad_sq"])
        self._ema_trace_cov = float(d["ema_trace_cov"])


# ----------------------------------------------------------------------------- per-example


def _detached(params: Params) -> dict:
    # torch.func transforms need no outer graph; detaching keeps results off the caller's graph.
    return {k: v.detach() for k, v in params.items()}


def _sample_grad_fn(loss_fn: LossFn):
    """(params, sample) -> grad dict, where sample has NO leading dim; loss_fn sees dim 1."""
    g = grad(loss_fn)

    def f(params, sample):
        return g(params, {k: v.unsqueeze(0) for k, v in sample.items()})

    return f


def _sq_norm(tree: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return sum(v.pow(2).sum() for v in tree.values())


def _batch_len(batch: Batch) -> int:
    sizes = {v.shape[0] for v in batch.values()}
    if len(sizes) != 1:
        raise ValueError(f"batch tensors must share the leading dim, got sizes {sorted(sizes)}")
    return sizes.pop()


def per_example_sq_norms(loss_fn: LossFn, params: Params, batch: Batch, chunk_size=None) -> torch.Tensor:
    """|g_i|^2 over all params for each sample i: Tensor[N].

    vmap(grad) over single samples; the norm is taken inside vmap so only N floats are
    kept, and `chunk_size` bounds how many per-sample grads exist at once.
    """
    f = _sample_grad_fn(loss_fn)
    norm_fn = vmap(lambda p, s: _sq_norm(f(p, s)), in_dims=(None, 0), chunk_size=chunk_size)
    return norm_fn(_detached(params), dict(batch))


def per_example_estimates(loss_fn: LossFn, params: Params, batch: Batch, chunk_size=None):
    """(|G|^2, tr(Sigma)) as floats from B_small = 1 and B_big = N.

    sq_norm_small = mean_i |g_i|^2; sq_norm_big = |mean_i g_i|^2 (the batch gradient when the
    loss is a per-sample mean). Chunks of `chunk_size` samples are vmapped in turn, summing
    the grads as we go, so peak memory is chunk_size x n_params.
    """
    params = _detached(params)
    n = _batch_len(batch)
    if n < 2:
        raise ValueError(f"per-example estimates need at least 2 samples, got {n}")
    step = n if chunk_size is None else int(chunk_size)
    per_sample = vmap(_sample_grad_fn(loss_fn), in_dims=(None, 0))
    sq_sum = 0.0
    grad_sum = {k: torch.zeros_like(v) for k, v in params.items()}
    for start in range(0, n, step):
        chunk = {k: v[start : start + step] for k, v in batch.items()}
        grads = per_sample(params, chunk)  # name -> [chunk, *param.shape]
        sq_sum += float(sum(g.flatten(1).pow(2).sum() for g in grads.values()))
        for k, g in grads.items():
            grad_sum[k] += g.sum(0)
    sq_small = sq_sum / n
    sq_big = float(_sq_norm(grad_sum)) / n**2
    return two_batch_estimates(sq_small, sq_big, 1, n)


# ----------------------------------------------------------------------------- Hessian


def hessian_quadratic_forms(
    loss_fn: LossFn, params: Params, batch: Batch, vectors, vectorize: bool = True
) -> list[float]:
    """[v^T H v for v in vectors], H the Hessian of loss_fn(params, batch) w.r.t. params.

    Forward-over-reverse HVP (jvp of grad). Each v is a dict shaped like params. With
    `vectorize`, all vectors go through one vmap; set False to loop (less memory).
    """
    params = _detached(params)
    vectors = list(vectors)
    if not vectors:
        return []
    g = grad(loss_fn)

    def quad(v):
        _, hv = jvp(lambda p: g(p, batch), (params,), (v,))
        return sum((v[k] * hv[k]).sum() for k in params)

    if vectorize:
        stacked = {k: torch.stack([v[k].detach() for v in vectors]) for k in params}  # [V, *shape]
        return [float(q) for q in vmap(quad)(stacked)]
    return [float(quad({k: v[k].detach() for k in params})) for v in vectors]


def b_noise_estimates(
    loss_fn: LossFn, params: Params, batch: Batch, small_grads, big_grad, b_small, b_big
):
    """(G^T H G, tr(H Sigma)) as floats, for B_noise = tr(H Sigma) / (G^T H G).

    E[g_B^T H g_B] = G^T H G + tr(H Sigma)/B, so two_batch_estimates applies to
    (mean_j g_j^T H g_j over `small_grads`, g_big^T H g_big), H taken on `batch`.
    If `batch` is the same data the grads came from, H and the grads are correlated and the
    estimate carries an O(1/b_big) bias; an independent batch for H avoids it.
    """
    _check_batch_sizes(b_small, b_big)
    small_grads = list(small_grads)
    if not small_grads:
        raise ValueError("b_noise_estimates needs at least one small-batch gradient")
    forms = hessian_quadratic_forms(loss_fn, params, batch, small_grads + [big_grad])
    small_mean = sum(forms[:-1]) / len(small_grads)
    return two_batch_estimates(small_mean, forms[-1], b_small, b_big)
