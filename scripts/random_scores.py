"""Scores of a uniformly random policy: the zero of a study's target fractions.

Plays whole episodes of each env (its family's defaults, the env config a run would build)
with actions drawn uniformly at random, and prints one JSON object: per env id the mean, the
standard deviation and the standard error of the episode return, over --episodes episodes.

    python scripts/random_scores.py CartPole-v1 Acrobot-v1 LunarLander-v3 MinAtar/Breakout-v1
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _common import emit, log, machine_info


def random_score(env_id: str, episodes: int, seed: int, num_envs: int = 16) -> dict:
    from rlscale.config import EnvConfig
    from rlscale.envs import make_vector_env

    env = make_vector_env(EnvConfig(id=env_id), num_envs, seed)
    rng = np.random.default_rng(seed)
    env.reset()
    returns: list[float] = []
    steps = 0
    try:
        while len(returns) < episodes:
            step = env.step(rng.integers(env.spec.num_actions, size=num_envs))
            returns += [float(r) for r in step.episode_returns]
            steps += num_envs
    finally:
        env.close()
    r = np.array(returns[:episodes])
    return {"mean": float(r.mean()), "std": float(r.std()), "sem": float(r.std(ddof=1) / np.sqrt(len(r))),
            "episodes": int(len(r)), "env_steps": steps, "seed": seed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("env_ids", nargs="+")
    ap.add_argument("--episodes", type=int, default=1000, help="finished episodes per env (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.episodes < 2:
        ap.error("--episodes must be at least 2")
    scores = {}
    for env_id in args.env_ids:
        log(f"{env_id}: {args.episodes} random episodes")
        scores[env_id] = random_score(env_id, args.episodes, args.seed)
    emit({"machine": machine_info("cpu"), "random_scores": scores})
    return 0


if __name__ == "__main__":
    sys.exit(main())
