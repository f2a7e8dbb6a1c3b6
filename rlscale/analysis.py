"""Critical batch size from a sweep directory (SCIENCE.md sections 2-3).

Units used throughout this module:

- ``B``: env steps per PPO iteration (``env_steps_per_iteration``, the rollout batch).
- ``S``: PPO iterations to reach a target score (one iteration = one batch of fresh data).
- ``E = B * S``: env steps to reach the target.
- ``B_crit = E_min / S_min``: env steps per iteration.
- ``b_simple_per_gradient``: the trainer's noise scale, in examples per gradient (one gradient
  is one minibatch of ``B / num_minibatches`` env steps). ``b_simple`` is the same quantity
  times ``num_minibatches``, i.e. in env steps per iteration, so it compares with ``B_crit``.
- Noise-scale variants (``NOISE_VARIANTS``): ``combined`` (the policy + value loss's gradient, the
  learner's primary estimate, top-level ``b_simple``), ``adam`` (the same gradient in Adam's
  preconditioned metric, tr(P Sigma) / G^T P G) and, from trials with
  ``noise.split_policy_value``, ``policy`` and ``value`` (each loss's gradient alone). Every
  entry carries the variants its trials recorded (``b_simple_variants``), and the claim is
  computed per variant (``noise_scale_claim_by_variant``).

Entry point: :func:`analyze` (reads ``sweep.json`` and ``trials/*/trial.json``, writes
``analysis.json``, CSV tables, figures and ``report.html`` into the sweep directory).
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from rlscale.errors import ConfigError
from rlscale.tracking import metrics_path
from rlscale.units import UNITS  # shared with rlscale.report; still importable from here
from rlscale.util import atomic_write_json, atomic_write_text, to_jsonable

# A config must beat the next doubling by this fraction of steps, else returns diminish.
DIMINISHING_REDUCTION = 0.2

TABLE_COLUMNS = [
    "trial_id", "env_id", "target", "B", "num_minibatches", "lr_rule", "lr", "seed",
    "status", "error", "pruned", "reached", "iterations", "env_steps", "optimizer_steps",
    "wall_time_s", "b_simple_to_target", "b_simple_adam_to_target", "b_simple_policy_to_target",
    "b_simple_value_to_target",
]

# The noise-scale variants a trial can record up to a target (rlscale.noise_scale.SUMMARY_PARTS);
# 'combined' is the primary one (entry["b_simple"]).
NOISE_VARIANTS = ("combined", "adam", "policy", "value")


def _variant_column(variant: str) -> str:
    return "b_simple_to_target" if variant == "combined" else f"b_simple_{variant}_to_target"


# ----------------------------------------------------------------------------------------
# Pareto fit
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParetoFit:
    """Fitted steps/examples frontier ``S = S_min + E_min / B``."""

    s_min: float  # PPO iterations
    e_min: float  # env steps
    b_crit: float  # env steps per iteration
    n_points: int
    n_batch_sizes: int
    residual_rms: float  # RMS of log(S) residuals (~ relative error)

    def steps(self, env_steps_per_iteration: Any) -> np.ndarray:
        """Predicted iterations to target at the given batch sizes."""
        return self.s_min + self.e_min / np.asarray(env_steps_per_iteration, dtype=float)


def fit_pareto(batch_sizes: Iterable[float], steps: Iterable[float]) -> ParetoFit:
    """Fit ``(S/S_min - 1)(E/E_min - 1) = 1`` with ``E = B*S`` to (B, S) points.

    Equivalent to ``S = S_min + E_min / B``. Residuals are taken in log space because run-to-run
    noise in steps-to-target is multiplicative; parameters are bounded positive. Repeated batch
    sizes are allowed, but at least two distinct ones are needed.
    """
    b = np.asarray(list(batch_sizes), dtype=float).ravel()
    s = np.asarray(list(steps), dtype=float).ravel()
    if b.shape != s.shape:
        raise ValueError(f"batch_sizes and steps differ in length: {b.size} vs {s.size}")
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(s)) and np.all(b > 0) and np.all(s > 0)):
        raise ValueError("batch sizes and steps must be positive and finite")
    n_distinct = np.unique(b).size
    if n_distinct < 2:
        raise ValueError(f"need at least 2 distinct batch sizes, got {n_distinct}")

    # Start from the linear regression S = S_min + E_min * (1/B); fall back to crude but
    # positive guesses when noise makes the intercept or slope non-positive.
    slope, intercept = np.polyfit(1.0 / b, s, 1)
    s0 = intercept if intercept > 0 else 0.5 * s.min()
    e0 = slope if slope > 0 else 0.5 * np.min(b * s)

    # Optimise multipliers of (s0, e0) so both parameters are O(1) for the solver.
    log_s = np.log(s)

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(s0 * x[0] + e0 * x[1] / b) - log_s

    def jacobian(x: np.ndarray) -> np.ndarray:
        model = s0 * x[0] + e0 * x[1] / b
        return np.column_stack([s0 / model, e0 / (b * model)])

    result = least_squares(
        residuals, x0=[1.0, 1.0], jac=jacobian, bounds=([1e-12, 1e-12], [np.inf, np.inf]),
        method="trf", xtol=1e-12, ftol=1e-12, gtol=1e-12,
    )
    s_min, e_min = float(s0 * result.x[0]), float(e0 * result.x[1])
    return ParetoFit(
        s_min=s_min,
        e_min=e_min,
        b_crit=e_min / s_min,
        n_points=int(b.size),
        n_batch_sizes=int(n_distinct),
        residual_rms=float(np.sqrt(np.mean(result.fun**2))),
    )


# ----------------------------------------------------------------------------------------
# Reading a sweep
# ----------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _rerun_fix(sweep_dir: str | os.PathLike) -> str:
    return f"run `rlscale sweep SWEEP_CONFIG --out {sweep_dir}`"


def load_sweep_meta(sweep_dir: str | os.PathLike) -> dict:
    """``sweep.json`` with defaults for a missing name or targets.

    A missing ``sweep.json`` gives just the defaults; one that cannot be read, is not valid
    JSON or does not hold ``{"targets": {env: [number, ...]}, ...}`` raises ``ConfigError``.
    """
    path = Path(sweep_dir) / "sweep.json"
    fix = f"{_rerun_fix(sweep_dir)} again to rewrite it"
    try:
        meta = _read_json(path) if path.exists() else {}
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"'{path}' is not valid JSON ({reason}); {fix}") from None
    except OSError as err:
        raise ConfigError(f"cannot read '{path}' ({err.strerror or type(err).__name__}); {fix}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"'{path}' must hold a JSON object, not {type(meta).__name__}; {fix}")
    meta.setdefault("name", Path(sweep_dir).resolve().name)
    targets = meta.get("targets") or {}
    try:
        if not isinstance(targets, dict) or not all(isinstance(t, list) for t in targets.values()):
            raise TypeError
        meta["targets"] = {env: sorted(float(t) for t in ts) for env, ts in targets.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"'{path}' has malformed targets (want {{env: [number, ...]}}); {fix}") from None
    return meta


def _trial_json_paths(sweep_dir: str | os.PathLike) -> list[Path]:
    """``trials/<id>/trial.json`` of every trial directory that has one, sorted by id."""
    dirs = sorted((Path(sweep_dir) / "trials").glob("*"))
    return [d / "trial.json" for d in dirs if d.is_dir() and (d / "trial.json").exists()]


def check_sweep_dir(sweep_dir: str | os.PathLike) -> None:
    """Raise ``ConfigError`` unless ``sweep_dir`` holds a sweep to analyse; writes nothing.

    A sweep is a directory with a readable ``sweep.json`` and at least one
    ``trials/*/trial.json`` (pending or failed ones count).
    """
    path = Path(sweep_dir)
    where = "pass the directory a `rlscale sweep` run wrote (default sweeps/<name>)"
    if not path.exists():
        raise ConfigError(f"sweep directory '{sweep_dir}' does not exist; {where}")
    if not path.is_dir():
        raise ConfigError(f"sweep directory '{sweep_dir}' is not a directory; {where}")
    if not (path / "sweep.json").exists():
        raise ConfigError(f"'{sweep_dir}' holds no sweep (sweep.json missing); {_rerun_fix(sweep_dir)} first")
    load_sweep_meta(path)  # a broken sweep.json raises here
    if not _trial_json_paths(path):
        raise ConfigError(f"'{sweep_dir}' holds no trials (no trials/*/trial.json); {_rerun_fix(sweep_dir)} first")


