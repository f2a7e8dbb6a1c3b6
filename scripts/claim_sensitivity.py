"""How the claim B_crit ~ B_simple moves with the batch sizes each fit sees.

    python scripts/claim_sensitivity.py docs/results/study/ppo [--variant combined]

The study's design chose each env's range of batch sizes. This recomputes every (env, target)
point with each env's largest batch size left out (of those with finished trials, the ones its
fits see), then with its smallest left out, and prints the
claim (`noise_scale_claim`: points, share within a factor 3, median ratio, r², lower bounds)
beside the claim as run. Only point estimates enter the claim, so the fits skip the bootstrap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def claims(sweep_dir: Path, variant: str) -> list[tuple[str, dict]]:
    from rlscale.analysis import load_sweep_meta, noise_scale_claim, pareto_entries, steps_to_target_table

    table = steps_to_target_table(sweep_dir)
    targets = load_sweep_meta(sweep_dir)["targets"]
    as_run = pareto_entries(table, targets, n_bootstrap=0)
    swept: dict[str, set[float]] = {}  # per env, the batch sizes its fits saw (pending ones stay out)
    for e in as_run:
        swept.setdefault(e["env_id"], set()).update(e["batch_sizes_swept"])

    def without(pick) -> pd.DataFrame:  # each env's table less its `pick` (max or min) fitted B
        drop = {env: pick(bs) for env, bs in swept.items() if bs}
        return table[table["B"] != table["env_id"].map(drop)]

    out = [("as run", noise_scale_claim(as_run, variant=variant))]
    for name, t in (("without each env's largest B", without(max)), ("without each env's smallest B", without(min))):
        out.append((name, noise_scale_claim(pareto_entries(t, targets, n_bootstrap=0), variant=variant)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--variant", default="combined", help="noise-scale variant (default combined)")
    args = ap.parse_args(argv)
    from rlscale.analysis import NOISE_VARIANTS, check_sweep_dir
    from rlscale.errors import ConfigError

    if args.variant not in NOISE_VARIANTS:
        print(f"claim_sensitivity: --variant {args.variant} is not a noise-scale variant; use one of {', '.join(NOISE_VARIANTS)}",
              file=sys.stderr)
        return 2
    try:
        check_sweep_dir(args.sweep_dir)
    except ConfigError as e:
        print(f"claim_sensitivity: {e}", file=sys.stderr)
        return 2
    print(f"B_crit beside the {args.variant} B_simple:\n")
    print("| batch sizes fitted | points | envs | within x3 | median ratio | r2 (slope) | B_crit lower bounds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, c in claims(args.sweep_dir, args.variant):
        n_in = round(c["fraction_within"] * c["n_points"]) if c["n_points"] else 0
        med = "-" if c.get("median_ratio") is None else f"{c['median_ratio']:.3g}"
        r2 = "-" if c.get("r2_log") is None else f"{c['r2_log']:.2f} ({c['slope_log']:.2f})"
        print(f"| {name} | {c['n_points']} | {c['n_envs']} | {n_in} of {c['n_points']} | {med} | {r2} | {c['n_lower_bounds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
