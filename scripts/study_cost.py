"""What a study's sweep cost so far, per environment, from its trial records.

    python scripts/study_cost.py docs/results/study/ppo [--by-batch]

A population's time is its slowest member's `wall_time_s` (members share one clock; a resumed
member's time adds up over its sessions); a trial trained alone is its own population. Only
completed trials count: a running or failed population's time is left out. A record names its population (`population.first`);
records written before that field existed are grouped by (env, B), which merges populations
that ran one after the other at the same B (an lr added to a grid later) into the slowest of
them, so their time is a lower bound. Times are wall-clock under whatever else shared the
machine's cores, not core-seconds of an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def load_records(sweep_dir: Path) -> list[dict]:
    recs = []
    for p in sorted((sweep_dir / "trials").glob("*/trial.json")):
        try:
            recs.append(json.loads(p.read_text()))
        except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            print(f"study_cost: skipping {p}: not valid JSON (half-written?)", file=sys.stderr)
    return recs


def population_times(recs: list[dict]) -> dict[tuple, dict]:
    """{(env, B, population key): {"seconds", "members", "pruned", "env_steps", "grouped_by_batch"}}
    over completed records; adaptive runs are their own population."""
    out: dict[tuple, dict] = {}
    for r in recs:
        if r.get("status") != "completed":
            continue
        legacy = "population" not in r and r["lr_rule"] != "adaptive"  # a record from before the field
        pop = r.get("population")  # None: trained alone
        key = (r["env_id"], r["env_steps_per_iteration"] if r["lr_rule"] != "adaptive" else "adaptive",
               None if legacy else pop["first"] if pop else r["trial_id"])
        cell = out.setdefault(key, {"seconds": 0.0, "members": 0, "pruned": 0, "env_steps": 0, "grouped_by_batch": legacy})
        cell["seconds"] = max(cell["seconds"], float(r.get("wall_time_s") or 0.0))
        cell["members"] += 1
        cell["pruned"] += bool(r.get("pruned"))
        cell["env_steps"] += int(r.get("env_steps") or 0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--by-batch", action="store_true", help="one row per (env, B) as well")
    args = ap.parse_args(argv)
    if not (args.sweep_dir / "trials").is_dir():
        print(f"study_cost: {args.sweep_dir} has no trials/ directory; pass a sweep directory (rlscale sweep --out)", file=sys.stderr)
        return 2
    cells = population_times(load_records(args.sweep_dir))
    per_env: dict[str, dict] = defaultdict(lambda: {"seconds": 0.0, "populations": 0, "members": 0, "pruned": 0, "env_steps": 0,
                                                    "lower_bound": False})
    by_batch: dict[tuple, dict] = defaultdict(lambda: {"seconds": 0.0, "populations": 0, "members": 0, "pruned": 0, "env_steps": 0})
    for (env, b, _), c in cells.items():
        for agg in (per_env[env], by_batch[env, b]):
            agg["seconds"] += c["seconds"]
            agg["populations"] += 1
            for k in ("members", "pruned", "env_steps"):
                agg[k] += c[k]
        per_env[env]["lower_bound"] |= c["grouped_by_batch"]
    if args.by_batch:
        print("| env | B | populations | trials (pruned) | env steps trained | population hours |")
        print("| --- | --- | --- | --- | --- | --- |")
        for (env, b), a in sorted(by_batch.items(), key=lambda kv: (kv[0][0], str(kv[0][1]).zfill(8))):
            print(f"| {env} | {b} | {a['populations']} | {a['members']} ({a['pruned']}) | {a['env_steps']:.3g} | {a['seconds'] / 3600:.2f} |")
        print()
    print("| env | populations | trials (pruned) | env steps trained | population hours |")
    print("| --- | --- | --- | --- | --- |")
    total = 0.0
    for env, a in sorted(per_env.items()):
        total += a["seconds"]
        bound = " (at least)" if a["lower_bound"] else ""
        print(f"| {env} | {a['populations']} | {a['members']} ({a['pruned']}) | {a['env_steps']:.3g} | {a['seconds'] / 3600:.2f}{bound} |")
    print(f"\ntotal: {total / 3600:.2f} population hours over {len(per_env)} envs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
