"""Plot B_simple (and B_noise, where measured) against env steps for one or more run dirs.

    python scripts/plot_noise.py RUN_DIR [RUN_DIR ...] --out noise.png

Each run gets a panel: the smoothed noise scales on a log axis (left) and the smoothed episode
return (right axis), so one can see whether B_simple grows as the return improves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlscale.tracking import metrics_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fig = Figure(figsize=(6.5, 3.4 * len(args.runs)), constrained_layout=True)
    FigureCanvasAgg(fig)
    stats = {}
    for i, run in enumerate(args.runs):
        m = pd.read_csv(metrics_path(run))
        env = json.loads((run / "summary.json").read_text())["env_id"] if (run / "summary.json").exists() else run.name
        ax = fig.add_subplot(len(args.runs), 1, i + 1)
        x = m["env_steps"]
        for col, label in (("noise/b_simple_ema", "B_simple (EMA)"), ("noise/b_noise_ema", "B_noise (EMA)"),
                           ("noise/b_simple_per_example_ema", "B_simple, per-example (EMA)")):
            if col in m and m[col].notna().any():
                y = m[col].where(m[col] > 0)
                ax.plot(x, y, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("env steps")
        ax.set_ylabel("noise scale (examples per gradient)")
        ax2 = ax.twinx()
        ax2.plot(x, m["charts/episode_return_smoothed"], color="0.55", lw=1, ls="--", label="return (mean of last 20)")
        ax2.set_ylabel("episode return")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
        ax.set_title(f"{env}: {run.name}")
        r, b = m["charts/episode_return_smoothed"], m["noise/b_simple_ema"]
        ok = r.notna() & b.notna() & (b > 0)
        stats[str(run)] = {
            "spearman_return_vs_log_b_simple": float(pd.Series(r[ok]).corr(np.log(b[ok]), method="spearman")) if ok.sum() > 3 else None,
            "b_simple_first_quarter_median": float(b[ok].iloc[: max(1, ok.sum() // 4)].median()) if ok.any() else None,
            "b_simple_last_quarter_median": float(b[ok].iloc[-max(1, ok.sum() // 4):].median()) if ok.any() else None,
        }
    fig.savefig(args.out, dpi=110)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
