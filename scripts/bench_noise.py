"""Cost of the gradient-noise-scale estimators inside one PPO iteration (Learner.update).

For CartPole (obs (4,) float32, MLP [64, 64], settings of configs/cartpole.yaml) and Atari
(obs (4, 84, 84) uint8, Nature CNN, settings of configs/atari.yaml) one synthetic batch is
built and timed through four learners that differ only in the noise settings:

  off          noise.enabled=false
  free         noise.enabled=true   (micro-batch estimator, the default)
  per_example  free + noise.per_example_interval=1 (per_example_samples=256 by default)
  b_noise      free + noise.b_noise_interval=1

Each variant has its own Learner with the same seed (same initial weights) and sees the same
batch. Repeats are interleaved round-robin (off, free, per_example, b_noise, off, free, ...),
so slow drift of a shared machine hits all variants alike; the overhead is reported both from
the medians and as the median of the per-round paired ratios.

    python scripts/bench_noise.py                 # full: both tasks
    python scripts/bench_noise.py --only atari --repeats 10
    python scripts/bench_noise.py --quick         # smoke test (Atari at B=512, 1 epoch, few repeats)

Prints one JSON object to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common as C

TASKS = {
    # obs shape, dtype, actions (CartPole-v1: 2; Breakout: 4)
    "cartpole": dict(yaml="cartpole", obs_shape=(4,), obs_dtype="float32", num_actions=2),
    "atari": dict(yaml="atari", obs_shape=C.ATARI_OBS_SHAPE, obs_dtype="uint8", num_actions=4),
}
VARIANTS = ("off", "free", "per_example", "b_noise")


def variant_overrides(name: str, per_example_samples: int) -> list[str]:
    if name == "off":
        return ["noise.enabled=false"]
    if name == "free":
        return ["noise.enabled=true"]
    if name == "per_example":
        return ["noise.enabled=true", "noise.per_example_interval=1", f"noise.per_example_samples={per_example_samples}"]
    if name == "b_noise":
        # b_noise also uses per_example_samples as the size of its Hessian sample
        return ["noise.enabled=true", "noise.b_noise_interval=1", f"noise.per_example_samples={per_example_samples}"]
    raise ValueError(name)


def bench_task(task: str, args) -> dict:
    import torch

    from rlscale.ppo import resolve_device

    spec = TASKS[task]
    common = [f"device={args.device}"]
    if args.quick and task == "atari":
        # smoke test only: B=512 in 2 minibatches (still 2 micro-batches of 128 each), 1 epoch
        common += ["ppo.epochs=1", "ppo.env_steps_per_iteration=512", "ppo.num_minibatches=2"]
    if task == "cartpole" and args.cartpole_epochs:
        common += [f"ppo.epochs={args.cartpole_epochs}"]
    if task == "atari" and args.atari_epochs:
        common += [f"ppo.epochs={args.atari_epochs}"]
    cfgs = {v: C.load_cfg(spec["yaml"], common + variant_overrides(v, args.per_example_samples)) for v in VARIANTS}
    p = cfgs["off"].ppo
    device = resolve_device(cfgs["off"].device)
    B = p.env_steps_per_iteration
    batch = C.synthetic_batch(B, spec["obs_shape"], spec["obs_dtype"], spec["num_actions"], seed=args.seed)
    env_spec = C.env_spec(spec["obs_shape"], spec["obs_dtype"], spec["num_actions"], cfgs["off"])
    learners = {}
    for v in VARIANTS:  # each seeded alike: the same initial weights
        learners[v] = C.make_learner(cfgs[v], env_spec, device)
    it = {v: 0 for v in VARIANTS}
    metric_keys: dict[str, list[str]] = {}

    def one(v: str) -> float:
        lr = cfgs[v].ppo.lr
        C.sync(device)
        t0 = time.perf_counter()
        m = learners[v].update(batch, lr=lr, iteration=it[v])
        C.sync(device)
        dt = time.perf_counter() - t0
        it[v] += 1
        metric_keys.setdefault(v, sorted(k for k in m if k.startswith("noise/")))
        return dt

    C.log(f"{task}: B={B} minibatches={p.num_minibatches} microbatch={p.microbatch_size} epochs={p.epochs} "
          f"device={device} threads={torch.get_num_threads()}; warm-up x{args.warmup}")
    for _ in range(args.warmup):
        for v in VARIANTS:
            one(v)
    times = {v: [] for v in VARIANTS}
    for r in range(args.repeats):
        for v in VARIANTS:
            times[v].append(one(v))
        C.log(f"{task}: round {r + 1}/{args.repeats}: " + ", ".join(f"{v}={times[v][-1] * 1e3:.1f}ms" for v in VARIANTS))

    st = {v: C.stats(times[v]) for v in VARIANTS}
    med = {v: st[v]["median"] for v in VARIANTS}

    def paired(a: str, b: str, f):
        return statistics.median(f(x, y) for x, y in zip(times[a], times[b]))

    out = {
        "settings": {
            "env_steps_per_iteration": B,
            "num_minibatches": p.num_minibatches,
            "microbatch_size": p.microbatch_size,
            "epochs": p.epochs,
            "micro_batches_per_minibatch": -(-(B // p.num_minibatches) // p.microbatch_size),
            "obs_shape": list(spec["obs_shape"]),
            "obs_dtype": spec["obs_dtype"],
            "num_actions": spec["num_actions"],
            "per_example_samples": args.per_example_samples,
            "device": str(device),
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
        "iteration_s": st,
        "iteration_ms_median": {v: med[v] * 1e3 for v in VARIANTS},
        # the headline figure: the free estimator's overhead on one PPO iteration
        "noise_overhead_pct": 100.0 * (med["free"] / med["off"] - 1.0),
        "noise_overhead_pct_min": 100.0 * (st["free"]["min"] / st["off"]["min"] - 1.0),
        "noise_overhead_pct_paired_median": 100.0 * paired("free", "off", lambda a, b: a / b - 1.0),
        # one per-example / B_noise call per iteration (interval 1): extra time over 'free'
        "per_example_call_s": med["per_example"] - med["free"],
        "per_example_call_s_paired_median": paired("per_example", "free", lambda a, b: a - b),
        "per_example_overhead_pct_over_free": 100.0 * (med["per_example"] / med["free"] - 1.0),
        "b_noise_call_s": med["b_noise"] - med["free"],
        "b_noise_call_s_paired_median": paired("b_noise", "free", lambda a, b: a - b),
        "b_noise_overhead_pct_over_free": 100.0 * (med["b_noise"] / med["free"] - 1.0),
        "noise_metrics_reported": metric_keys,  # proof each estimator actually ran
    }
    ok_pe = "noise/b_simple_per_example" in metric_keys.get("per_example", [])
    ok_bn = "noise/b_noise" in metric_keys.get("b_noise", [])
    out["estimators_ran"] = {"free": "noise/b_simple" in metric_keys.get("free", []), "per_example": ok_pe, "b_noise": ok_bn}
    C.log(f"{task}: off={med['off'] * 1e3:.1f}ms free={med['free'] * 1e3:.1f}ms "
          f"overhead={out['noise_overhead_pct']:+.1f}% per_example_call={out['per_example_call_s'] * 1e3:.1f}ms "
          f"b_noise_call={out['b_noise_call_s'] * 1e3:.1f}ms")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(TASKS), help="run one task only")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 20 CartPole / 5 Atari; quick: 3 / 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed rounds per variant first (default 2; quick: 1)")
    ap.add_argument("--quick", action="store_true", help="smoke test: few repeats, Atari at B=512, 2 minibatches, 1 epoch")
    ap.add_argument("--per-example-samples", type=int, default=256)
    ap.add_argument("--cartpole-epochs", type=int, default=0, help="override ppo.epochs for CartPole (0: the YAML's 20)")
    ap.add_argument("--atari-epochs", type=int, default=0, help="override ppo.epochs for Atari (0: the YAML's 4)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    C.set_threads(args.threads)
    import torch

    from rlscale.ppo import resolve_device

    # the learner process's settings, as `rlscale train` applies them (once per process)
    C.configure_learner(resolve_device(args.device), args.threads)
    tasks = [args.only] if args.only else ["cartpole", "atari"]
    result = {
        "benchmark": "bench_noise",
        "quick": args.quick,
        "machine": C.machine_info(str(resolve_device(args.device))),
        "tasks": {},
    }
    for task in tasks:
        a = argparse.Namespace(**vars(args))
        if a.repeats is None:
            a.repeats = (3 if task == "cartpole" else 2) if args.quick else (20 if task == "cartpole" else 5)
        if a.warmup is None:
            a.warmup = 1 if args.quick else 2
        result["tasks"][task] = bench_task(task, a)
        # flat headline keys
        r = result["tasks"][task]
        result[f"{task}_noise_overhead_pct"] = r["noise_overhead_pct"]
        result[f"{task}_per_example_call_s"] = r["per_example_call_s"]
        result[f"{task}_b_noise_call_s"] = r["b_noise_call_s"]
    result["machine"]["torch_threads_at_end"] = torch.get_num_threads()
    C.emit(result)


if __name__ == "__main__":
    main()
