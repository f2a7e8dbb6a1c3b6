"""Rollout throughput: ale-py's C++ vector env alone vs. rlscale's rollout actors.

(a) limit: ale-py's ``AtariVectorEnv`` with num_threads = cores, pre-generated random actions,
    rlscale's env settings (sticky 0.25, noop 30, frameskip 4, stack 4, same-step autoreset),
    num_envs in --limit-envs-mult x cores; env steps/s per game, best over num_envs.
(b) rlscale's pool (rlscale.actors.make_pool) with workers.backend=ray, num_workers = cores,
    num_envs_per_worker E, fragments of T steps, one ``pool.sample`` round = W*E*T env steps,
    a new weights version every round (as in training):
      - cnn:     the real RolloutWorker with the Nature-CNN ActorCritic;
      - trivial: ``TrivialRolloutWorker`` (below), the same RolloutWorker whose policy is
        replaced by a uniform-random sampler returning zeros for log-probs and values.
    The same two with workers.backend=local (in-process, workers called in turn).

How the trivial policy gets in without touching rlscale: RayPool/LocalPool build workers
from the module-level name ``rlscale.actors.RolloutWorker``; while the pool is constructed,
that name is pointed at ``TrivialRolloutWorker`` (a subclass defined here) and restored
right after. Ray then wraps it with ``ray.remote`` exactly as it wraps the real class (the
subclass, living in ``__main__``, is shipped to the actors by value by cloudpickle), so the
trivial figure goes through the same code path - RayPool.sample, ray.put of the weights,
RolloutWorker.sample's loop, Fragment transfer - and differs only in the policy's forward
pass. A subclass (rather than patching ActorCritic.act globally) keeps the change local to
the pools built for the trivial runs.

The figures compared are measured in interleaved rounds (limit, then the pools, per game and
round); ratios are formed within a round and the medians over rounds reported, because the
speed of a shared machine drifts over minutes. The overall ratio keys are the worst game's.
Two more views of the same pools: "pipelined" requests the next round before collecting the
last (as training with workers.overlap=true), and "paired" (``*_paired_to_limit_ratio``)
alternates --pairs times a burst of the bare vector env with the pool's own number of envs and
a strict pool round of the same env steps, seconds apart, and reports the median time ratio:
the comparison least disturbed by the machine's drift (Ray's idle daemons run during the
bursts too).

    python scripts/bench_rollout.py               # full
    python scripts/bench_rollout.py --quick       # smoke test

Prints one JSON object to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import _common as C
import numpy as np
import torch

import rlscale.actors as actors_mod
from rlscale.actors import RolloutWorker

# ---------------------------------------------------------------------------------------------
# the trivial policy


class RandomPolicy(torch.nn.Module):
    """ActorCritic's rollout interface (act, value, load_state_dict) with no network."""

    def __init__(self, num_actions: int):
        super().__init__()
        self.num_actions = num_actions

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None):
        n = obs.shape[0]
        actions = torch.randint(0, self.num_actions, (n,), generator=generator, dtype=torch.int64)
        return actions, torch.zeros(n), torch.zeros(n)

    @torch.no_grad()
    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(obs.shape[0])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # weights are ignored
        return None


