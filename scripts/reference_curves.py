"""Learning curves of reference runs (`rlscale train` with a family's default config), one panel per run.

    python scripts/reference_curves.py RUN_DIR [RUN_DIR ...] --out curves.png [--sweep configs/sweeps/study.yaml]

Each panel draws a run's smoothed training return (`charts/episode_return_smoothed`) and, where the
run evaluated (eval.env_steps or eval.interval), its evaluation mean return (`eval/return_mean`)
against env steps. With --sweep, the env's random and reference scores from that sweep file are
drawn as lines and each row of the table gives the last evaluations' share of the way between them.
Prints a markdown table (one row per run) to stdout. The runs' metrics.csv and summary.json must
be present.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlscale.tracking import metrics_path

LAST_EVALS = 3  # the table's final return: mean of the last evaluations
_SUMMARY_KEYS = ("env_id", "env_steps_used", "iterations", "wall_time_s", "env_steps_per_s", "episode_return_mean_last20")


def _scores(sweep: Path) -> dict[str, tuple[float, float]]:
    """env id -> (random score, reference score) for the sweep's envs that have a reference above random."""
    from rlscale.sweep import load_sweep_config

    envs = load_sweep_config(sweep).envs
    return {e.id: (e.random_score, e.reference_score) for e in envs
            if e.reference_score is not None and e.reference_score > e.random_score}


def _read_run(d: Path) -> tuple[dict, pd.DataFrame]:
    """A run's summary and metrics, checked; ValueError naming what is missing."""
    missing = [f for f, p in (("metrics.csv", metrics_path(d)), ("summary.json", d / "summary.json")) if not p.is_file()]
    if missing:
        raise ValueError(f"{d} has no {' or '.join(missing)}; pass run directories of rlscale train")
    s = json.loads((d / "summary.json").read_text())
    absent = [k for k in _SUMMARY_KEYS if k not in s]
    if absent:
        raise ValueError(f"{d}/summary.json lacks {', '.join(absent)}; it is not a finished rlscale train run")
    m = pd.read_csv(metrics_path(d))
    if "env_steps_used" not in m or m.empty:
        raise ValueError(f"{d}/metrics.csv has no rows with env_steps_used; the run logged no iteration")
    return s, m


def _fmt(x) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sweep", type=Path, default=None, help="sweep YAML whose envs give reference_score and random_score")
    args = ap.parse_args(argv)
    from rlscale.errors import ConfigError

    try:  # read and check everything before drawing or printing anything
        runs = [_read_run(d) for d in args.run_dirs]
        scores = _scores(args.sweep) if args.sweep else {}
    except (OSError, ValueError, ConfigError, pd.errors.ParserError) as err:
        print(f"reference_curves: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    cols = min(3, len(runs))
    rows_n = -(-len(runs) // cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * rows_n))
    FigureCanvasAgg(fig)
    lines = ["| env | env steps | iterations | wall time (min) | env steps/s | last 20 training episodes | "
             f"last {LAST_EVALS} evaluations | best evaluation | share of the way from random to reference |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, (s, m) in enumerate(runs):
        env = s["env_id"]
        ax = fig.add_subplot(rows_n, cols, k + 1)
        if "charts/episode_return_smoothed" in m:
            ax.plot(m["env_steps_used"], m["charts/episode_return_smoothed"], color="tab:blue", lw=1.0,
                    label="training return (smoothed)")
        ev = m.dropna(subset=["eval/return_mean"]) if "eval/return_mean" in m else m.iloc[:0]
        last = best = share = None
        if len(ev):
            ax.plot(ev["env_steps_used"], ev["eval/return_mean"], "o-", color="tab:orange", ms=2.5, lw=1.0,
                    label="evaluation mean return")
            last = float(ev["eval/return_mean"].tail(LAST_EVALS).mean())
            best = float(ev["eval/return_mean"].max())
        if env in scores:
            random, reference = scores[env]
            ax.axhline(reference, color="0.3", ls="--", lw=0.8, label=f"reference {reference:g}")
            ax.axhline(random, color="0.6", ls=":", lw=0.8, label=f"random {random:g}")
            if last is not None:
                share = (last - random) / (reference - random)
        ax.set_xlabel("env steps trained on")
        ax.set_ylabel("return")
        ax.set_title(env, fontsize=9)
        ax.legend(fontsize=7)
        wall = s["wall_time_s"]
        lines.append(f"| {env} | {s['env_steps_used']} | {s['iterations']} | {_fmt(wall / 60 if wall is not None else None)} | "
                     f"{_fmt(s['env_steps_per_s'])} | {_fmt(s['episode_return_mean_last20'])} | {_fmt(last)} | {_fmt(best)} | "
                     f"{'-' if share is None else f'{share:.0%}'} |")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print("\n".join(lines))
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
