"""Gradient noise scale estimators (McCandlish et al. 2018, arXiv 1812.06162).

B_simple = tr(Sigma) / |G|^2 and B_noise = tr(H Sigma) / (G^T H G), from the unbiased
two-batch-size estimates of the paper's Appendix A.1. Numerator and denominator are
smoothed separately (NoiseScaleEMA) because their ratio is biased. ``NoiseProbe`` applies them
to the gradients the learner computes anyway. Pure torch, no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import numpy as np
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
    "sq_norm",
    "NoiseProbe",
    "between_batch_estimates",
    "bootstrap_interval",
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


# ----------------------------------------------------------------------------- between batches


def between_batch_estimates(batch_grads: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(|G|^2, tr(Sigma_eff)) from K independent batch gradients, the reference for RL batches.

    batch_grads [K, D]: the mean-loss gradients of K batches of `batch_size` examples each,
    collected independently at the same parameters (correlations inside a batch included).
    tr(Sigma_eff) = batch_size x trace of their unbiased covariance, the per-example noise a
    batch of this shape really has; |G|^2 = |mean|^2 - trace(cov)/K. Both unbiased.
    """
    g = batch_grads.double()
    k = g.shape[0]
    if k < 2:
        raise ValueError(f"between-batch estimates need at least 2 batches, got {k}")
    mean = g.mean(0)
    trace_cov = float(((g - mean) ** 2).sum()) / (k - 1)
    return float(mean.pow(2).sum()) - trace_cov / k, batch_size * trace_cov


