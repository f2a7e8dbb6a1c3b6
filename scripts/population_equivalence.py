"""Equivalence: population members and standalone runs of the same seeds are the same trials.

Trains configs/cartpole.yaml (workers.backend=local, W&B off) for seeds 1 .. 10 twice: once as
one 10-member population (rlscale.population.train_population) and once as 10 standalone runs
(rlscale.train.train), all with torch_threads=1 (--torch-threads), then compares the two samples of env steps to a smoothed return of 475
(a run that never reaches it counts as one step past its budget, i.e. it ranks last) and of the
final smoothed return (`charts/episode_return_smoothed` of the last metrics row) with two-sided
two-sample tests: Mann-Whitney U (scipy.stats.mannwhitneyu) and Kolmogorov-Smirnov
(scipy.stats.ks_2samp). Prints one JSON object; progress goes to stderr.

    python scripts/population_equivalence.py                         # seeds 1..10, 100k env steps each
    python scripts/population_equivalence.py --seeds 1 2 --env-steps 2048 --target 30   # a quick check

The runs are deterministic (local workers, seeded), so the output is reproducible on a machine
with the same torch build (apart from `wall_s`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import BASE_OVERRIDES, CARTPOLE_YAML, emit, log


def member_cfgs(seeds: list[int], env_steps: int | None, target: float, threads: int) -> list:
    from rlscale.config import load_train_config

    extra = [f"total_env_steps={env_steps}"] if env_steps else []
    return [load_train_config(CARTPOLE_YAML, [*BASE_OVERRIDES, "workers.backend=local", f"seed={s}", f"targets=[{target}]",
                                              "checkpoint_interval=1000000", f"torch_threads={threads}", *extra]) for s in seeds]


def outcome(run_dir: Path, summary: dict, target: float, budget: int) -> dict:
    import pandas as pd

    m = pd.read_csv(run_dir / "metrics.csv")
    crossing = summary["targets"].get(str(float(target)), {})
    steps = crossing.get("env_steps") if crossing.get("reached") else None
    return {"env_steps_to_target": steps, "ranked_env_steps": steps if steps is not None else budget + 1,
            "final_smoothed_return": float(m["charts/episode_return_smoothed"].iloc[-1])}


def tests(a: list[float], b: list[float]) -> dict:
    from scipy.stats import ks_2samp, mannwhitneyu

    u = mannwhitneyu(a, b, alternative="two-sided")
    ks = ks_2samp(a, b, alternative="two-sided")
    return {"mannwhitneyu_U": float(u.statistic), "mannwhitneyu_p": float(u.pvalue),
            "ks_D": float(ks.statistic), "ks_p": float(ks.pvalue)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)), help="seeds (default 1..10)")
    ap.add_argument("--env-steps", type=int, default=0, help="env-step budget per run (default: the config's, 100000)")
    ap.add_argument("--target", type=float, default=475.0, help="smoothed return whose first crossing is compared (default 475)")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch_threads of every run (default 1: two runs' worth of "
                    "threads on a shared 2-core machine slow both modes alike; results do not depend on the wall time)")
    ap.add_argument("--out", type=Path, help="keep the run directories here (default: a temporary directory)")
    args = ap.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or args.env_steps < 0:
        ap.error("--seeds must be distinct and --env-steps >= 0")
    from rlscale.population import train_population
    from rlscale.train import train

    cfgs = member_cfgs(args.seeds, args.env_steps or None, args.target, args.torch_threads)
    budget = cfgs[0].total_env_steps
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        pop_dirs = [root / "population" / f"seed_{s}" for s in args.seeds]
        alone_dirs = [root / "standalone" / f"seed_{s}" for s in args.seeds]
        log(f"population of {len(cfgs)}")
        t0 = time.perf_counter()
        pop = train_population(cfgs, pop_dirs, overwrite=True, quiet=True)
        pop_s = time.perf_counter() - t0
        alone = []
        for cfg, d in zip(cfgs, alone_dirs):
            log(f"standalone seed {cfg.seed}")
            alone.append(train(cfg, d, overwrite=True, quiet=True))
        alone_s = time.perf_counter() - t0 - pop_s
        rows = {"population": [outcome(d, s, args.target, budget) for d, s in zip(pop_dirs, pop)],
                "standalone": [outcome(d, s, args.target, budget) for d, s in zip(alone_dirs, alone)]}
    col = lambda mode, key: [r[key] for r in rows[mode]]  # noqa: E731
    emit({
        "config": str(CARTPOLE_YAML.name), "overrides": ["workers.backend=local", "tracking.wandb_mode=disabled", f"torch_threads={args.torch_threads}"],
        "seeds": args.seeds, "env_steps_per_run": budget, "target": args.target,
        "population": {"env_steps_to_target": col("population", "env_steps_to_target"),
                       "final_smoothed_return": col("population", "final_smoothed_return")},
        "standalone": {"env_steps_to_target": col("standalone", "env_steps_to_target"),
                       "final_smoothed_return": col("standalone", "final_smoothed_return")},
        "test_env_steps_to_target": tests(col("population", "ranked_env_steps"), col("standalone", "ranked_env_steps")),
        "test_final_smoothed_return": tests(col("population", "final_smoothed_return"), col("standalone", "final_smoothed_return")),
        "seeds_with_equal_env_steps_to_target": sum(a == b for a, b in zip(col("population", "env_steps_to_target"),
                                                                            col("standalone", "env_steps_to_target"))),
        "wall_s": {"population": pop_s, "standalone": alone_s},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
