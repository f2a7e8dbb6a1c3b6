"""Adaptive-batch runs beside a sweep's fixed-batch frontier.

    python scripts/adaptive_vs_frontier.py SWEEP_ANALYSIS_JSON RUN_DIR [RUN_DIR ...] --out DIR

For every target the sweep's analysis fitted (S_min, E_min of the fixed-batch runs), each
adaptive run's steps S and env steps E to the target, S/S_min, E/E_min, their product
(S/S_min - 1)(E/E_min - 1) (every fixed batch lies on 1; below 1 is inside the frontier) and the
gamma predicted from the run's own noise history (rlscale.adaptive). Prints JSON (one record per
target: the runs and the medians over runs with a bootstrap interval over runs) and writes
DIR/adaptive_vs_frontier.json, DIR/frontier.png (steps vs env steps: the fixed batches' points
and fitted hyperbola, the adaptive runs) and DIR/batch_over_training.png (B and B_simple per
iteration of each run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from rlscale.adaptive import adaptive_point, summarise
from rlscale.report import plot_batch_over_training
from rlscale.util import atomic_write_json, to_jsonable


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("analysis", type=Path, help="analysis.json of the fixed-batch sweep (rlscale analyze)")
    ap.add_argument("runs", nargs="+", type=Path, help="adaptive run directories (ppo.batch_schedule=noise)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    entries = [e for e in json.loads(args.analysis.read_text())["entries"] if e["status"] == "ok"]
    records = []
    for e in entries:
        points = [adaptive_point(r, e["target"], e["s_min"], e["e_min"]) for r in args.runs]
        rec = {"env_id": e["env_id"], "target": e["target"], "s_min": e["s_min"], "e_min": e["e_min"], "b_crit": e["b_crit"],
               "runs": points, **summarise(points)}
        records.append(rec)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "adaptive_vs_frontier.json", to_jsonable(records))
    plot_frontier(entries, records, args.out / "frontier.png")
    plot_batch_over_training(args.runs, args.out / "batch_over_training.png")
    for r in records:
        print(json.dumps(to_jsonable({k: v for k, v in r.items() if k != "runs"})))
    print(f"written: {args.out}/adaptive_vs_frontier.json, frontier.png, batch_over_training.png", file=sys.stderr)
    return 0


def plot_frontier(entries: list[dict], records: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(entries), 3.4))
    FigureCanvasAgg(fig)
    for i, (e, r) in enumerate(zip(entries, records)):
        ax = fig.add_subplot(1, len(entries), i + 1)
        ax.plot(e["env_steps"], e["steps"], "o", color="k", label="fixed B (best lr, median)")
        E = np.geomspace(e["e_min"] * 1.05, max(e["env_steps"] + [p.get("env_steps", 0) for p in r["runs"]]) * 1.5, 200)
        ax.plot(E, e["s_min"] * (1 + 1 / (E / e["e_min"] - 1)), "-", color="0.5", lw=1, label="fixed-B frontier fit")
        pts = [p for p in r["runs"] if p["reached"]]
        ax.plot([p["env_steps"] for p in pts], [p["iterations"] for p in pts], "^", color="tab:red", label="adaptive (per seed)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("env steps to target")
        ax.set_title(f"{e['env_id']} target {e['target']:g}", fontsize=9)
        if i == 0:
            ax.set_ylabel("PPO iterations to target")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
