"""An adaptive-batch run (``ppo.batch_schedule=noise``) set beside the fixed-batch frontier.

McCandlish et al. (2018, App. D): with a noise scale b(s) that changes along training, a run at
batch B(s) takes dS = ds (1 + b/B) steps and dE = B dS examples per unit of ideal progress ds
(s: the steps of an infinite-batch run), so S_min = ∫ds and E_min = ∫b ds. A batch that tracks
the noise scale reaches the frontier (S/S_min - 1)(E/E_min - 1) = gamma with

    gamma = (∫ sqrt(b) ds)^2 / (S_min E_min)  <=  1      (Cauchy-Schwarz; 1 for a constant b),

while every fixed batch lies on (S/S_min - 1)(E/E_min - 1) = 1. From a run's own history
(b_t, B_t per iteration t) each iteration is ds_t = 1 / (1 + b_t / B_t) of ideal progress, which
gives the gamma predicted for that run. The measured one is the product (S/S_min - 1)(E/E_min - 1)
of the run's steps and env steps to a target, with S_min and E_min fitted from the fixed-batch
runs of the same environment and target (``rlscale analyze``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from rlscale.errors import ConfigError
from rlscale.tracking import metrics_path


def predicted_gamma(b_simple: np.ndarray, batch: np.ndarray) -> float:
    """gamma = (Σ sqrt(b) ds)^2 / (Σ ds · Σ b ds), ds_t = 1 / (1 + b_t / B_t), over the iterations
    whose noise scale b_t is defined (positive, finite); nan when none is. b and B in the same
    units (env steps per iteration)."""
    b, B = np.asarray(b_simple, dtype=float), np.asarray(batch, dtype=float)
    ok = np.isfinite(b) & (b > 0)
    if not ok.any():
        return math.nan
    b, B = b[ok], B[ok]
    ds = 1.0 / (1.0 + b / B)
    return float(np.sum(np.sqrt(b) * ds) ** 2 / (np.sum(ds) * np.sum(b * ds)))


def adaptive_point(run_dir: Path, target: float, s_min: float, e_min: float) -> dict:
    """Steps and env steps of one adaptive run to `target`, their ratios to the frontier's S_min
    and E_min, the measured product and the gamma predicted from the run's own history up to
    the target (b_t = its B_simple EMA in env steps per iteration, B_t the batch it used)."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"'{run_dir}' is not a finished rlscale run (summary.json missing)") from None
    rec = summary["targets"].get(f"{float(target)}")
    out = {"run_dir": str(run_dir), "seed": summary["seed"], "target": float(target), "reached": bool(rec and rec["reached"])}
    if not out["reached"]:
        return out
    S = int(rec["iterations"])
    if not metrics_path(run_dir).is_file():  # records without their table (kept before tables were packed): S alone
        out.update(iterations=S, env_steps=None, s_over_s_min=S / s_min, e_over_e_min=None, measured_product=None,
                   predicted_gamma=None, metrics_missing=True)
        return out
    metrics = pd.read_csv(metrics_path(run_dir))
    upto = metrics[metrics["iteration"] <= S]
    E = int(upto["env_steps_per_iteration"].sum())  # env steps trained on, as E = B S for a fixed batch
    b = upto["noise/b_simple_ema"].to_numpy(dtype=float) * summary["num_minibatches"]  # per iteration
    ratio_s, ratio_e = S / s_min, E / e_min
    out.update(iterations=S, env_steps=E, s_over_s_min=ratio_s, e_over_e_min=ratio_e, metrics_missing=False,
               measured_product=(ratio_s - 1) * (ratio_e - 1),
               predicted_gamma=predicted_gamma(b, upto["env_steps_per_iteration"].to_numpy(dtype=float)))
    return out


def median_ci(values) -> dict:
    """Median of `values` with a 95% percentile-bootstrap interval (None below 2 values)."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return {"median": float(v[0]) if len(v) else None, "ci": None, "n": int(len(v))}
    ci = bootstrap((v,), np.median, n_resamples=2000, method="percentile", random_state=0).confidence_interval
    return {"median": float(np.median(v)), "ci": [float(ci.low), float(ci.high)], "n": int(len(v))}


def summarise(points: list[dict]) -> dict:
    """The adaptive runs at one target: counts, and per ratio the median over the runs that
    reached it with its bootstrap interval (a run without its metrics table gives S / S_min
    only: n_without_metrics)."""
    reached = [p for p in points if p["reached"]]
    out: dict = {"n_runs": len(points), "n_reached": len(reached),
                 "n_without_metrics": sum(bool(p.get("metrics_missing")) for p in reached)}
    for k in ("s_over_s_min", "e_over_e_min", "measured_product", "predicted_gamma"):
        out[k] = median_ci([p[k] for p in reached])
    return out
