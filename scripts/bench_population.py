"""Study throughput: the same N trials as one population and as N separate trials, back to back.

The trials are each environment's default config (configs/cartpole.yaml for classic control,
configs/minatar.yaml for MinAtar: its small CNN) with workers.backend=local, W&B off, a fixed
env-step budget (--env-steps), seeds 1 .. N and learning rates cycling over LRS. For each N, two fresh
child processes (this script with --child) train them: one with rlscale.population.
train_population, one with rlscale.train.train called N times in turn (the separate trials of
a sweep, minus the process start). Each child reports its wall time, where the time went (the
sample and update seconds of the members' metrics.csv: a population's are shared by its
members, so they are counted once) and its peak RSS (ru_maxrss).

    python scripts/bench_population.py                       # N = 1, 4, 16
    python scripts/bench_population.py --members 1 4 16 64
    python scripts/bench_population.py --quick               # N = 1, 2 on a tiny budget
    python scripts/bench_population.py --env-ids MinAtar/Breakout-v1 --env-steps 16384

Prints one JSON object to stdout: {"machine": ..., "records": [one record per env and N with
env_id, members, population_trials_per_hour, separate_trials_per_hour, speedup, the time split,
peak_rss_mb of both modes, the population's RSS per member and, beside the smallest N, per
added member]}; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BASE_OVERRIDES, CARTPOLE_YAML, ROOT, emit, log, machine_info

LRS = (1e-3, 5e-4, 2e-3, 2.5e-4)  # the members' learning rates, cycled
MINATAR_YAML = ROOT / "configs" / "minatar.yaml"


def default_config(env_id: str) -> Path:
    return MINATAR_YAML if env_id.startswith("MinAtar/") else CARTPOLE_YAML


def trial_cfgs(env_id: str, members: int, env_steps: int, extra: list[str]) -> list:
    from rlscale.config import load_train_config

    return [load_train_config(default_config(env_id), [*BASE_OVERRIDES, f"env.id={env_id}", "workers.backend=local",
                                                       f"total_env_steps={env_steps}", f"seed={i + 1}", f"ppo.lr={LRS[i % len(LRS)]}",
                                                       "checkpoint_interval=1000000", *extra])
            for i in range(members)]


def child(env_id: str, mode: str, members: int, env_steps: int, extra: list[str]) -> dict:
    """Train the trials one way in this process; wall time, time split and peak RSS."""
    import pandas as pd

    from rlscale.population import train_population
    from rlscale.train import train

    cfgs = trial_cfgs(env_id, members, env_steps, extra)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"trial_{i}" for i in range(members)]
        t0 = time.perf_counter()
        if mode == "population":
            train_population(cfgs, dirs, quiet=True)
        else:
            for cfg, d in zip(cfgs, dirs):
                train(cfg, d, quiet=True)
        wall = time.perf_counter() - t0
        tables = [pd.read_csv(d / "metrics.csv") for d in (dirs[:1] if mode == "population" else dirs)]
    return {"wall_s": wall, "sample_s": sum(float(m["time/sample_s"].sum()) for m in tables),
            "update_s": sum(float(m["time/update_s"].sum()) for m in tables),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(env_id: str, mode: str, members: int, env_steps: int, extra: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", env_id, mode, str(members), str(env_steps), "--", *extra],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench_population: the {mode} child for N={members} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def record(env_id: str, members: int, env_steps: int, extra: list[str]) -> dict:
    log(f"{env_id} N={members}: population")
    pop = measure(env_id, "population", members, env_steps, extra)
    log(f"{env_id} N={members}: separate trials ({pop['wall_s']:.1f} s as a population)")
    sep = measure(env_id, "separate", members, env_steps, extra)
    log(f"{env_id} N={members}: {sep['wall_s']:.1f} s separately")
    per_hour = lambda r: 3600.0 * members / r["wall_s"]  # noqa: E731
    return {
        "env_id": env_id, "members": members, "env_steps_per_trial": env_steps, "overrides": extra,
        "population_trials_per_hour": per_hour(pop), "separate_trials_per_hour": per_hour(sep),
        "speedup": sep["wall_s"] / pop["wall_s"],
        "population_wall_s": pop["wall_s"], "separate_wall_s": sep["wall_s"],
        "population_sample_s": pop["sample_s"], "population_update_s": pop["update_s"],
        "separate_sample_s": sep["sample_s"], "separate_update_s": sep["update_s"],
        "population_peak_rss_mb": pop["peak_rss_mb"], "separate_peak_rss_mb": sep["peak_rss_mb"],
        "population_rss_mb_per_member": pop["peak_rss_mb"] / members,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[1, 4, 16], help="population sizes N (default 1 4 16)")
    ap.add_argument("--env-steps", type=int, default=10240, help="env-step budget of every trial (default 10240)")
    ap.add_argument("--env-ids", nargs="+", default=["CartPole-v1"],
                    help="environments, each with its family's default config (default CartPole-v1)")
    ap.add_argument("--quick", action="store_true", help="N = 1, 2 with 1024 env steps per trial")
    ap.add_argument("overrides", nargs="*", help="train-config overrides for every trial, e.g. torch_threads=1")
    ap.add_argument("--child", nargs=4, metavar=("ENV_ID", "MODE", "N", "ENV_STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        env_id, mode, n, steps = args.child
        print(json.dumps(child(env_id, mode, int(n), int(steps), args.overrides)))
        return 0
    members, env_steps = ([1, 2], 1024) if args.quick else (args.members, args.env_steps)
    if min(members) < 1 or env_steps < 1:
        ap.error("--members and --env-steps must be positive")
    records = []
    for env_id in args.env_ids:
        rows = [record(env_id, n, env_steps, args.overrides) for n in sorted(members)]
        for r in rows[1:]:  # what one more member costs, beside the smallest population's footprint
            r["population_rss_mb_per_added_member"] = ((r["population_peak_rss_mb"] - rows[0]["population_peak_rss_mb"])
                                                       / (r["members"] - rows[0]["members"]))
        records += rows
    emit({"machine": machine_info("cpu"), "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
