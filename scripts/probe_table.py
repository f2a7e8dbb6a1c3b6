"""Markdown tables from `rlscale noise-probe` outputs: every row, then the medians of the
in-loop / reference ratios per part (B_simple and, apart, tr(Sigma) and |G|^2).

    python scripts/probe_table.py RUN_DIR/noise_probe.json [...] [--label s1 ...]

A ratio is counted only where both B_simple are defined (|G|^2 estimates positive); the
count n says how many points each median has.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

PARTS = ("policy", "value", "combined", "adam")  # adam: the combined gradient in Adam's metric


def fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2g}" if abs(x) < 1 else f"{x:.3g}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 and a > 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--label", nargs="*", help="one label per file (default: the run directory's name)")
    args = ap.parse_args()
    labels = args.label or [f.parent.name for f in args.files]
    rows = [(label, r) for label, f in zip(labels, args.files) for r in json.loads(f.read_text())]
    modes = sorted({k[len("inloop_b_simple_"):] for _, r in rows for k in r if k.startswith("inloop_b_simple_")})
    head = ["run", "iteration (env steps)", "part", "reference (95% CI)"] + [f"in-loop {m}" for m in modes] + [f"{m} / ref" for m in modes]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    stats: dict[tuple[str, str, str], list[float]] = {}
    for label, r in rows:
        lo, hi = r["reference_b_simple_ci"]
        ref = r["reference_b_simple"]
        cells = [label, f"{r['iteration']} ({r['env_steps']:,})", r["part"],
                 f"{fmt(ref)} ({fmt(lo)} to {fmt(hi) if hi is not None and math.isfinite(hi) else 'unbounded'})"]
        cells += [fmt(r[f"inloop_b_simple_{m}"]) for m in modes]
        cells += [fmt(ratio(r[f"inloop_b_simple_{m}"], ref)) for m in modes]
        print("| " + " | ".join(cells) + " |")
        for m in modes:
            for what, x in (("B_simple", ratio(r[f"inloop_b_simple_{m}"], ref)),
                            ("tr(Sigma)", ratio(r[f"inloop_trace_cov_{m}"], r["reference_trace_cov"])),
                            ("\\|G\\|^2", ratio(r[f"inloop_grad_sq_{m}"], r["reference_grad_sq"]))):
                if x is not None:
                    stats.setdefault((r["part"], what, m), []).append(x)
    print()
    print("| part | quantity | " + " | ".join(f"{m} / reference: median (n)" for m in modes) + " |")
    print("|" + " --- |" * (2 + len(modes)))
    for part in [p for p in PARTS if any(r["part"] == p for _, r in rows)]:
        for what in ("B_simple", "tr(Sigma)", "\\|G\\|^2"):
            cells = []
            for m in modes:
                v = stats.get((part, what, m), [])
                cells.append(f"{np.median(v):.2f} (n = {len(v)})" if v else "—")
            print(f"| {part} | {what} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
