"""How the B_simple a run measures up to a target depends on its batch size and learning rate.

    python scripts/noise_vs_lr.py docs/results/study/ppo [--envs ENV_ID ...] [--variants combined policy ...]

Every grid trial of the sweep that reached a target recorded its own B_simple up to it
(per gradient; `inf` where unresolved). Per (env, target, variant), the cells are the (B, lr)
pairs with at least --min-seeds seeds that reached; each cell's value is the median over those
seeds (an unresolved seed counts as +inf, so a cell with half or more unresolved drops out).
The fit is least squares of log B_simple on log B and log lr together, so each slope is the
other held fixed:

    log B_simple = a + b log B + c log lr

b near 0 and c near 0 mean the noise scale is a property of the task at that target, as the
paper's comparison assumes; c far from 0 means the measured value depends on the learning rate of
the run that measured it (the best lr grows with B, so a point's B_simple then depends on which
runs it averages). Intervals: 95%, from the least-squares covariance (t quantile).

With --parts, a second table splits B_simple = tr(Sigma) / |G|^2 into its two factors: per trial
that reached, its mean |G|^2 and mean tr(Sigma) over its updates up to the target (from its
metrics.csv or metrics.csv.gz, `rlscale.analysis.NoiseHistories`), each fitted on log B and log lr the same way
(trials whose mean |G|^2 is not positive left out of the |G|^2 fit).

With --skip-updates N, every trial's B_simple (and, with --parts, its two factors) is taken over
its updates after the first N only, from its metrics.csv: how much of the dependence comes from
the first updates of a run (at a large lr, |G|^2 can be orders of magnitude larger there than
later, and a ratio of means over the updates is then set by them).

With --claim (needs `rlscale analyze` first), the paper's claim recomputed from the sweep's
analysis.json with each point's B_simple taken as declared (the mean over the best-lr trials of
its batch sizes that reached the target, unresolved trials left out) but from each trial's
updates after the first --skip-updates: a sensitivity check beside the declared claim.

With --plot PNG, a figure of the cells: one panel per (env, target), each batch size's cells as
a line of B_simple against lr on log axes (first variant of --variants).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

if TYPE_CHECKING:
    from rlscale.analysis import NoiseHistories

COLUMNS = {"combined": "b_simple_to_target", "adam": "b_simple_adam_to_target",
           "policy": "b_simple_policy_to_target", "value": "b_simple_value_to_target"}


def trial_values(histories: NoiseHistories, table: pd.DataFrame, variant: str, skip: int) -> pd.DataFrame:
    """Per trial that reached: B, lr and its B_simple to the target, as recorded (skip 0) or over
    its updates after the first `skip` (from metrics.csv; inf where its |G|^2 averages to zero
    or less, NaN where it has no estimate)."""
    if not skip:
        return table[["B", "lr"]].assign(b_simple=table[COLUMNS[variant]].to_numpy(dtype=float))
    values = []
    for trial_id, iterations in zip(table["trial_id"], table["iterations"]):
        m = histories.means(str(trial_id), float(iterations), variant, skip=skip)
        values.append(np.nan if m is None else (m[1] / m[0] if m[0] > 0 else np.inf))
    return table[["B", "lr"]].assign(b_simple=values)


def cells(values: pd.DataFrame, min_seeds: int) -> pd.DataFrame:
    """(B, lr, median B_simple over the seeds that reached, seeds) per cell with enough seeds and a
    finite, positive median; `values`: B, lr, b_simple per trial (`trial_values`)."""
    rows = values[values["b_simple"].notna()]
    out = rows.groupby(["B", "lr"])["b_simple"].agg(["median", "size"]).reset_index()
    out = out[(out["size"] >= min_seeds) & np.isfinite(out["median"]) & (out["median"] > 0)]
    return out.rename(columns={"median": "b_simple", "size": "seeds"})


def fit(c: pd.DataFrame) -> dict | None:
    """Slopes of log B_simple on log B and log lr with 95% intervals and r^2; None when the cells
    cannot identify both slopes (fewer than 4, or B or lr constant)."""
    if len(c) < 4 or c["B"].nunique() < 2 or c["lr"].nunique() < 2:
        return None
    X = np.c_[np.ones(len(c)), np.log(c["B"].to_numpy(float)), np.log(c["lr"].to_numpy(float))]
    y = np.log(c["b_simple"].to_numpy(float))
    if np.linalg.matrix_rank(X) < 3:  # log B and log lr move together: the slopes are not apart
        return None
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    dof = len(y) - 3
    sigma2 = float(resid @ resid) / dof if dof > 0 else float("nan")
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(X.T @ X))) if dof > 0 else np.full(3, np.nan)
    q = float(stats.t.ppf(0.975, dof)) if dof > 0 else float("nan")
    ss = float(((y - y.mean()) ** 2).sum())
    return {"cells": len(c), "slope_B": float(coef[1]), "slope_B_ci": [float(coef[1] - q * se[1]), float(coef[1] + q * se[1])],
            "slope_lr": float(coef[2]), "slope_lr_ci": [float(coef[2] - q * se[2]), float(coef[2] + q * se[2])],
            "r2": 1 - float(resid @ resid) / ss if ss > 0 else None}


def fit_logs(B: np.ndarray, lr: np.ndarray, y: np.ndarray) -> dict | None:
    """`fit` on raw points: log y on log B and log lr, over the points with y > 0."""
    ok = np.isfinite(y) & (y > 0)
    return fit(pd.DataFrame({"B": B[ok], "lr": lr[ok], "b_simple": y[ok]}))


def part_means(histories: NoiseHistories, rows: pd.DataFrame, variant: str, skip: int = 0) -> pd.DataFrame:
    """Per trial that reached: B, lr and its mean |G|^2 and tr(Sigma) up to the target (after its
    first `skip` updates)."""
    out = []
    for trial_id, b, lr, iterations in zip(rows["trial_id"], rows["B"], rows["lr"], rows["iterations"]):
        m = histories.means(str(trial_id), float(iterations), variant, skip=skip)
        if m is not None:
            out.append({"B": float(b), "lr": float(lr), "grad_sq": m[0], "trace_cov": m[1]})
    return pd.DataFrame(out, columns=["B", "lr", "grad_sq", "trace_cov"])


def plot(histories: NoiseHistories, table: pd.DataFrame, variant: str, min_seeds: int, skip: int, path: Path) -> None:
    """One panel per (env, target): each batch size's cells, B_simple against lr, log-log."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    envs = sorted(table["env_id"].unique())
    ncols = max(table.groupby("env_id")["target"].nunique().max(), 1)
    fig = Figure(figsize=(3.2 * ncols, 2.6 * len(envs)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(envs), ncols, squeeze=False)
    for r, env in enumerate(envs):
        targets = sorted(table.loc[table["env_id"] == env, "target"].unique())
        for k in range(ncols):
            ax = axes[r][k]
            if k >= len(targets):
                ax.set_axis_off()
                continue
            c = cells(trial_values(histories, table[(table["env_id"] == env) & (table["target"] == targets[k])], variant, skip), min_seeds)
            batches = sorted(c["B"].unique())
            cmap = colormaps["viridis"]
            for j, b in enumerate(batches):
                cb = c[c["B"] == b].sort_values("lr")
                ax.plot(cb["lr"], cb["b_simple"], "o-", ms=3, lw=1, color=cmap(j / max(len(batches) - 1, 1)), label=f"B={b:g}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels collide
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{env} {targets[k]:g}", fontsize=8)
            ax.tick_params(labelsize=7)
            if k == 0:
                ax.set_ylabel("B_simple to target\n(per gradient)", fontsize=8)
            if r == len(envs) - 1:
                ax.set_xlabel("learning rate", fontsize=8)
            if batches:
                ax.legend(fontsize=6, ncols=2)
    after = f", after the first {skip} updates" if skip else ""
    fig.suptitle(f"B_simple ({variant}) to the target{after}: median over the seeds that reached, per (B, lr) cell", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _slope(x: float, ci: list[float]) -> str:
    s = lambda v: f"{round(v, 2) + 0.0:+.2f}"  # noqa: E731  (+ 0.0: no "-0.00")
    return f"{s(x)} [{s(ci[0])}, {s(ci[1])}]" if np.all(np.isfinite(ci)) else s(x)


def entries_after(histories: NoiseHistories, entries: list[dict], table: pd.DataFrame, skip: int) -> list[dict]:
    """The analysis entries with every variant's B_simple (and ratio) recomputed as the analysis
    does (mean over the best-lr trials that reached, unresolved ones left out) from each trial's
    updates after the first `skip`."""
    from rlscale.analysis import _rows_of

    out = []
    for e in entries:
        e = copy.deepcopy(e)
        best = pd.DataFrame(e["best_configs"])
        rows = table[(table["env_id"] == e["env_id"]) & (table["target"] == e["target"])]
        sel = _rows_of(rows, best[np.isfinite(best["median_iterations"].astype(float))]) if len(best) else rows.iloc[:0]
        for v, part in (e.get("b_simple_variants") or {}).items():
            vals = []
            for trial_id, iterations, nmb in zip(sel["trial_id"], sel["iterations"], sel["num_minibatches"].fillna(1)):
                m = histories.means(str(trial_id), float(iterations), v, skip=skip)
                if m is not None and m[0] > 0:
                    vals.append(m[1] / m[0] * float(nmb))
            b = float(np.mean(vals)) if vals else None
            part.update(b_simple=b, ratio=e["b_crit"] / b if b and e.get("b_crit") else None)
            if v == "combined":
                e["b_simple"], e["ratio"] = b, part["ratio"]
        out.append(e)
    return out


def print_claims(histories: NoiseHistories, table: pd.DataFrame, skip: int) -> None:
    """The declared claim per variant (the sweep's analysis.json) beside the one from `entries_after`."""
    import json

    from rlscale.analysis import claims_by_variant

    a = json.loads((histories.sweep_dir / "analysis.json").read_text())
    entries = [e for e in a["entries"] if e["env_id"] in set(table["env_id"])]
    declared, after = claims_by_variant(entries), claims_by_variant(entries_after(histories, entries, table, skip))
    print("\n| variant | B_simple from | points | within x3 | median ratio | r2 (slope) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for v in declared:
        for label, c in (("all updates (declared)", declared[v]), (f"updates after the first {skip}", after.get(v))):
            if c and c["fraction_within"] is not None:
                r2 = f"{c['r2_log']:.2f} ({c['slope_log']:.2f})" if c["r2_log"] is not None else "-"
                print(f"| {v} | {label} | {c['n_points']} | {round(c['fraction_within'] * c['n_points'])} of {c['n_points']} "
                      f"| {c['median_ratio']:.3g} | {r2} |")


def _row(env: str, target: float, v: str, label: str, f: dict) -> str:
    r2 = f"{f['r2']:.2f}" if f["r2"] is not None else "-"
    return (f"| {env} | {target:g} | {v} |{label} {f['cells']} | {_slope(f['slope_B'], f['slope_B_ci'])} "
            f"| {_slope(f['slope_lr'], f['slope_lr_ci'])} | {r2} |")


def print_slopes(histories: NoiseHistories, table: pd.DataFrame, variants: list[str], min_seeds: int, skip: int) -> None:
    print("| env | target | variant | (B, lr) cells | slope on log B [95% CI] | slope on log lr [95% CI] | r2 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (env, target), rows in table.groupby(["env_id", "target"], sort=True):
        for v in variants:
            f = fit(cells(trial_values(histories, rows, v, skip), min_seeds))
            if f is not None:
                print(_row(env, target, v, "", f))


def print_parts(histories: NoiseHistories, table: pd.DataFrame, variants: list[str], skip: int) -> None:
    print("\n| env | target | variant | factor (mean over updates to the target) | trials | slope on log B [95% CI] | slope on log lr [95% CI] | r2 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (env, target), rows in table.groupby(["env_id", "target"], sort=True):
        for v in variants:
            m = part_means(histories, rows, v, skip)
            for col in ("grad_sq", "trace_cov"):
                f = fit_logs(m["B"].to_numpy(float), m["lr"].to_numpy(float), m[col].to_numpy(float))
                if f is not None:
                    print(_row(env, target, v, f" {col} |", f))


def _load(args: argparse.Namespace) -> pd.DataFrame | str:
    """The grid trials that reached a target (of --envs), or the one-line error."""
    from rlscale.analysis import check_sweep_dir, steps_to_target_table
    from rlscale.errors import ConfigError

    try:
        check_sweep_dir(args.sweep_dir)
    except ConfigError as err:
        return str(err)
    if args.min_seeds < 1:
        return "--min-seeds must be at least 1"
    if args.skip_updates < 0:
        return "--skip-updates must be 0 or more"
    if args.claim and not (args.sweep_dir / "analysis.json").is_file():
        return f"--claim needs {args.sweep_dir / 'analysis.json'}; run `rlscale analyze {args.sweep_dir}` first"
    table = steps_to_target_table(args.sweep_dir)
    # grid trials only: another lr rule's trials did not train at the lr they record
    table = table[(table["status"] == "completed") & table["reached"] & (table["lr_rule"] == "grid")]
    if args.envs:
        unknown = sorted(set(args.envs) - set(table["env_id"]))
        if unknown:
            return f"--envs names {', '.join(unknown)}, which {args.sweep_dir} has no reached target for"
        table = table[table["env_id"].isin(args.envs)]
    if args.plot and table.empty:
        return f"no grid trial of {args.sweep_dir} reached a target, so there is nothing to plot"
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--envs", nargs="+", metavar="ENV_ID", help="only these envs")
    ap.add_argument("--variants", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    ap.add_argument("--min-seeds", type=int, default=3, help="seeds that reached, per (B, lr) cell (default 3)")
    ap.add_argument("--parts", action="store_true", help="also fit |G|^2 and tr(Sigma) apart, per trial (reads metrics.csv)")
    ap.add_argument("--plot", type=Path, metavar="PNG", help="also draw the cells, one panel per (env, target)")
    ap.add_argument("--claim", action="store_true", help="also the claim with B_simple after the first --skip-updates (reads analysis.json)")
    ap.add_argument("--skip-updates", type=int, default=0, metavar="N",
                    help="each trial's B_simple over its updates after the first N (default 0: as recorded)")
    args = ap.parse_args(argv)
    table = _load(args)
    if isinstance(table, str):
        print(f"noise_vs_lr: {table}", file=sys.stderr)
        return 2
    from rlscale.analysis import NoiseHistories

    histories = NoiseHistories(args.sweep_dir)  # one per invocation: each metrics.csv is read once
    ids = table["trial_id"].drop_duplicates()  # a trial has a row per target
    missing = sum(not histories.has_table(str(t)) for t in ids) if args.skip_updates or args.parts else 0
    if missing:
        print(f"noise_vs_lr: {missing} of {len(ids)} trials have no metrics table (metrics.csv or metrics.csv.gz): "
              f"what needs their updates (--skip-updates, --parts) leaves them out", file=sys.stderr)
    print_slopes(histories, table, args.variants, args.min_seeds, args.skip_updates)
    if args.parts:
        print_parts(histories, table, args.variants, args.skip_updates)
    if args.claim:
        print_claims(histories, table, args.skip_updates)
    if args.plot:
        plot(histories, table, args.variants[0], args.min_seeds, args.skip_updates, args.plot)
        print(f"\nfigure: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
