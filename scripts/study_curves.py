"""Learning curves of a study sweep: evaluation return against env steps, per env and batch size.

    python scripts/study_curves.py docs/results/study/ppo --out docs/results/study/ppo/figures/curves.png

For every env of the sweep's analysis.json and every batch size B, the trials of the lr that
is best at the env's highest target (analysis.json best_configs; a B where no lr's median seed
reached that target has no best lr and is left out) are drawn: each seed's
evaluations (`eval/return_mean` in its metrics.csv) as a thin line, and the env's targets as
dotted lines. It reads each trial's metrics.csv, or the metrics.csv.gz that a finished trial
leaves (committed with the study's records).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlscale.tracking import metrics_path


def drawn_configs(entry: dict) -> list[dict]:
    """The best configs of an analysis entry that have a best lr: a B where no lr's median seed
    reached the target (median_iterations null) has none, the first lr only breaking the tie."""
    return [c for c in entry["best_configs"] if c["median_iterations"] is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--envs", nargs="+", default=None, help="only these env ids (default: every env with a best config)")
    args = ap.parse_args(argv)
    analysis = json.loads((args.sweep_dir / "analysis.json").read_text())
    table = pd.read_csv(args.sweep_dir / "steps_to_target.csv").drop_duplicates("trial_id")
    envs = sorted({e["env_id"] for e in analysis["entries"] if e["best_configs"] and (not args.envs or e["env_id"] in args.envs)})
    if not envs:
        raise SystemExit(f"study_curves: no env of {args.sweep_dir} has a best config yet; run rlscale analyze after some trials")
    fig = Figure(figsize=(5.5 * len(envs), 4.0))
    FigureCanvasAgg(fig)
    for k, env in enumerate(envs):
        ax = fig.add_subplot(1, len(envs), k + 1)
        entries = [e for e in analysis["entries"] if e["env_id"] == env]
        top = max(entries, key=lambda e: e["target"])
        best = drawn_configs(top)
        cmap = colormaps["viridis"]
        for j, c in enumerate(best):
            color = cmap(j / max(1, len(best) - 1))
            rows = table[(table["env_id"] == env) & (table["B"] == c["B"]) & (table["lr"] == c["lr"])
                         & (table["lr_rule"] == c["lr_rule"]) & (table["status"] == "completed")]
            label: str | None = f"B = {c['B']:g}, lr {c['lr']:g}"  # on the first curve drawn
            for tid in rows["trial_id"]:
                path = metrics_path(args.sweep_dir / "trials" / tid)
                if not path.is_file():
                    continue
                m = pd.read_csv(path).dropna(subset=["eval/return_mean"])
                ax.plot(m["env_steps_used"], m["eval/return_mean"], "-", color=color, lw=0.8, alpha=0.8, label=label)
                label = None
        for e in entries:
            ax.axhline(e["target"], color="0.6", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("env steps trained on")
        ax.set_ylabel("evaluation mean return")
        left_out = len(top["best_configs"]) - len(best)
        note = f"\n({left_out} B where no lr's median seed reached it left out)" if left_out else ""
        ax.set_title(f"{env}: every seed at each B's best lr for target {top['target']:g}{note}", fontsize=9)
        if best:
            ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