class TrivialRolloutWorker(RolloutWorker):
    """RolloutWorker with the Nature CNN replaced by a uniform-random action sampler."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy = RandomPolicy(self.env.num_actions)


@contextlib.contextmanager
def worker_class(cls):
    """Point rlscale.actors.RolloutWorker at `cls` while a pool is built."""
    saved = actors_mod.RolloutWorker
    actors_mod.RolloutWorker = cls
    try:
        yield
    finally:
        actors_mod.RolloutWorker = saved


# ---------------------------------------------------------------------------------------------
# (a) the C++ vector env alone


def game_ids(game: str) -> tuple[str, str]:
    """'Pong' -> ('ALE/Pong-v5', 'pong')."""
    from rlscale.envs.atari import atari_game

    env_id = f"ALE/{game}-v5"
    return env_id, atari_game(env_id)


def limit_env(game: str, num_envs: int, num_threads: int):
    """ale-py's AtariVectorEnv with rlscale's env settings, nothing else."""
    from ale_py.vector_env import AtariVectorEnv

    from rlscale.config import EnvConfig

    env_id, rom = game_ids(game)
    e = EnvConfig(id=env_id)  # rlscale's defaults for the env settings
    return AtariVectorEnv(
        rom, num_envs, num_threads=num_threads,
        repeat_action_probability=e.repeat_action_probability, noop_max=e.noop_max, frameskip=e.frame_skip,
        stack_num=e.frame_stack, max_num_frames_per_episode=e.max_episode_frames, autoreset_mode="SameStep",
        reward_clipping=False, episodic_life=False,
    )


def random_steps(env, actions: np.ndarray) -> float:
    """Step the env through pre-drawn actions [steps, num_envs]; seconds taken."""
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    return time.perf_counter() - t0


def bench_limit(game: str, num_envs: int, num_threads: int, steps: int, warmup: int, repeats: int, seed: int) -> dict:
    env = limit_env(game, num_envs, num_threads)
    try:
        rng = np.random.default_rng(seed)
        actions = rng.integers(0, int(env.single_action_space.n), size=(warmup + steps, num_envs), dtype=np.int64)
        env.reset(seed=seed)
        random_steps(env, actions[:warmup])
        times = [random_steps(env, actions[warmup:]) for _ in range(repeats)]
    finally:
        env.close()
    st = C.stats(times)
    n = steps * num_envs
    return {"num_envs": num_envs, "num_threads": num_threads, "steps_per_repeat": n, "time_s": st,
            "env_steps_per_s": n / st["median"], "env_steps_per_s_best": n / st["min"]}


# ---------------------------------------------------------------------------------------------
# (b) rlscale's pools


def bench_pool(game: str, backend: str, policy: str, args, num_workers: int) -> dict:
    from rlscale.model import build_model

    env_id, _ = game_ids(game)
    cfg = C.load_cfg("atari", [
        f"env.id={env_id}", f"workers.backend={backend}", f"workers.num_workers={num_workers}",
        f"workers.num_envs_per_worker={args.envs_per_worker}", f"seed={args.seed}",
    ])
    cls = TrivialRolloutWorker if policy == "trivial" else RolloutWorker
    t0 = time.perf_counter()
    with worker_class(cls):
        pool = actors_mod.make_pool(cfg)
    try:
        spec = pool.spec()
        startup = time.perf_counter() - t0
        model = build_model(spec, cfg.model)  # the workers' policy (spec: an rlscale.envs.EnvSpec)
        weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}  # as Learner.get_weights
        W, E, T = len(pool.envs_per_worker), args.envs_per_worker, args.fragment_length
        lengths = [T] * W
        version = 0
        for _ in range(args.pool_warmup):
            pool.sample(lengths, weights, version)
            version += 1
        n = W * E * T

        def check(res) -> None:
            got = sum(f.size for f in res.fragments)
            if got != n or res.failures:
                raise RuntimeError(f"pool returned {got} steps (expected {n}), failures={res.failures}")

        times = []
        for _ in range(args.pool_repeats):  # strict: a round is requested when the last one is in
            t0 = time.perf_counter()
            check(pool.sample(lengths, weights, version))
            times.append(time.perf_counter() - t0)
            version += 1
        pipelined = None
        if backend == "ray":
            # As training with workers.overlap=true: the next round is requested (with new
            # weights) before the last one is collected, so actors go on without waiting for
            # the slower one or for the driver.
            t0 = time.perf_counter()
            inflight = pool.submit(lengths, weights, version)
            for r in range(args.pool_repeats):
                version += 1
                nxt = pool.submit(lengths, weights, version) if r + 1 < args.pool_repeats else None
                check(pool.collect(inflight))
                inflight = nxt
            pipelined = n * args.pool_repeats / (time.perf_counter() - t0)
        pairs = []
        if backend == "ray" and args.pairs:
            # Paired with the limit seconds apart: a burst of the bare vector env with the pool's
            # own W*E envs on all cores (the actors idle meanwhile), then one strict pool round of
            # the same number of env steps; the ratio of their times is the pool's share of the
            # limit, free of the machine's drift over minutes.
            env = limit_env(game, W * E, args.cores or C.cpu_count())
            try:
                rng = np.random.default_rng(args.seed)
                env.reset(seed=args.seed)
                draw = lambda: rng.integers(0, int(env.single_action_space.n), size=(T, W * E), dtype=np.int64)  # noqa: E731
                random_steps(env, draw())  # warm-up
                for _ in range(args.pairs):
                    t_limit = random_steps(env, draw())
                    t0 = time.perf_counter()
                    check(pool.sample(lengths, weights, version))
                    pairs.append(t_limit / (time.perf_counter() - t0))
                    version += 1
            finally:
                env.close()
    finally:
        pool.close()
    st = C.stats(times)
    out = {"backend": backend, "policy": policy, "num_workers": W, "envs_per_worker": E, "fragment_length": T,
           "env_steps_per_round": n, "startup_s": startup, "round_s": st,
           "env_steps_per_s": n / st["median"], "env_steps_per_s_best": n / st["min"],
           "pipelined_env_steps_per_s": pipelined,
           "paired_to_limit_ratio": float(np.median(pairs)) if pairs else None, "paired_to_limit_ratio_pairs": pairs}
    C.log(f"{game} {backend}/{policy}: W={W} E={E} T={T}: {out['env_steps_per_s']:.0f} env steps/s (median)"
          + (f", pipelined {pipelined:.0f}" if pipelined else "")
          + (f", paired with the limit: {out['paired_to_limit_ratio']:.3f} of it" if pairs else ""))
    return out


def run_round(r: int, args, cores: int, num_workers: int, result: dict) -> None:
    """One round: for each game the limit (Ray down), then the Ray pools (Ray up).

    The machine's speed drifts by 10-20% over minutes here, so the figures that are compared
    are taken minutes apart at most, and ratios are formed within a round.
    """
    import ray

    for g in args.games:
        rec = result["rounds"][r].setdefault(g, {})
        if not args.skip_limit:
            runs = []
            for mult in args.limit_envs_mult:
                x = bench_limit(g, mult * cores, cores, args.limit_steps, args.limit_warmup, args.limit_repeats, args.seed + r)
                C.log(f"round {r} {g} limit: num_envs={x['num_envs']} threads={cores}: {x['env_steps_per_s']:.0f} env steps/s")
                runs.append(x)
            best = max(runs, key=lambda x: x["env_steps_per_s"])
            rec["limit_runs"] = runs
            rec["limit_env_steps_per_s"] = best["env_steps_per_s"]
            rec["limit_best_num_envs"] = best["num_envs"]
        if not args.skip_ray:
            from rlscale.cluster import ensure_ray

            ensure_ray()
            try:
                result["machine"]["ray_cluster_cpus"] = ray.cluster_resources().get("CPU")
                for policy in ("trivial", "cnn"):
                    x = bench_pool(g, "ray", policy, args, num_workers)
                    rec[f"ray_{policy}"] = x
                    rec[f"{policy}_policy_env_steps_per_s"] = x["env_steps_per_s"]
                    rec[f"{policy}_policy_pipelined_env_steps_per_s"] = x["pipelined_env_steps_per_s"]
                    if x["paired_to_limit_ratio"] is not None:
                        rec[f"{policy}_paired_to_limit_ratio"] = x["paired_to_limit_ratio"]
            finally:
                ray.shutdown()
        if "limit_env_steps_per_s" in rec:
            # the limit at the pool's own number of envs, beside the best over num_envs
            same = [x for x in rec["limit_runs"] if x["num_envs"] == num_workers * args.envs_per_worker]
            if same:
                rec["limit_same_envs_env_steps_per_s"] = same[0]["env_steps_per_s"]
            for policy in ("trivial", "cnn"):
                for mode in ("", "pipelined_"):
                    if rec.get(f"{policy}_policy_{mode}env_steps_per_s"):
                        rec[f"{policy}_{mode}to_limit_ratio"] = rec[f"{policy}_policy_{mode}env_steps_per_s"] / rec["limit_env_steps_per_s"]


def summarize(result: dict, games: list[str]) -> None:
    """Per game: the median over rounds of every figure and of the within-round ratios."""
    keys = ("limit_env_steps_per_s", "limit_same_envs_env_steps_per_s",
            "trivial_policy_env_steps_per_s", "cnn_policy_env_steps_per_s",
            "trivial_policy_pipelined_env_steps_per_s", "cnn_policy_pipelined_env_steps_per_s",
            "trivial_to_limit_ratio", "cnn_to_limit_ratio", "trivial_pipelined_to_limit_ratio", "cnn_pipelined_to_limit_ratio",
            "trivial_paired_to_limit_ratio", "cnn_paired_to_limit_ratio",
            "local_trivial_policy_env_steps_per_s", "local_cnn_policy_env_steps_per_s")
    for g in games:
        per = result["per_game"][g]
        for k in keys:
            xs = [rd[g][k] for rd in result["rounds"] if g in rd and k in rd[g]]
            if xs:
                per[k] = float(np.median(xs))
                per[k + "_rounds"] = xs

    # overall keys: the best game for throughputs, the worst game for the ratios to the limit
    def over_games(key, pick):
        xs = [d[key] for d in result["per_game"].values() if key in d]
        return pick(xs) if xs else None

    for k in keys:
        result[k] = over_games(k, min if k.endswith("ratio") else max)
    t, c = result["trivial_policy_env_steps_per_s"], result["cnn_policy_env_steps_per_s"]
    result["cnn_to_trivial_ratio"] = c / t if t and c else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", nargs="+", default=["Pong", "Breakout"], help="ALE game names (ALE/<Game>-v5)")
    ap.add_argument("--cores", type=int, default=0, help="cores to use (0: the CPUs this process may run on)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (limit, then pools) per game")
    ap.add_argument("--limit-envs-mult", type=int, nargs="+", default=[2, 4, 8], help="num_envs = mult x cores for the limit")
    ap.add_argument("--limit-steps", type=int, default=500, help="vector steps per timed limit repeat")
    ap.add_argument("--limit-warmup", type=int, default=100, help="untimed vector steps first")
    ap.add_argument("--limit-repeats", type=int, default=5)
    ap.add_argument("--envs-per-worker", type=int, default=4, help="E per rollout worker (configs/atari.yaml: 4)")
    ap.add_argument("--fragment-length", type=int, default=128, help="T steps per fragment (configs/atari.yaml: 128)")
    ap.add_argument("--pool-warmup", type=int, default=1, help="untimed pool.sample rounds first")
    ap.add_argument("--pool-repeats", type=int, default=5, help="timed pool.sample rounds")
    ap.add_argument("--pairs", type=int, default=20,
                    help="limit bursts paired with strict Ray pool rounds, seconds apart (0: none)")
    ap.add_argument("--num-workers", type=int, default=0, help="Ray rollout workers (0: cores)")
    ap.add_argument("--local-workers", type=int, default=1, help="LocalPool workers (called in turn in-process)")
    ap.add_argument("--skip-limit", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke test: one game, one round, tiny sizes")
    args = ap.parse_args()
    if args.quick:
        args.games, args.rounds = args.games[:1], 1
        args.limit_envs_mult = [2]
        args.limit_steps, args.limit_warmup, args.limit_repeats = 50, 10, 2
        args.fragment_length, args.pool_warmup, args.pool_repeats, args.pairs = 16, 1, 2, 2
    cores = args.cores or C.cpu_count()
    num_workers = args.num_workers or cores
    import ale_py
    import ray

    result = {
        "benchmark": "bench_rollout",
        "quick": args.quick,
        "machine": {**C.machine_info("cpu"), "ale_py_version": ale_py.__version__, "ray_version": ray.__version__},
        "settings": {k: v for k, v in vars(args).items()} | {"cores": cores, "ray_num_workers": num_workers},
        "rounds": [{} for _ in range(args.rounds)],
        "per_game": {g: {} for g in args.games},
    }
    for r in range(args.rounds):
        run_round(r, args, cores, num_workers, result)
    # in-process backend (last: RolloutWorker sets this process's torch threads to 1)
    if not args.skip_local:
        for g in args.games:
            for policy in ("trivial", "cnn"):
                x = bench_pool(g, "local", policy, args, args.local_workers)
                result["rounds"][-1][g][f"local_{policy}"] = x
                result["rounds"][-1][g][f"local_{policy}_policy_env_steps_per_s"] = x["env_steps_per_s"]
    summarize(result, args.games)
    result["frames_per_env_step"] = 4
    result["machine"]["torch_threads_at_end"] = torch.get_num_threads()
    C.emit(result)


if __name__ == "__main__":
    main()