def load_trials(sweep_dir: str | os.PathLike) -> list[dict]:
    """All ``trials/*/trial.json``; an unreadable one becomes a failed trial, not a crash."""
    trials = []
    for path in _trial_json_paths(sweep_dir):
        trial_dir = path.parent
        try:
            trial = _read_json(path)
        except (OSError, ValueError) as err:
            trial = {"status": "failed", "error": f"unreadable trial.json: {err}"}
        trial.setdefault("trial_id", trial_dir.name)
        trials.append(trial)
    return trials


def _part_b_simple(part: dict | None) -> float | None:
    """A trial's B_simple to a target for one part: its value; inf where the part was measured
    (updates > 0) but is unresolved, its averaged |G|^2 not positive, so that the noise swamps
    the signal at any batch the run could show (a B_simple beyond every finite estimate); None
    where the trial did not measure that part or had no finite estimate of it."""
    if not part:
        return None
    if part.get("b_simple") is not None:
        return part["b_simple"]
    # finite_updates: records since it was added; before, every update had finite estimates
    # unless the run diverged (such runs fail and stay out of the analysis)
    return float("inf") if (part.get("finite_updates", part.get("updates")) or 0) > 0 else None


def steps_to_target_table(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per (trial, target): env, batch size B (env steps/iteration), lr config, seed,
    status and the steps to reach the target in every unit the trial recorded.

    Targets are those of ``sweep.json`` for the trial's env plus any the trial reports, so a
    failed trial with no results still shows up (``reached`` False).
    """
    meta = load_sweep_meta(sweep_dir)
    rows = []
    for trial in load_trials(sweep_dir):
        env_id = trial.get("env_id")
        results = {float(k): v or {} for k, v in (trial.get("targets") or {}).items()}
        targets = sorted(set(meta["targets"].get(env_id, [])) | set(results))
        if not targets:
            targets = [float("nan")]  # keep the trial visible even with no target at all
        for target in targets:
            res = results.get(target, {})
            parts = res.get("b_simple_parts") or {}
            combined = res.get("b_simple", res.get("b_simple_mean"))
            rows.append({
                "trial_id": str(trial.get("trial_id")),
                "env_id": env_id,
                "target": target,
                "B": trial.get("env_steps_per_iteration"),
                "num_minibatches": trial.get("num_minibatches"),
                "lr_rule": trial.get("lr_rule"),
                "lr": trial.get("lr"),
                "seed": trial.get("seed"),
                "status": trial.get("status", "pending"),
                "error": trial.get("error"),
                "pruned": bool(trial.get("pruned")),  # stopped in its population once its lr could not win
                "reached": bool(res.get("reached", False)),
                "iterations": res.get("iterations"),
                "env_steps": res.get("env_steps"),
                "optimizer_steps": res.get("optimizer_steps"),
                "wall_time_s": res.get("wall_time_s"),
                # the ratio of averaged estimates up to the target (sweeps before it: a mean of ratios);
                # inf where it was measured but unresolved (see _part_b_simple)
                "b_simple_to_target": combined if combined is not None else _part_b_simple(parts.get("combined")),
                **{_variant_column(v): _part_b_simple(parts.get(v)) for v in NOISE_VARIANTS[1:]},
            })
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for col in ["B", "num_minibatches", "lr", "seed", "target", "iterations", "env_steps",
                "optimizer_steps", "wall_time_s", *(_variant_column(v) for v in NOISE_VARIANTS)]:
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table.sort_values(["env_id", "target", "B", "lr_rule", "lr", "seed"], ignore_index=True)


# ----------------------------------------------------------------------------------------
# Best learning-rate config per batch size, Pareto fits with bootstrap CIs
# ----------------------------------------------------------------------------------------


def _completed(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["status"] == "completed") & table["B"].notna()]


def pending_batch_sizes(table: pd.DataFrame) -> pd.DataFrame:
    """The fixed-B cells (env, B) with trials still pending: env_id, B, n_pending.

    A cell runs new trials beside finished ones when its lr grid grows or seeds are added, and a
    population's records are written when it ends; until then the finished trials alone may name
    a best lr that the running ones would beat. The fits leave such cells out (`_settled`).
    """
    trials = table.drop_duplicates("trial_id")
    pending = trials[(trials["status"] == "pending") & (trials["lr_rule"] != "adaptive") & trials["B"].notna()]
    return pending.groupby(["env_id", "B"], sort=True).size().reset_index(name="n_pending")


def _settled(done: pd.DataFrame, pending: pd.DataFrame) -> pd.DataFrame:
    """The fixed-B rows of completed trials `done` outside the `pending` cells."""
    done = done[done["lr_rule"] != "adaptive"]
    open_cells = set(zip(pending["env_id"], pending["B"]))
    return done[np.array([(e, float(b)) not in open_cells for e, b in zip(done["env_id"], done["B"])], dtype=bool)]


def _iterations_or_inf(rows: pd.DataFrame) -> np.ndarray:
    """Iterations to target per seed; a seed that never reached counts as +inf."""
    it = rows["iterations"].to_numpy(dtype=float)
    return np.where(rows["reached"].to_numpy(dtype=bool) & np.isfinite(it), it, np.inf)


def _best_configs(rows: pd.DataFrame) -> pd.DataFrame:
    """Per batch size, the (lr_rule, lr) with the smallest median iterations over seeds.

    Returns one row per B: B, lr_rule, lr, median_iterations (inf = did not reach), n_seeds,
    n_reached, lr_at_grid_edge (the best grid lr is the grid's smallest or largest; never where
    the median is inf). Ties go to the first config in (lr_rule, lr) order, which keeps it deterministic.
    """
    out = []
    for b, rows_b in rows.groupby("B", sort=True):
        best = None
        for (rule, lr), rows_c in rows_b.groupby(["lr_rule", "lr"], sort=True, dropna=False):
            iters = _iterations_or_inf(rows_c)
            med = float(np.median(iters))
            if best is None or med < best["median_iterations"]:
                best = {"B": float(b), "lr_rule": rule, "lr": float(lr), "median_iterations": med,
                        "n_seeds": int(iters.size), "n_reached": int(np.isfinite(iters).sum())}
        assert best is not None  # every B has at least one config
        grid = sorted(float(x) for x in rows_b.loc[rows_b["lr_rule"] == "grid", "lr"].unique())
        # A grid's best lr at its edge means the grid may not hold the best lr for this B. Where no
        # lr's median seed reached the target, none is best (the first lr only breaks the tie).
        best["lr_at_grid_edge"] = bool(np.isfinite(best["median_iterations"]) and best["lr_rule"] == "grid"
                                       and len(grid) > 1 and best["lr"] in (grid[0], grid[-1]))
        out.append(best)
    columns = ["B", "lr_rule", "lr", "median_iterations", "n_seeds", "n_reached", "lr_at_grid_edge"]
    # Explicit dtypes so an env/target with no completed trial still yields a usable frame.
    dtypes = {"B": float, "lr": float, "median_iterations": float, "n_seeds": int, "n_reached": int, "lr_at_grid_edge": bool}
    return pd.DataFrame(out, columns=columns).astype(dtypes)


def _bootstrap_fits(rows: pd.DataFrame, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Fits on seed-resampled data: array [n_ok, 3] of (s_min, e_min, b_crit).

    Seeds are resampled with replacement within each (B, config); the best config per B and
    the fit are redone on every resample, so the CI includes the lr-selection noise.
    """
    batch_sizes = np.array(sorted(rows["B"].unique()), dtype=float)
    best_median = np.full((n_bootstrap, batch_sizes.size), np.inf)  # [n_bootstrap, n_B]
    for j, b in enumerate(batch_sizes):
        for _, rows_c in rows[rows["B"] == b].groupby(["lr_rule", "lr"], sort=True, dropna=False):
            iters = _iterations_or_inf(rows_c)
            idx = rng.integers(0, iters.size, size=(n_bootstrap, iters.size))
            best_median[:, j] = np.minimum(best_median[:, j], np.median(iters[idx], axis=1))
    fits = []
    for medians in best_median:
        ok = np.isfinite(medians)
        if ok.sum() < 2:
            continue
        fit = fit_pareto(batch_sizes[ok], medians[ok])
        fits.append((fit.s_min, fit.e_min, fit.b_crit))
    return np.array(fits).reshape(-1, 3)


def _b_simple(rows: pd.DataFrame, best: pd.DataFrame, variant: str = "combined") -> tuple[float | None, float | None, int, np.ndarray, int]:
    """Mean b_simple (of a noise-scale variant) at this target over the best-config trials of
    the batch sizes that reached, among those that recorded a resolved one.

    Returns (per gradient, in env steps per iteration, number of trials averaged, the trials'
    values in env steps per iteration, number of trials whose value was unresolved). The mean
    leaves the unresolved trials out, so where there are some it is a low estimate.
    """
    column = _variant_column(variant)
    sel = _rows_of(rows, best[np.isfinite(best["median_iterations"])])
    values = sel[column].to_numpy(dtype=float)
    unresolved = int(np.isposinf(values).sum())
    sel = sel[np.isfinite(values)]
    if sel.empty:
        return None, None, 0, np.array([]), unresolved
    per_gradient = sel[column].to_numpy(dtype=float)
    # One gradient sees B/num_minibatches env steps, so scale up to the rollout batch B.
    minibatches = sel["num_minibatches"].fillna(1).to_numpy(dtype=float)
    per_iteration = per_gradient * minibatches
    return float(per_gradient.mean()), float(per_iteration.mean()), int(len(sel)), per_iteration, unresolved


# metrics.csv columns of each variant's per-update estimates (rlscale.noise_scale.NoiseProbe)
_NOISE_PREFIX = {"combined": "noise/", "adam": "noise/adam_", "policy": "noise/policy_", "value": "noise/value_"}


class NoiseHistories:
    """Each trial's per-update (|G|^2, tr(Sigma)) estimates, read from its metrics.csv (or the
    metrics.csv.gz of a clone) once."""

    def __init__(self, sweep_dir: str | os.PathLike):
        self.sweep_dir = Path(sweep_dir)
        self.trials = self.sweep_dir / "trials"
        self._tables: dict[str, pd.DataFrame | None] = {}

    def _table(self, trial_id: str) -> pd.DataFrame | None:
        if trial_id not in self._tables:
            wanted = {"iteration"} | {f"{p}{k}" for p in _NOISE_PREFIX.values() for k in ("grad_sq", "trace_cov")}
            try:
                self._tables[trial_id] = pd.read_csv(metrics_path(self.trials / trial_id), usecols=lambda c: c in wanted)
            except (OSError, ValueError, pd.errors.EmptyDataError):
                self._tables[trial_id] = None
        return self._tables[trial_id]

    def has_table(self, trial_id: str) -> bool:
        """Whether the trial's metrics table is there and reads."""
        return self._table(trial_id) is not None

    def means(self, trial_id: str, iterations: float, variant: str, skip: int = 0) -> tuple[float, float] | None:
        """The trial's mean |G|^2 and mean tr(Sigma) (per example) over its updates up to
        `iterations`, as the trial averaged them for its own B_simple to a target (with `skip`,
        over those after the first `skip` updates only); None where it has no finite estimate of
        that variant there."""
        m = self._table(trial_id)
        g, t = (f"{_NOISE_PREFIX[variant]}{k}" for k in ("grad_sq", "trace_cov"))
        if m is None or g not in m or t not in m or "iteration" not in m:
            return None
        sub = m[(m["iteration"] > skip) & (m["iteration"] <= iterations)]
        gv, tv = sub[g].to_numpy(dtype=float), sub[t].to_numpy(dtype=float)
        ok = np.isfinite(gv) & np.isfinite(tv)
        return (float(gv[ok].mean()), float(tv[ok].mean())) if ok.any() else None


def _pooled_b_simple(rows: pd.DataFrame, best: pd.DataFrame, variant: str, histories: NoiseHistories,
                     n_bootstrap: int, rng: np.random.Generator) -> dict | None:
    """B_simple at this target pooled over seeds: per batch size, the ratio of the best-config
    seeds' mean tr(Sigma) to their mean |G|^2 (each seed's means over its updates up to the
    target, the same ratio of means that a trial's own B_simple is over its updates), then the
    mean over batch sizes. Unlike the mean of the trials' ratios it keeps a seed whose own |G|^2
    averages to zero or less (unresolved alone), and a ratio of means has no 1/x bias from one
    seed's noisy |G|^2. Seeds are pooled within a batch size only: runs at different B (and lr)
    see |G|^2 on different scales, and pooling across them would let the largest |G|^2 decide.
    ``by_batch`` keeps each batch size's value, ``log_slope`` the slope of log B_simple on log B
    across them; a batch size whose seeds' |G|^2 averages to zero or less is unresolved, left
    out of the mean and counted (``n_unresolved_batches``), so that the mean is then a low
    estimate. Interval: bootstrap over seeds within each batch size, each resample's mean over
    the batch sizes resolved in it, as the point estimate's. None where no trial recorded
    estimates, and where any of the point's trials has no metrics table (a pooled value over
    the seeds that kept theirs would be another estimate, unmarked)."""
    sel = _rows_of(rows, best[np.isfinite(best["median_iterations"])])
    sel = sel[sel["reached"].to_numpy(dtype=bool) & np.isfinite(sel["iterations"].to_numpy(dtype=float))]
    if not all(histories.has_table(str(t)) for t in sel["trial_id"]):
        return None
    per_b: dict[float, tuple[list[float], list[float]]] = {}
    for trial_id, b, iterations, nmb in zip(sel["trial_id"], sel["B"], sel["iterations"], sel["num_minibatches"].fillna(1)):
        m = histories.means(str(trial_id), float(iterations), variant)
        if m is not None:
            gs, ts = per_b.setdefault(float(b), ([], []))
            gs.append(m[0])
            ts.append(m[1] * float(nmb))  # per gradient -> per iteration: one gradient sees B/num_minibatches env steps
    if not per_b:
        return None
    batches = sorted(per_b)
    arrays = [(np.array(per_b[b][0]), np.array(per_b[b][1])) for b in batches]

    def ratios(g: np.ndarray, t: np.ndarray) -> np.ndarray:  # [..., seeds] -> [...]; inf where unresolved
        gm, tm = g.mean(-1), t.mean(-1)
        return np.where(gm > 0, tm / np.where(gm > 0, gm, 1.0), np.inf)

    by_b = np.array([float(ratios(g, t)) for g, t in arrays])
    ok = np.isfinite(by_b)
    b_iter = float(by_b[ok].mean()) if ok.any() else None
    ci = None
    if any(len(g) >= 2 for g, _ in arrays):  # one seed per batch size: nothing to resample
        boot = np.zeros((n_bootstrap, len(batches)))
        for j, (g, t) in enumerate(arrays):
            idx = rng.integers(0, len(g), size=(n_bootstrap, len(g)))
            boot[:, j] = ratios(g[idx], t[idx])
        # as the point estimate: each resample's mean over the batch sizes resolved in it (inf if none)
        finite = np.isfinite(boot)
        means = np.where(finite.any(1), np.where(finite, boot, 0.0).sum(1) / np.maximum(finite.sum(1), 1), np.inf)
        lo, hi = np.quantile(means, [0.025, 0.975], method="inverted_cdf")
        ci = [float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None]
    n_mb = float(np.median(sel["num_minibatches"].fillna(1).to_numpy(dtype=float)))  # one value per env in a study
    slope = None
    if ok.sum() >= 2 and np.all(by_b[ok] > 0):
        slope = float(np.polyfit(np.log(np.array(batches)[ok]), np.log(by_b[ok]), 1)[0])
    return {"b_simple": b_iter, "b_simple_per_gradient": b_iter / n_mb if b_iter is not None else None,
            "b_simple_ci": ci, "n_trials": int(sum(len(g) for g, _ in arrays)), "n_unresolved_batches": int((~ok).sum()),
            "by_batch": [{"B": b, "b_simple": float(v) if np.isfinite(v) else None, "n_trials": len(g)}
                         for b, v, (g, _) in zip(batches, by_b, arrays)],
            "log_slope": slope}


def _rows_of(rows: pd.DataFrame, configs: pd.DataFrame) -> pd.DataFrame:
    """The trials of `rows` that ran one of `configs` (rows of (B, lr_rule, lr))."""
    keys = set(zip(configs["B"], configs["lr_rule"], configs["lr"]))
    return rows[np.asarray([k in keys for k in zip(rows["B"], rows["lr_rule"], rows["lr"])], dtype=bool)]


def _optimizer_steps_per_iteration(rows: pd.DataFrame, reached: pd.DataFrame) -> float | None:
    """Optimizer steps per PPO iteration (epochs x minibatches) of the best configs' trials that
    reached the target; None when the sweep's records do not tell (older sweeps)."""
    sel = _rows_of(rows, reached)
    sel = sel[sel["reached"].to_numpy(dtype=bool)]
    ratio = (sel["optimizer_steps"] / sel["iterations"]).to_numpy(dtype=float)
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return float(np.median(ratio)) if ratio.size else None


def _ci(samples: np.ndarray, n_min: int = 2) -> list[float] | None:
    if samples.size < n_min:
        return None
    return [float(v) for v in np.percentile(samples, [2.5, 97.5])]


BEYOND_RANGE_FACTOR = 8.0  # B_crit above 8x the largest swept batch is extrapolation


def pareto_entries(
    table: pd.DataFrame,
    targets: dict[str, list[float]] | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    sweep_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """One entry per (env, target): best configs, fit, bootstrap CIs, B_simple and the ratio.

    ``targets`` (from sweep.json) makes sure a target no trial reported still gets an entry.
    A batch size with trials still pending stays out too (`pending_batch_sizes`), listed in
    ``batch_sizes_pending``. Adaptive-batch trials (lr_rule 'adaptive') stay out of the fixed-B fit; with ``sweep_dir``
    each fitted entry gets their S/S_min, E/E_min, product and predicted gamma ('adaptive').
    """
    keys: set[tuple[str, float]] = set()
    for env, ts in (targets or {}).items():
        keys.update((env, float(t)) for t in ts)
    keys.update((e, float(t)) for e, t in table[["env_id", "target"]].itertuples(index=False)
                if e is not None and pd.notna(t))
    done = _completed(table)
    adaptive = done[done["lr_rule"] == "adaptive"]
    pending = pending_batch_sizes(table)
    done = _settled(done, pending)
    histories = NoiseHistories(sweep_dir) if sweep_dir is not None else None
    entries = []
    for env_id, target in sorted(keys):
        # each (env, target) draws its own resamples, so its intervals do not depend on which
        # other envs the analysis holds
        rng = np.random.default_rng([seed, zlib.crc32(f"{env_id}|{target:.9g}".encode())])
        rows = done[(done["env_id"] == env_id) & (done["target"] == target)]
        entry: dict[str, Any] = {
            "env_id": env_id, "target": target, "status": "ok",
            "s_min": None, "e_min": None, "b_crit": None,
            "s_min_ci": None, "e_min_ci": None, "b_crit_ci": None, "b_crit_ci_unbounded": None,
            "b_simple": None, "b_simple_per_gradient": None, "ratio": None,
            "n_batch_sizes": 0, "batch_sizes": [], "steps": [], "env_steps": [],
            "batch_sizes_swept": sorted(float(b) for b in rows["B"].unique()),
            # the swept batch sizes: those with finished trials; the pending ones stay out until they finish
            "batch_sizes_pending": pending.loc[pending["env_id"] == env_id, "B"].astype(float).tolist(),
            "best_configs": [], "residual_rms": None, "n_bootstrap_ok": 0, "n_b_simple_trials": 0,
        }
        best = _best_configs(rows)
        reached = best[np.isfinite(best["median_iterations"])]
        entry["best_configs"] = best.to_dict(orient="records")
        entry["n_batch_sizes"] = int(len(reached))
        entry["batch_sizes"] = reached["B"].tolist()
        entry["steps"] = reached["median_iterations"].tolist()
        entry["env_steps"] = (reached["B"] * reached["median_iterations"]).tolist()
        variants: dict[str, dict[str, Any]] = {}
        for variant in NOISE_VARIANTS:
            b_grad, b_iter, n_b, b_trials, n_unresolved = _b_simple(rows, best, variant)
            # the other variants draw from their own streams, so the combined one's and the fit's
            # intervals stay those of an analysis without them
            vrng = rng if variant == "combined" else np.random.default_rng(
                [seed, zlib.crc32(f"{env_id}|{target:.9g}|{variant}".encode())])
            if n_b or n_unresolved:  # interval of the mean over the trials (seeds x best-config batch sizes), by bootstrap
                variants[variant] = {"b_simple": b_iter, "b_simple_per_gradient": b_grad, "n_trials": n_b,
                                     "n_unresolved": n_unresolved, "b_simple_ci": _ci(
                    np.array([vrng.choice(b_trials, len(b_trials)).mean() for _ in range(n_bootstrap)]) if n_b >= 2 else np.array([]))}
                pooled = histories and _pooled_b_simple(rows, best, variant, histories, n_bootstrap, np.random.default_rng(
                    [seed, zlib.crc32(f"{env_id}|{target:.9g}|{variant}|pooled".encode())]))
                if pooled:
                    variants[variant]["pooled"] = pooled
        combined = variants.get("combined", {})
        entry.update(b_simple_per_gradient=combined.get("b_simple_per_gradient"), b_simple=combined.get("b_simple"),
                     n_b_simple_trials=combined.get("n_trials", 0), n_b_simple_unresolved=combined.get("n_unresolved", 0),
                     b_simple_ci=combined.get("b_simple_ci"), b_simple_variants=variants)
        if len(reached) < 2:
            entry["status"] = "too_few_batch_sizes"
            entries.append(entry)
            continue
        try:
            fit = fit_pareto(reached["B"], reached["median_iterations"])
            boot = _bootstrap_fits(rows, n_bootstrap, rng)
        except ValueError as err:  # e.g. a zero iteration count; report it, keep going
            entry.update(status="fit_failed", error=str(err))
            entries.append(entry)
            continue
        # B_crit far beyond the largest batch swept means steps kept halving with B over the
        # whole range (S_min pinned near 0): the data only bound B_crit from below. Flag it.
        if fit.b_crit > BEYOND_RANGE_FACTOR * float(reached["B"].max()):
            entry["status"] = "b_crit_above_range"
            entry["b_crit_lower_bound"] = float(reached["B"].max())
        # Per optimizer step (PPO takes epochs x minibatches steps per iteration; the paper's
        # theory one): the same frontier with S counted in optimizer steps.
        b_crit_ci = _ci(boot[:, 2])
        per_iter = _optimizer_steps_per_iteration(rows, reached)
        if per_iter:  # the same resamples in other units: b_crit_ci_unbounded holds for both
            entry.update(optimizer_steps_per_iteration=per_iter, s_min_optimizer_steps=fit.s_min * per_iter,
                         b_crit_per_optimizer_step=fit.b_crit / per_iter,
                         b_crit_per_optimizer_step_ci=[x / per_iter for x in b_crit_ci] if b_crit_ci else None)
        entry.update(
            s_min=fit.s_min, e_min=fit.e_min, b_crit=fit.b_crit, residual_rms=fit.residual_rms,
            s_min_ci=_ci(boot[:, 0]), e_min_ci=_ci(boot[:, 1]), b_crit_ci=b_crit_ci,
            # resamples whose steps kept halving with B put the upper end far beyond the batches
            # swept: the data give B_crit no upper bound (the end is kept as drawn, and flagged);
            # None where there is no interval
            b_crit_ci_unbounded=b_crit_ci[1] > BEYOND_RANGE_FACTOR * float(reached["B"].max()) if b_crit_ci else None,
            n_bootstrap_ok=int(len(boot)),
            ratio=fit.b_crit / b_iter if (b_iter := variants.get("combined", {}).get("b_simple")) else None,
        )
        for v in variants.values():  # as the top-level ratio: of the fit, a lower bound's included
            v["ratio"] = fit.b_crit / v["b_simple"] if v["b_simple"] else None
            if v.get("pooled"):
                v["pooled"]["ratio"] = fit.b_crit / v["pooled"]["b_simple"] if v["pooled"]["b_simple"] else None
        runs = adaptive[(adaptive["env_id"] == env_id) & (adaptive["target"] == target)]
        if sweep_dir is not None and len(runs) and entry["status"] == "ok":  # beside a frontier, not a lower bound
            from rlscale.adaptive import adaptive_point, summarise

            points = [adaptive_point(Path(sweep_dir) / "trials" / tid, target, fit.s_min, fit.e_min) for tid in runs["trial_id"]]
            entry["adaptive"] = {**summarise(points), "runs": points}
        entries.append(entry)
    return entries


ESTIMATORS = ("mean", "pooled")  # B_simple over a point's trials: mean of their ratios, or one ratio of means


def _variant_part(entry: dict, variant: str, estimator: str) -> dict:
    """An entry's record of one noise-scale variant under one estimator ('mean': the variant's
    part of b_simple_variants; 'pooled': its ``pooled`` record); {} when it has none."""
    part = (entry.get("b_simple_variants") or {}).get(variant) or {}
    return (part.get("pooled") or {}) if estimator == "pooled" else part


def variant_b_simple(entry: dict, variant: str = "combined", estimator: str = "mean") -> float | None:
    """An entry's B_simple (env steps per iteration) of one noise-scale variant and estimator
    ('mean' of the trials' ratios, the study's primary one; 'pooled', `_pooled_b_simple`); None
    when it has none or it is not positive (a mean two-batch estimate can be)."""
    if estimator != "pooled" and variant == "combined":
        b = entry.get("b_simple")
    else:
        b = _variant_part(entry, variant, estimator).get("b_simple")
    return float(b) if b is not None and np.isfinite(b) and b > 0 else None


def _has_estimate(entry: dict, variant: str, estimator: str) -> bool:
    """Whether the entry's best-config trials measured that variant at all (resolved or not)."""
    return bool(_variant_part(entry, variant, estimator))


def _n_unresolved(entry: dict, variant: str, estimator: str = "mean") -> int:
    """The best-config trials (mean estimator) or batch sizes (pooled) left out of an entry's
    B_simple of one variant as unresolved."""
    if estimator != "pooled" and variant == "combined":
        return int(entry.get("n_b_simple_unresolved") or 0)
    key = "n_unresolved_batches" if estimator == "pooled" else "n_unresolved"
    return int(_variant_part(entry, variant, estimator).get(key) or 0)


def claim_points(entries: list[dict], variant: str = "combined", estimator: str = "mean") -> list[dict]:
    """The entries the claim compares: a B_crit fitted inside the swept range and that B_simple."""
    return [e for e in entries if e["status"] == "ok" and e.get("b_crit") and variant_b_simple(e, variant, estimator)]


def noise_scale_claim(entries: list[dict], within: float = 3.0, variant: str = "combined", estimator: str = "mean") -> dict:
    """The paper's claim across (env, target) points: B_crit ~ B_simple, for one noise-scale
    variant and estimator (`variant_b_simple`). Over the points with a B_crit fitted inside the
    swept range and that B_simple: the r^2 of log B_crit on log B_simple (least squares), the
    slope, and the fraction of points whose ratio B_crit / B_simple lies in [1/within, within].
    Points whose B_crit is only a lower bound are counted apart (``n_lower_bounds``: those with
    that B_simple, the ones the comparison would hold); ``n_points_with_unresolved`` counts the
    points whose B_simple left unresolved trials out (the mean estimator) or unresolved batch
    sizes (the pooled one, which keeps the seeds unresolved alone), ``n_unresolved_points`` the fitted points left out because their B_simple is
    unresolved as a whole."""
    pts = claim_points(entries, variant, estimator)
    out: dict[str, Any] = {"variant": variant, "estimator": estimator, "n_points": len(pts),
                           "n_envs": len({e["env_id"] for e in pts}), "within_factor": within,
                           "n_lower_bounds": sum(e["status"] == "b_crit_above_range" and bool(variant_b_simple(e, variant, estimator))
                                                 for e in entries),
                           # points whose B_simple leaves unresolved trials (mean) or batch sizes (pooled) out:
                           # a low B_simple, a high ratio
                           "n_points_with_unresolved": sum(bool(_n_unresolved(e, variant, estimator)) for e in pts),
                           "n_unresolved_points": sum(e["status"] == "ok" and bool(e.get("b_crit")) and _has_estimate(e, variant, estimator)
                                                      and not variant_b_simple(e, variant, estimator) for e in entries),
                           "r2_log": None, "slope_log": None, "fraction_within": None}
    if not pts:
        return out
    b_simple = np.array([variant_b_simple(e, variant, estimator) for e in pts], dtype=float)
    ratios = np.array([e["b_crit"] for e in pts], dtype=float) / b_simple
    out["fraction_within"] = float(np.mean((ratios >= 1 / within) & (ratios <= within)))
    out["median_ratio"] = float(np.median(ratios))
    if len(pts) >= 3:
        x, y = np.log(b_simple), np.log([e["b_crit"] for e in pts])
        if np.ptp(x) > 0:
            slope, icpt = np.polyfit(x, y, 1)
            resid = y - (slope * x + icpt)
            out["r2_log"] = float(1 - resid.var() / y.var()) if y.var() > 0 else None
            out["slope_log"] = float(slope)
    return out


def claims_by_variant(entries: list[dict], within: float = 3.0, estimator: str = "mean") -> dict[str, dict]:
    """The claim for every noise-scale variant some entry records, in NOISE_VARIANTS order."""
    present = [v for v in NOISE_VARIANTS if any(variant_b_simple(e, v, estimator) for e in entries)]
    return {v: noise_scale_claim(entries, within, v, estimator) for v in present}


# ----------------------------------------------------------------------------------------
# Diminishing returns (Golmant et al. 2018)
# ----------------------------------------------------------------------------------------


def _b_diminishing(batch_sizes: np.ndarray, medians: np.ndarray) -> tuple[float | None, np.ndarray]:
    """First B whose step to the next larger swept B gives < 20% fewer steps per doubling.

    Per-doubling reduction between consecutive swept sizes B_i < B_j is
    ``1 - (S_j / S_i) ** (1 / log2(B_j / B_i))`` (perfect scaling: 0.5). If S_j is inf (the
    larger batch no longer reaches the target) the reduction is -inf, i.e. diminishing.
    Pairs whose smaller B did not reach are skipped. Returns (B or None, reductions [n_B-1]).
    """
    reductions = np.full(max(len(batch_sizes) - 1, 0), np.nan)
    found = None
    for i in range(len(batch_sizes) - 1):
        s_i, s_j = medians[i], medians[i + 1]
        if not np.isfinite(s_i):
            continue
        doublings = np.log2(batch_sizes[i + 1] / batch_sizes[i])
        reductions[i] = 1.0 - (s_j / s_i) ** (1.0 / doublings) if np.isfinite(s_j) else -np.inf
        if found is None and reductions[i] < DIMINISHING_REDUCTION:
            found = float(batch_sizes[i])
    return found, reductions


def diminishing_returns(table: pd.DataFrame) -> pd.DataFrame:
    """Golmant et al. view: median iterations-to-target against B per (env, target, lr_rule).

    Within one lr_rule the best lr per B is used (a rule may be swept at several base lrs).
    ``b_diminishing`` is the smallest swept batch size B such that moving to the next larger
    swept B reduces the median iterations by less than 20% per doubling of B (perfect scaling
    would halve them, a 50% reduction); a larger B that no longer reaches the target counts as
    no reduction. It is NaN when no such B is seen. ``reduction_per_doubling`` is given on the
    row of the smaller B of each consecutive pair.
    """
    out = []
    # a run whose B changes has no place on this axis; a cell with trials pending waits for them
    done = _settled(_completed(table), pending_batch_sizes(table)).dropna(subset=["target"])
    for (env_id, target, rule), rows in done.groupby(["env_id", "target", "lr_rule"], sort=True):
        best = _best_configs(rows)
        sizes = best["B"].to_numpy(dtype=float)
        medians = best["median_iterations"].to_numpy(dtype=float)
        b_dim, reductions = _b_diminishing(sizes, medians)
        best = best.assign(env_id=env_id, target=target, lr_rule=rule,
                           reduction_per_doubling=np.append(reductions, np.nan),
                           b_diminishing=b_dim if b_dim is not None else np.nan)
        out.append(best)
    columns = ["env_id", "target", "lr_rule", "B", "lr", "median_iterations", "n_seeds",
               "n_reached", "reduction_per_doubling", "b_diminishing"]
    if not out:
        return pd.DataFrame(columns=columns)
    return pd.concat(out, ignore_index=True)[columns]


def _diminishing_summary(dim: pd.DataFrame) -> list[dict]:
    summary = []
    for (env_id, target, rule), rows in dim.groupby(["env_id", "target", "lr_rule"], sort=True):
        summary.append({
            "env_id": env_id, "target": float(target), "lr_rule": rule,
            "batch_sizes": rows["B"].tolist(),
            "median_iterations": rows["median_iterations"].tolist(),
            "lr": rows["lr"].tolist(),
            "b_diminishing": rows["b_diminishing"].iloc[0],
        })
    return summary


# ----------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------


def pareto_table(entries: list[dict]) -> pd.DataFrame:
    """Flat per-(env, target) table of the fits, CIs split into lo/hi columns."""
    scalars = ["env_id", "target", "status", "n_batch_sizes", "s_min", "e_min", "b_crit",
               "b_simple", "b_simple_per_gradient", "ratio", "residual_rms", "n_bootstrap_ok"]
    counts = ["n_b_simple_trials", "n_b_simple_unresolved"]
    per_step = ["optimizer_steps_per_iteration", "b_crit_per_optimizer_step"]
    adaptive = ["s_over_s_min", "e_over_e_min", "measured_product", "predicted_gamma"]
    columns = scalars + counts + [f"{n}_{end}" for n in ["s_min", "e_min", "b_crit"] for end in ["lo", "hi"]] + ["b_crit_ci_unbounded"]
    columns += per_step
    columns += ["adaptive_n_reached", "adaptive_n_without_metrics"] + [f"adaptive_{k}" for k in adaptive]
    columns += [f"{k}_{v}" for v in NOISE_VARIANTS[1:] for k in ("b_simple", "ratio")]
    columns += [f"{k}_pooled_{v}" for v in NOISE_VARIANTS for k in ("b_simple", "ratio")]
    rows = []
    for e in entries:
        row = {k: e[k] for k in scalars} | {k: e.get(k) for k in per_step + counts + ["b_crit_ci_unbounded"]}
        for v, part in (e.get("b_simple_variants") or {}).items():
            if v != "combined":
                row[f"b_simple_{v}"], row[f"ratio_{v}"] = part["b_simple"], part.get("ratio")
            if part.get("pooled"):
                row[f"b_simple_pooled_{v}"], row[f"ratio_pooled_{v}"] = part["pooled"]["b_simple"], part["pooled"].get("ratio")
        if e.get("adaptive"):  # medians over the adaptive runs that reached the target
            row["adaptive_n_reached"] = e["adaptive"]["n_reached"]
            row["adaptive_n_without_metrics"] = e["adaptive"].get("n_without_metrics", 0)
            row.update({f"adaptive_{k}": e["adaptive"][k]["median"] for k in adaptive})
        for name in ["s_min", "e_min", "b_crit"]:
            ci = e[f"{name}_ci"] or [None, None]
            row[f"{name}_lo"], row[f"{name}_hi"] = ci
        row["batch_sizes"] = json.dumps(to_jsonable(e["batch_sizes"]))
        row["steps"] = json.dumps(to_jsonable(e["steps"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns + ["batch_sizes", "steps"])


def trials_without_metrics(sweep_dir: str | os.PathLike, table: pd.DataFrame) -> dict[str, int]:
    """Per env, the number of completed trials whose directory holds no metrics table
    (metrics.csv or metrics.csv.gz): their records give steps to targets and their own
    B_simple, but a point with any of them gets no pooled B_simple, an adaptive run among them
    gives S / S_min alone, and the burn-in variants and curves leave them out."""
    trials = table[table["status"] == "completed"].drop_duplicates("trial_id")
    missing = [env for tid, env in zip(trials["trial_id"], trials["env_id"])
               if not metrics_path(Path(sweep_dir) / "trials" / str(tid)).is_file()]
    return {str(env): missing.count(env) for env in sorted(set(missing), key=str)}


def failed_trials(sweep_dir: str | os.PathLike) -> list[dict]:
    """Trials with status "failed", with their error, for the report."""
    keys = ["trial_id", "env_id", "seed", "env_steps_per_iteration", "num_minibatches",
            "lr_rule", "lr", "status", "error"]
    return [{k: t.get(k) for k in keys} for t in load_trials(sweep_dir) if t.get("status") == "failed"]


def analyze(
    sweep_dir: str | os.PathLike,
    wandb_mode: str = "offline",
    make_report: bool = True,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """Analyse a sweep directory and write results into it.

    Writes ``analysis.json``, ``steps_to_target.csv``, ``pareto_fits.csv``,
    ``diminishing_returns.csv`` and, with ``make_report``, ``figures/*.png`` and
    ``report.html``. Logs to W&B unless ``wandb_mode == "disabled"``. Returns the analysis
    dict (as written to analysis.json).

    Raises ``ConfigError`` before writing anything when ``sweep_dir`` does not exist or holds
    no sweep (see :func:`check_sweep_dir`).
    """
    check_sweep_dir(sweep_dir)
    sweep_dir = Path(sweep_dir)
    meta = load_sweep_meta(sweep_dir)
    table = steps_to_target_table(sweep_dir)
    entries = pareto_entries(table, meta["targets"], n_bootstrap=n_bootstrap, seed=seed, sweep_dir=sweep_dir)
    dim = diminishing_returns(table)
    trials = table.drop_duplicates("trial_id")
    statuses = trials["status"].value_counts().to_dict()
    if trials["pruned"].any():  # completed trials among them, stopped early by a pruned population
        statuses["pruned"] = int(trials["pruned"].sum())
    analysis = to_jsonable({
        "sweep_name": meta["name"],
        "units": UNITS,
        "trial_counts": statuses,
        "entries": entries,
        "noise_scale_claim": noise_scale_claim(entries),
        "noise_scale_claim_by_variant": claims_by_variant(entries),
        # the same claim with each point's B_simple pooled over its trials (a robustness check)
        "noise_scale_claim_pooled_by_variant": claims_by_variant(entries, estimator="pooled"),
        "references": meta.get("references", {}),
        "lr_at_grid_edge": [{"env_id": e["env_id"], "target": e["target"], "B": c["B"], "lr": c["lr"]}
                            for e in entries for c in e["best_configs"] if c.get("lr_at_grid_edge")],
        "failed_trials": failed_trials(sweep_dir),
        "trials_without_metrics": trials_without_metrics(sweep_dir, table),
        "pending_batch_sizes": pending_batch_sizes(table).astype({"B": float}).to_dict(orient="records"),
        "diminishing_returns": _diminishing_summary(dim),
        "diminishing_reduction_threshold": DIMINISHING_REDUCTION,
        "n_bootstrap": n_bootstrap,
    })

    # Data first, so a plotting problem never loses the numbers.
    atomic_write_text(sweep_dir / "steps_to_target.csv", table.to_csv(index=False))
    atomic_write_text(sweep_dir / "pareto_fits.csv", pareto_table(analysis["entries"]).to_csv(index=False))
    atomic_write_text(sweep_dir / "diminishing_returns.csv", dim.to_csv(index=False))
    atomic_write_json(sweep_dir / "analysis.json", analysis)

    if make_report:
        from rlscale import report  # lazy: matplotlib only when a report is wanted

        paths = report.make_report(sweep_dir, analysis)
        analysis["figures"] = [str(Path(p).relative_to(sweep_dir)) for p in paths["figures"]]
        analysis["report"] = str(Path(paths["report"]).relative_to(sweep_dir))
        atomic_write_json(sweep_dir / "analysis.json", analysis)

    if wandb_mode != "disabled":
        from rlscale import report

        try:
            report.log_to_wandb(sweep_dir, analysis, mode=wandb_mode)
        except Exception as err:  # tracking must not cost us the analysis already on disk
            warnings.warn(f"W&B logging failed: {err}", stacklevel=2)
    return analysis