def bootstrap_interval(batch_grads: torch.Tensor, batch_size: int, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of B_simple = tr(Sigma_eff) / |G|^2 over resamples of the K batches
    (a resample whose |G|^2 is not positive counts as an unbounded B_simple)."""
    g = batch_grads.double()
    k = g.shape[0]
    gen = torch.Generator().manual_seed(seed)
    # Gram matrix: every resample's statistics from K x K inner products, not D-dim vectors.
    gram = g @ g.T
    ratios = []
    for _ in range(n_boot):
        ix = torch.randint(0, k, (k,), generator=gen)
        sub = gram[ix][:, ix]
        mean_sq = float(sub.sum()) / k**2
        trace_cov = (float(sub.diagonal().sum()) / k - mean_sq) * k / (k - 1)
        grad_sq = mean_sq - trace_cov / k
        ratios.append(batch_size * trace_cov / grad_sq if grad_sq > 0 else math.inf)
    # no interpolation: an unbounded resample (|G|^2 <= 0) gives an unbounded end, not nan
    lo, hi = np.quantile(np.array(ratios), [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)


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
    return cast(torch.Tensor, sum(v.pow(2).sum() for v in tree.values()))  # a non-empty tree: never the int 0


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
        hv = jvp(lambda p: g(p, batch), (params,), (v,))[1]  # (output, jvp_out) without has_aux
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


# ----------------------------------------------------------------------------- the probe


def sq_norm(tensors) -> torch.Tensor:
    """|g|^2 of a gradient given as a list of tensors (one device sync-free reduction)."""
    tensors = list(tensors)
    return torch.stack(torch._foreach_norm(tensors)).pow(2).sum() if tensors else torch.zeros(())


def weighted_sq_norm(tensors, weights) -> torch.Tensor:
    """sum_i w_i g_i^2 over all parameters: g^T P g for a diagonal P given per parameter."""
    return torch.stack([(w * g * g).sum() for g, w in zip(tensors, weights)]).sum()


SUMMARY_PARTS = ("combined", "policy", "value", "adam")


def ratio_of_means(grad_sq: np.ndarray, trace_cov: np.ndarray, n_boot: int = 500, level: float = 0.95,
                   seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """mean(trace_cov) / mean(grad_sq) over a sequence of estimates, with a moving-block
    bootstrap interval (blocks of about n^(1/3) consecutive estimates keep their serial
    correlation). None where the averaged |G|^2 is not positive (B_simple unresolved)."""
    ok = np.isfinite(grad_sq) & np.isfinite(trace_cov)
    g, t = grad_sq[ok], trace_cov[ok]
    n = len(g)
    if n == 0:
        return None, None, None
    ratio = float(t.mean() / g.mean()) if g.mean() > 0 else None
    if n < 3:
        return ratio, None, None
    block = max(1, round(n ** (1 / 3)))
    starts = np.random.default_rng(seed).integers(0, n - block + 1, size=(n_boot, -(-n // block)))
    ix = (starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n]
    gm, tm = g[ix].mean(1), t[ix].mean(1)
    ratios = np.where(gm > 0, tm / np.where(gm > 0, gm, 1.0), np.inf)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return ratio, float(lo), (float(hi) if np.isfinite(hi) else None)


class NoiseProbe:
    """The learner's gradient-noise measurement, apart from the update it observes.

    The learner calls it at fixed points of its accumulation loop, as RLlib's
    ``postprocess_gradients`` hook: ``start_minibatch`` before a minibatch's micro-batches,
    ``on_microbatch`` with each micro-batch's gradient, ``on_minibatch`` with the accumulated
    minibatch gradient (before clipping), and ``extras`` once per update for the per-example
    (B_small = 1) and Hessian (B_noise) estimates at their intervals. The probe owns the
    estimators, the bias-corrected EMAs (combined, policy, value, per-example, B_noise), the
    history of B_simple after each update, and their checkpoint state. It never changes the
    gradients it sees.

    ``split`` asks the learner for the policy and value losses' gradients apart in the
    minibatches it measures (``noise.split_policy_value``).
    """

    PARTS = ("combined", "policy", "value", "adam", "per_example", "b_noise")
    MAX_KEPT_GRADS = 8  # micro-batch gradients kept for B_noise

    def __init__(self, cfg, microbatch_size: int):
        self.cfg = cfg  # a NoiseConfig
        self.microbatch_size = microbatch_size
        self.ema = {k: NoiseScaleEMA(cfg.ema_beta) for k in self.PARTS}
        self.history: list[float] = []  # combined B_simple EMA after each update
        self.raw: dict[str, list[tuple[float, float]]] = {}  # part -> (|G|^2, tr(Sigma)) per measured update
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.measuring = False
        self.split = False

    # -- called by the learner ----------------------------------------------------------------
    def start_update(self) -> None:
        self._sums, self._counts = {}, {}

    def start_minibatch(self, iteration: int, epoch: int, minibatch: int, num_microbatches: int,
                        preconditioner: Callable[[], list[torch.Tensor] | None] | list[torch.Tensor] | None = None) -> None:
        """preconditioner: gives the optimizer's diagonal P (Adam: 1 / (sqrt(v_hat) + eps)) per
        parameter, for the preconditioned noise scale tr(P Sigma) / (G^T P G), or None before
        Adam's first step; asked only when this minibatch is measured."""
        c = self.cfg
        self.measuring = c.enabled and num_microbatches >= 2 and (c.epochs == "all" or epoch == 0)
        self.split = self.measuring and c.split_policy_value
        self._precond = (preconditioner() if callable(preconditioner) else preconditioner) if self.measuring else None
        # B_noise uses the first minibatch's micro-batch gradients (see extras)
        self._keep = self.measuring and self._due(c.b_noise_interval, iteration) and epoch == 0 and minibatch == 0
        self._small_sq: dict[str, list[torch.Tensor]] = {"combined": [], "policy": [], "value": [], "adam": []}
        self._part_acc: dict[str, list[torch.Tensor]] = {}
        self.kept_grads: list[list[torch.Tensor]] = []

    def on_microbatch(self, grads: Sequence[torch.Tensor], weight: float, full: bool,
                      parts: dict[str, list[torch.Tensor]] | None = None) -> None:
        """grads: the micro-batch's mean-loss gradient; weight: its share of the minibatch;
        full: it holds microbatch_size samples (a short last one does not feed the estimate);
        parts: {'policy': ..., 'value': ...} gradients when `split`."""
        if not self.measuring:
            return
        for k, g in (parts or {}).items():
            acc = self._part_acc.setdefault(k, [torch.zeros_like(x) for x in g])
            torch._foreach_add_(acc, g, alpha=weight)
            if full:
                self._small_sq[k].append(sq_norm(g))
        if full:
            self._small_sq["combined"].append(sq_norm(grads))
            if self._precond is not None:
                self._small_sq["adam"].append(weighted_sq_norm(grads, self._precond))
            if self._keep and len(self.kept_grads) < self.MAX_KEPT_GRADS:
                self.kept_grads.append([x.detach().clone() for x in grads])

    def on_minibatch(self, grads: list[torch.Tensor], minibatch_size: int) -> None:
        """grads: the accumulated minibatch gradient (before clipping)."""
        if not (self.measuring and self._small_sq["combined"]):
            return
        self._two_batch("combined", self._small_sq["combined"], sq_norm(grads), minibatch_size)
        for k, acc in self._part_acc.items():
            self._two_batch(k, self._small_sq[k], sq_norm(acc), minibatch_size)
        if self._precond is not None and self._small_sq["adam"]:
            self._two_batch("adam", self._small_sq["adam"], weighted_sq_norm(grads, self._precond), minibatch_size)

    def extras(self, iteration: int, loss_fn: LossFn, params: Params, samples: Batch,
               hessian_samples: Callable[[], Batch], small_grads: list[list[torch.Tensor]],
               big_grads: list[torch.Tensor], b_big: int) -> None:
        """Per-example B_simple on `samples`, and B_noise from micro-batch gradients `small_grads`
        and their batch's gradient `big_grads` (b_big examples) with the Hessian on samples
        disjoint from both (`hessian_samples()`, so that H is independent of them), when due."""
        c = self.cfg
        if c.enabled and self._due(c.per_example_interval, iteration):
            grad_sq, trace_cov = (float(x) for x in per_example_estimates(loss_fn, params, samples, chunk_size=64))
            self.ema["per_example"].update(grad_sq, trace_cov)
            self._add("noise/per_example_grad_sq", grad_sq)
            self._add("noise/per_example_trace_cov", trace_cov)
            self._add("noise/b_simple_per_example", b_simple_ratio(grad_sq, trace_cov))
        if c.enabled and self._due(c.b_noise_interval, iteration) and small_grads and b_big > self.microbatch_size:
            names = list(params)
            as_dict = lambda gs: dict(zip(names, gs))  # noqa: E731
            ghg, tr_hs = (float(x) for x in b_noise_estimates(
                loss_fn, params, hessian_samples(), [as_dict(g) for g in small_grads], as_dict(big_grads),
                self.microbatch_size, b_big))
            self.ema["b_noise"].update(ghg, tr_hs)
            self._add("noise/gHg", ghg)
            self._add("noise/trace_H_cov", tr_hs)
            self._add("noise/b_noise", b_simple_ratio(ghg, tr_hs))

    def end_update(self) -> dict[str, float]:
        """This update's estimates (means over its measured minibatches) and the EMAs."""
        self.history.append(self.ema["combined"].ratio)
        out = {k: float(v) / self._counts[k] for k, v in self._sums.items()}
        for part in SUMMARY_PARTS:  # raw (|G|^2, tr(Sigma)) of this update, for unbiased summaries
            prefix = "noise/" if part == "combined" else f"noise/{part}_"
            if f"{prefix}grad_sq" in out:
                self.raw.setdefault(part, []).append((out[f"{prefix}grad_sq"], out[f"{prefix}trace_cov"]))
        c = self.cfg
        if not c.enabled:
            return out
        combined = self.ema["combined"]
        out.update({"noise/b_simple_ema": combined.ratio, "noise/grad_sq_ema": combined.grad_sq,
                    "noise/trace_cov_ema": combined.trace_cov})
        if self.ema["adam"].n:
            out["noise/b_simple_adam_ema"] = self.ema["adam"].ratio
        if c.split_policy_value:
            out["noise/b_simple_policy_ema"] = self.ema["policy"].ratio
            out["noise/b_simple_value_ema"] = self.ema["value"].ratio
        if c.per_example_interval:
            out["noise/b_simple_per_example_ema"] = self.ema["per_example"].ratio
        if c.b_noise_interval:
            out["noise/b_noise_ema"] = self.ema["b_noise"].ratio
        return out

    # -- read by schedules and summaries ----------------------------------------------------------
    @property
    def b_simple(self) -> float:
        """The combined B_simple EMA so far (examples per gradient; nan before any estimate)."""
        return self.ema["combined"].ratio

    def summary(self, seed: int = 0) -> dict[str, dict]:
        """Per part, B_simple over the run so far as the ratio of the averaged tr(Sigma) and |G|^2
        estimates (every measured update counts, resolved or not), with a block-bootstrap
        interval over updates: {'combined': {'b_simple', 'b_simple_ci', 'updates', 'finite_updates'},
        ...}; b_simple is None where it is unresolved (finite estimates whose averaged |G|^2 is
        not positive) or there is no finite estimate at all (finite_updates 0)."""
        out = {}
        for part, pairs in self.raw.items():
            a = np.array(pairs, dtype=float)
            ratio, lo, hi = ratio_of_means(a[:, 0], a[:, 1], seed=seed)
            finite = int((np.isfinite(a[:, 0]) & np.isfinite(a[:, 1])).sum()) if len(a) else 0
            out[part] = {"b_simple": ratio, "b_simple_ci": [lo, hi], "updates": len(a), "finite_updates": finite}
        return out

    def state_dict(self) -> dict:
        return {"ema": {k: e.state_dict() for k, e in self.ema.items()}, "history": list(self.history),
                "raw": {k: [list(p) for p in v] for k, v in self.raw.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        for k, e in self.ema.items():
            e.load_state_dict(state["ema"][k])
            e.beta = float(self.cfg.ema_beta)  # a resumed run's noise.ema_beta wins
        self.history = [float(x) for x in state["history"]]
        self.raw = {k: [(float(a), float(b)) for a, b in v] for k, v in state["raw"].items()}

    # -- inside --------------------------------------------------------------------------------
    @staticmethod
    def _due(interval: int, iteration: int) -> bool:
        return bool(interval) and iteration % interval == 0

    def _add(self, key: str, value) -> None:
        # Values stay tensors on the device until end_update: no sync per micro-batch.
        self._sums[key] = self._sums.get(key, 0.0) + value
        self._counts[key] = self._counts.get(key, 0) + 1

    def _two_batch(self, key: str, small_sq: list[torch.Tensor], sq_big: torch.Tensor, b_big: int) -> None:
        # Sync point (once per measured minibatch): the EMA keeps python floats.
        sq_small = torch.stack(small_sq).mean()
        grad_sq, trace_cov = two_batch_estimates(float(sq_small), float(sq_big), self.microbatch_size, b_big)
        self.ema[key].update(grad_sq, trace_cov)
        # combined: noise/grad_sq, noise/b_simple; parts: noise/policy_grad_sq, noise/b_simple_policy
        prefix, suffix = ("noise/", "") if key == "combined" else (f"noise/{key}_", f"_{key}")
        self._add(f"{prefix}grad_sq", grad_sq)
        self._add(f"{prefix}trace_cov", trace_cov)
        self._add(f"noise/b_simple{suffix}", b_simple_ratio(grad_sq, trace_cov))
