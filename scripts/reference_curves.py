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

import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LAST_EVALS = 3  # the table's final return: mean of the last evaluations


def _scores(sweep: Path | None) -> dict[str, dict]:
    if sweep is None:
        return {}
    envs = yaml.safe_load(sweep.read_text()).get("envs") or []
    return {e["id"]: e for e in envs if "reference_score" in e and "random_score" in e}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sweep", type=Path, default=None, help="sweep YAML whose envs give reference_score and random_score")
    args = ap.parse_args(argv)
    for d in args.run_dirs:
        if not (d / "metrics.csv").is_file() or not (d / "summary.json").is_file():
            print(f"reference_curves: {d} has no metrics.csv and summary.json; pass run directories of rlscale train", file=sys.stderr)
            return 2
    scores = _scores(args.sweep)
    cols = min(3, len(args.run_dirs))
    rows_n = -(-len(args.run_dirs) // cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * rows_n))
    FigureCanvasAgg(fig)
    print("| env | env steps | iterations | wall time (min) | env steps/s | last 20 training episodes | "
          f"last {LAST_EVALS} evaluations | best evaluation | share of the way from random to reference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k, d in enumerate(args.run_dirs):
        s = json.loads((d / "summary.json").read_text())
        env = s["env_id"]
        m = pd.read_csv(d / "metrics.csv")
        ax = fig.add_subplot(rows_n, cols, k + 1)
        ax.plot(m["env_steps_used"], m["charts/episode_return_smoothed"], color="tab:blue", lw=1.0,
                label="training return (smoothed)")
        ev = m.dropna(subset=["eval/return_mean"]) if "eval/return_mean" in m else m.iloc[:0]
        last = best = share = None
        if len(ev):
            ax.plot(ev["env_steps_used"], ev["eval/return_mean"], "o-", color="tab:orange", ms=2.5, lw=1.0,
                    label="evaluation mean return")
            last = float(ev["eval/return_mean"].tail(LAST_EVALS).mean())
            best = float(ev["eval/return_mean"].max())
        ref = scores.get(env)
        if ref is not None:
            ax.axhline(ref["reference_score"], color="0.3", ls="--", lw=0.8, label=f"reference {ref['reference_score']:g}")
            ax.axhline(ref["random_score"], color="0.6", ls=":", lw=0.8, label=f"random {ref['random_score']:g}")
            if last is not None:
                share = (last - ref["random_score"]) / (ref["reference_score"] - ref["random_score"])
        ax.set_xlabel("env steps trained on")
        ax.set_ylabel("return")
        ax.set_title(env, fontsize=9)
        ax.legend(fontsize=7)
        fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
        print(f"| {env} | {s['env_steps_used']} | {s['iterations']} | {s['wall_time_s'] / 60:.1f} | "
              f"{s['env_steps_per_s']:.0f} | {fmt(s['episode_return_mean_last20'])} | {fmt(last)} | {fmt(best)} | "
              f"{'-' if share is None else f'{share:.0%}'} |")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
