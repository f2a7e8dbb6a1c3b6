"""What a study's sweep cost so far, per environment, from its trial records.

    python scripts/study_cost.py docs/results/study/ppo [--by-batch] [--remaining]

A population's time is its slowest member's `wall_time_s` (members share one clock; a resumed
member's time adds up over its sessions); a trial trained alone is its own population. Only
completed trials count: a running or failed population's time is left out. A record names its population (`population.first`);
records written before that field existed are grouped by (env, B), which merges populations
that ran one after the other at the same B (an lr added to a grid later) into the slowest of
them, so their time is a lower bound. Times are wall-clock under whatever else shared the
machine's cores, not core-seconds of an idle machine.

`--remaining` adds what the pending trials still have to run, per (env, B): the iteration their
population has reached (its members run in step), the iterations of their budget, the recent
seconds per iteration and the hours left at that pace if no member is pruned (an upper bound;
a cell not started yet has no pace).
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


def _last_rows(path: Path, n: int) -> list[list[str]]:
    """The header and the last `n` rows of a metrics.csv, split on commas (the numbers it holds
    have none)."""
    lines = path.read_text().splitlines()
    return [line.split(",") for line in lines[:1] + lines[1:][-n:]]


def remaining(sweep_dir: Path, recs: list[dict]) -> dict[tuple, dict]:
    """{(env, B): {"trials", "iteration", "budget", "seconds_per_iteration", "hours_left"}} over
    the pending fixed-B trials (see the module docstring); None where unknown."""
    out: dict[tuple, dict] = {}
    for r in recs:
        if r.get("status") != "pending" or r.get("lr_rule") == "adaptive":
            continue
        b = int(r["env_steps_per_iteration"])
        cell = out.setdefault((r["env_id"], b), {"trials": 0, "iteration": 0, "budget": None, "seconds_per_iteration": None})
        cell["trials"] += 1
        trial_dir = sweep_dir / "trials" / r["trial_id"]
        budget = next((o.split("=", 1)[1] for o in r.get("overrides") or [] if o.startswith("total_env_steps=")), None)
        cell["budget"] = -(-int(budget) // b) if budget else cell["budget"]
        if not (trial_dir / "metrics.csv").is_file():
            continue
        header, *rows = _last_rows(trial_dir / "metrics.csv", 51)
        if not rows:
            continue
        it, wall = header.index("iteration"), header.index("wall_time_s")
        if int(rows[-1][it]) >= cell["iteration"]:
            times = [float(b2[wall]) - float(a2[wall]) for a2, b2 in zip(rows, rows[1:])]
            times = sorted(t for t in times if t > 0)  # a resume restarts the clock
            cell["iteration"] = int(rows[-1][it])
            cell["seconds_per_iteration"] = times[len(times) // 2] if times else None
    for cell in out.values():
        pace, budget = cell["seconds_per_iteration"], cell["budget"]
        cell["hours_left"] = (budget - cell["iteration"]) * pace / 3600 if pace and budget else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--by-batch", action="store_true", help="one row per (env, B) as well")
    ap.add_argument("--remaining", action="store_true", help="what the pending trials still have to run, per (env, B)")
    args = ap.parse_args(argv)
    if not (args.sweep_dir / "trials").is_dir():
        print(f"study_cost: {args.sweep_dir} has no trials/ directory; pass a sweep directory (rlscale sweep --out)", file=sys.stderr)
        return 2
    recs = load_records(args.sweep_dir)
    cells = population_times(recs)
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
    if args.remaining:
        left = remaining(args.sweep_dir, recs)
        num = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
        print("\n| env | B | pending trials | iteration | of (budget) | s per iteration | hours left (at most) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for (env, b), c in sorted(left.items()):
            print(f"| {env} | {b} | {c['trials']} | {c['iteration']} | {num(c['budget'], 'd')} "
                  f"| {num(c['seconds_per_iteration'], '.2f')} | {num(c['hours_left'], '.2f')} |")
        known = [c["hours_left"] for c in left.values() if c["hours_left"] is not None]
        print(f"\nleft: {sum(known):.2f} population hours at most over {len(known)} running cells; "
              f"{len(left) - len(known)} cells not started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
