"""How long a run's evaluation games last at its newest checkpoint.

    python scripts/eval_lengths.py RUN_DIR [RUN_DIR ...]

For each run (a trial directory of a sweep, too), plays the evaluation that the run would make
at its newest checkpoint's iteration: its eval envs, seeds and action draws
(`rlscale.evaluation.Evaluator`) with the checkpoint's weights. Prints per run the iteration,
whether the run evaluated there (its `eval.interval` or `eval.env_steps` falls on it), the
steps until its last eval game ended (or was cut: eval.max_episode_steps), how many were cut, the seconds they took and the games' returns. An
evaluation lasts as long as its longest game, so a policy that survives without scoring can make
evaluation, not training, set what a run (and a population, which waits for its slowest member)
costs. The replay plays the standalone model: for a run trained alone that evaluated at that
iteration it is that evaluation exactly; a population's batched forward rounds differently, so a member's replay can
draw other actions than its population did.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


def replay(run_dir: Path) -> dict:
    """{"iteration", "evaluated", "steps", "games_cut", "seconds", "returns"} of the evaluation at the run's newest checkpoint."""
    from rlscale import checkpoint
    from rlscale.config import load_train_config
    from rlscale.errors import ConfigError
    from rlscale.evaluation import Evaluator

    if not checkpoint.list_checkpoints(run_dir):
        raise ConfigError(f"'{run_dir}' holds no checkpoint; pass a run directory that training wrote checkpoints to")
    path, state = checkpoint.load_latest(run_dir, warn=lambda msg: print(msg, file=sys.stderr))
    cfg = load_train_config(state["config"])
    if not cfg.eval.enabled:
        raise ConfigError(f"'{run_dir}' does not evaluate (eval.interval and eval.env_steps are 0); nothing to replay")
    counters = state["run"]["counters"]
    iteration = int(counters["iteration"])
    evaluated = cfg.eval.due(iteration, int(counters["env_steps_used"]), int(cfg.ppo.env_steps_per_iteration))
    evaluator = Evaluator(cfg.env, cfg.model, cfg.eval.episodes, cfg.seed, cfg.eval.max_episode_steps)
    evaluator.policy.load_state_dict(state["learner"]["model"])
    t0, steps = time.perf_counter(), 0
    try:
        with torch.no_grad():
            obs = evaluator.begin(iteration)
            while obs is not None:
                obs = evaluator.advance(evaluator.policy(torch.from_numpy(obs))[0])
                steps += 1
    finally:
        evaluator.close()
    return {"iteration": iteration, "evaluated": evaluated, "steps": steps, "games_cut": evaluator.games_cut,
            "seconds": time.perf_counter() - t0, "returns": evaluator.returns()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+")
    args = ap.parse_args(argv)
    from rlscale.errors import RlscaleError

    torch.set_num_threads(1)
    print("| run | iteration | evaluated there | steps | games cut | seconds | mean return | returns |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run_dir in args.run_dirs:
        try:
            r = replay(run_dir)
        except (RlscaleError, OSError, RuntimeError) as e:
            print(f"eval_lengths: {run_dir}: {e}", file=sys.stderr)
            return 2
        print(f"| {run_dir.name} | {r['iteration']} | {'yes' if r['evaluated'] else 'no'} | {r['steps']} | {r['games_cut']} | {r['seconds']:.1f} | {np.mean(r['returns']):.3g} "
              f"| {' '.join(format(x, 'g') for x in r['returns'])} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
