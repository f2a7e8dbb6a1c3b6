"""What a study's sweep cost so far, per environment, from its trial records.

    python scripts/study_cost.py docs/results/study/ppo [--by-batch] [--remaining]

A population's time is its slowest member's `wall_time_s` (members share one clock; a resumed
member's time adds up over its sessions); a trial trained alone is its own population. Only
completed trials count: a running or failed population's time is left out. A record names its population (`population.first`);
records written before that field existed are grouped by (env, B), which merges populations
that ran one after the other at the same B (an lr added to a grid later) into the slowest of
them, so their time is a lower bound. Times are wall-clock under whatever else shared the
machine's cores, not core-seconds of an idle machine.

`--remaining` adds what the pending trials still have to run, per population: (env, B), whether
it is running (a member has trained an iteration or finished) or not started (an lr added to a
grid later runs as a population of its own beside the B's first), and the population its
pending records name (records written before they named one are grouped by the first two): the
iteration their
population has reached (its members run in step), the iterations of their budget, the seconds
of one iteration's training (the median over its furthest member's last 50 iterations, each
less the evaluation it made), the seconds its evaluations take per `eval.interval` iterations
(the sweep sets the interval) and the hours left if no member is pruned. A running cell's hours
are its iterations left at its own recent pace, evaluations and checkpoints included. The two
parts are apart because an evaluation plays whole episodes and lasts as long as its longest
game, whatever B: a population whose worst members survive long without scoring spends most
of its time evaluating. A cell not started yet takes the range of training paces of the
sweep's finished populations of its env family, B and size (the learner's update, the same at
one B and network, sets most of an iteration's training; with none of its size, those of the
nearest sizes scaled by the number of members, as a vectorised population's update is), and the range of evaluation paces of
its own env's running cells, else of those finished populations; its hours are its iterations
at the training pace plus its evaluations at the evaluation pace, and none when either is
unknown. Where those populations' metrics tables are gone (a clone of records kept before
tables were packed), their records still give a whole iteration's pace (the longest member's
wall_time_s over its iterations: the population's mean, their own games' evaluations
included, its members pruned as they were), and the cell's hours are its iterations at that
pace: an estimate that is low where the cell's own evaluations take longer. Members of a population that have finished (a summary.json) are not read. Paces are
wall-clock under whatever shared the cores, so the hours are an estimate for planning.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def _rows(trial_dir: Path, n: int = 0) -> list[list[str]]:
    """The header and the last `n` (0: all) rows of a trial's metrics table (metrics.csv, or the
    metrics.csv.gz of a clone), split on commas (its numbers hold none); a half-written last
    line is left out, a missing or empty table gives []."""
    import gzip

    from rlscale.tracking import metrics_path

    path = metrics_path(trial_dir)
    data = (gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()) if path.is_file() else b""
    lines = data.decode().splitlines()
    if not lines:
        return []
    header = lines[0].split(",")
    rows = [r for r in (line.split(",") for line in lines[1:]) if len(r) == len(header)]
    return [header, *rows[-n:]] if n else [header, *rows]


def _pace(rows: list[list[str]], others: list[list[list[str]]] = (), interval: int = 0) -> tuple[float, float, float | None] | None:
    """(seconds per iteration, seconds of one iteration's training, seconds of evaluation per
    `interval` iterations or None) from a population's metrics rows (header first): `rows` its
    furthest member's, `others` the other members'.

    The first is the wall time from the first row to the last (wall_time_s runs on across a
    resume) over the iterations between them, evaluations and checkpoints included. A row's
    wall_time_s is stamped before its evaluation, which so falls in the time to the next row:
    training is the median of those times less the evaluation. Evaluation: the `time/eval_s` of
    every member's rows, one per (iteration, seconds), summed and spread over the intervals of
    the furthest member's rows. Members that a stop caught at different checkpoints run on at
    different iterations and evaluate apart (each member's wall_time_s then has its own offset,
    so rows are not matched by time), and a population in step waits for its slowest member:
    the sum per interval is what its evaluations cost."""
    if len(rows) < 3:
        return None
    it, wall = rows[0].index("iteration"), rows[0].index("wall_time_s")
    iterations = int(rows[-1][it]) - int(rows[1][it])
    if iterations <= 0:
        return None
    ev = rows[0].index("time/eval_s") if "time/eval_s" in rows[0] else None
    seconds = lambda r: float(r[ev]) if ev is not None and r[ev] else 0.0  # noqa: E731
    steps = [(float(b[wall]) - float(a[wall]) - seconds(a)) / (int(b[it]) - int(a[it]))
             for a, b in zip(rows[1:], rows[2:]) if int(b[it]) > int(a[it])]
    events = set()
    for member in [rows, *others]:
        if len(member) > 1 and "time/eval_s" in member[0]:
            mi, me = member[0].index("iteration"), member[0].index("time/eval_s")
            events |= {(r[mi], float(r[me])) for r in member[1:] if r[me] and float(r[me]) > 0}
    per_interval = sum(s for _, s in events) / max(1, round(iterations / interval)) if events and interval else None
    return (float(rows[-1][wall]) - float(rows[1][wall])) / iterations, statistics.median(steps), per_interval


def _span(values: list[float]) -> tuple[float, float] | None:
    return (min(values), max(values)) if values else None


def _family(env_id: str) -> str:
    from rlscale.envs import family_for

    family = family_for(env_id)
    return family.name if family else env_id


def _longest_members(recs: list[dict]) -> dict[str, dict]:
    """Per finished population (its first trial), the record of the member that ran the most iterations."""
    longest: dict[str, dict] = {}
    for r in recs:
        pop = r.get("population")
        if r.get("status") == "completed" and pop and (r.get("iterations") or 0) >= (longest.get(pop["first"], {}).get("iterations") or 0):
            longest[pop["first"]] = r
    return longest


def finished_paces(sweep_dir: Path, recs: list[dict]) -> dict[tuple[str, int, int], tuple[tuple | None, tuple | None]]:
    """{(env family, B, members): ((fastest, slowest) seconds per iteration of training,
    (fastest, slowest) seconds per evaluation or None)} over the sweep's finished populations of
    that shape, each its longest member's over its whole run."""
    longest = _longest_members(recs)
    by_population: dict[str, list[dict]] = defaultdict(list)
    for m in recs:
        if m.get("population"):
            by_population[m["population"]["first"]].append(m)
    paces: dict[tuple[str, int, int], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for first, r in longest.items():
        members = [_rows(sweep_dir / "trials" / m["trial_id"]) for m in by_population[first] if m is not r]
        trial_dir = sweep_dir / "trials" / r["trial_id"]
        pace = _pace(_rows(trial_dir), members, int(_setting(trial_dir, r, "eval.interval") or 0))
        if pace:
            train, evals = paces[_family(r["env_id"]), int(r["env_steps_per_iteration"]), int(r["population"]["members"])]
            train.append(pace[1])
            evals.extend([pace[2]] if pace[2] is not None else [])
    return {k: (_span(train), _span(evals)) for k, (train, evals) in paces.items()}


def record_paces(recs: list[dict]) -> dict[tuple[str, int, int], tuple[float, float]]:
    """{(env family, B, members): (fastest, slowest) seconds of a whole iteration} over the
    sweep's finished populations of that shape, each its longest member's record (wall_time_s
    over iterations: evaluations included), for where their metrics tables are gone."""
    longest = _longest_members(recs)
    paces: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for r in longest.values():
        if r.get("iterations") and r.get("wall_time_s"):
            paces[_family(r["env_id"]), int(r["env_steps_per_iteration"]), int(r["population"]["members"])].append(
                float(r["wall_time_s"]) / int(r["iterations"]))
    return {k: (min(v), max(v)) for k, v in paces.items()}


def _setting(trial_dir: Path, rec: dict, key: str):
    """The trial's setting `key` (dotted: eval.interval): the sweep's override, else its
    config.yaml's; None where neither has it."""
    value = next((o.split("=", 1)[1] for o in rec.get("overrides") or [] if o.startswith(f"{key}=")), None)
    if value is None and (trial_dir / "config.yaml").is_file():
        import yaml

        value = yaml.safe_load((trial_dir / "config.yaml").read_text()) or {}
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return value


def remaining(sweep_dir: Path, recs: list[dict]) -> dict[tuple, dict]:
    """{(env, B, running, population's first trial or None): {"trials", "iteration", "budget", "seconds_per_iteration", "seconds_per_evaluation",
    "evaluations_left", "pace_from", "hours_left"}} over the pending fixed-B trials (see the
    module docstring). Paces and hours are (low, high) pairs, equal for a running cell; None
    where unknown."""
    out: dict[tuple, dict] = {}
    for r in recs:
        if r.get("status") != "pending" or r.get("lr_rule") == "adaptive":
            continue
        b = int(r["env_steps_per_iteration"])
        trial_dir = sweep_dir / "trials" / r["trial_id"]
        done = (trial_dir / "summary.json").is_file()  # a member that has finished
        rows = [] if done else _rows(trial_dir, 51)
        running = done or len(rows) >= 2
        first = (r.get("population") or {}).get("first")
        cell = out.setdefault((r["env_id"], b, running, first), {"trials": 0, "iteration": 0, "budget": None, "seconds_per_iteration": None,
                                                 "seconds_per_evaluation": None, "eval_interval": 0, "pace_from": None})
        cell["trials"] += 1
        budget = _setting(trial_dir, r, "total_env_steps")
        cell["budget"] = -(-int(budget) // b) if budget else cell["budget"]
        cell["eval_interval"] = int(_setting(trial_dir, r, "eval.interval") or 0) or cell["eval_interval"]
        if done or len(rows) < 2:  # finished, or not begun
            continue
        cell.setdefault("rows", []).append(rows)
    for cell in out.values():  # the furthest member's last iterations, every member's evaluations
        members = sorted(cell.pop("rows", []), key=lambda rows: int(rows[-1][rows[0].index("iteration")]))
        pace = _pace(members[-1], members[:-1], cell["eval_interval"]) if members else None
        cell["iteration"] = int(members[-1][-1][members[-1][0].index("iteration")]) if members else 0
        if pace:
            cell["total_seconds_per_iteration"] = pace[0]
            cell["seconds_per_iteration"] = (pace[1], pace[1])
            cell["seconds_per_evaluation"] = (pace[2], pace[2]) if pace[2] is not None else None
            cell["pace_from"] = "its own iterations"
    others, whole = finished_paces(sweep_dir, recs), record_paces(recs)
    for (env, b, _, _), cell in out.items():
        shape = (_family(env), b, cell["trials"])
        # finished populations of its size, else of the nearest sizes scaled; those with tables first
        borrowed = None
        if cell["seconds_per_iteration"] is None:
            near = min((abs(k[2] - shape[2]) for paces in (others, whole) for k in paces if k[:2] == shape[:2]), default=None)
            borrowed = next(((src, got) for src, paces in (("tables", others), ("records", whole))
                             if near is not None and (got := _borrow(shape, paces, near))), None)
        if borrowed and borrowed[0] == "tables":
            cell["seconds_per_iteration"], evals, size = borrowed[1]
            cell["pace_from"] = f"finished populations of this family, B and {size}"
            same_env = [x for (e, *_), c in out.items() if e == env and c["pace_from"] == "its own iterations"
                        for x in c["seconds_per_evaluation"] or ()]
            cell["seconds_per_evaluation"] = _span(same_env) or evals
        elif borrowed:  # their tables are gone: their records' whole iterations
            cell["seconds_per_iteration"], _, size = borrowed[1]
            cell["total_seconds_per_iteration"] = cell["seconds_per_iteration"]
            cell["pace_from"] = f"records of finished populations of this family, B and {size}: whole iterations, their evaluations included"
        pace, budget, interval = cell["seconds_per_iteration"], cell["budget"], cell.pop("eval_interval")
        cell["evaluations_left"] = budget // interval - cell["iteration"] // interval if interval and budget else 0
        left = max(0, budget - cell["iteration"]) if budget else 0
        total = cell.pop("total_seconds_per_iteration", None)
        if total is not None:  # running: at its own pace, its evaluations as they fall (or a records' pace, the same way)
            cell["hours_left"] = tuple(left * t / 3600 for t in (total if isinstance(total, tuple) else (total, total))) if budget else None
        else:
            evals = cell["seconds_per_evaluation"] or ((0.0, 0.0) if not cell["evaluations_left"] else None)
            cell["hours_left"] = (tuple((left * p + cell["evaluations_left"] * e) / 3600 for p, e in zip(pace, evals))
                                  if pace and budget and evals else None)
    return out


def _borrow(shape: tuple[str, int, int], paces: dict, distance: int) -> tuple[tuple, tuple | None, str] | None:
    """From `paces` ({(env family, B, members): training span, or (training span, evaluation
    span)}), for a population of `shape`: the (low, high) training pace of the populations of its
    family and B whose members are `distance` from its own (both sizes where two are), each
    scaled by members / their members; their evaluation span; and a label. None where none is."""
    near = sorted(k[2] for k in paces if k[:2] == shape[:2] and abs(k[2] - shape[2]) == distance)
    if not near:
        return None
    got = [paces[(*shape[:2], m)] for m in near]
    spans = [g[0] if isinstance(g[0], tuple) else g for g in got]
    train = [x * shape[2] / m for m, span in zip(near, spans) for x in span]
    evals = [x for g in got if isinstance(g[0], tuple) for x in g[1] or ()]
    size = "size" if near == [shape[2]] else f"{' and '.join(map(str, near))} members, scaled"
    return (min(train), max(train)), _span(evals), size


def _pair(pair: tuple | None, f: str) -> str:
    """A (low, high) pair as one number where they agree, else low-high; '-' for None."""
    return "-" if pair is None else "-".join(dict.fromkeys(format(x, f) for x in pair))


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
        print("\n| env | B | population | pending trials | iteration | of (budget) | s per iteration (training) | evaluations left "
              "| s of evaluation per interval | pace from | hours left (no pruning) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for (env, b, running, _), c in sorted(left.items(), key=lambda kv: (kv[0][0], kv[0][1], not kv[0][2], kv[0][3] or "")):
            print(f"| {env} | {b} | {'running' if running else 'not started'} | {c['trials']} | {c['iteration']} | {c['budget'] or '-'} "
                  f"| {_pair(c['seconds_per_iteration'], '.2f')} | {c['evaluations_left']} | {_pair(c['seconds_per_evaluation'], '.1f')} "
                  f"| {c['pace_from'] or '-'} | {_pair(c['hours_left'], '.2f')} |")
        known = [c["hours_left"] for c in left.values() if c["hours_left"] is not None]
        hours = (sum(h[0] for h in known), sum(h[1] for h in known))
        print(f"\nleft: {_pair(hours, '.2f')} population hours if no member is pruned, over {len(known)} cells; "
              f"{len(left) - len(known)} cells without a pace or budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
