"""Learner throughput and memory vs. batch size: one PPO iteration on Atari-shaped data.

For B = env_steps_per_iteration = 2^10 .. 2^max_log2 (Nature CNN, uint8 obs (4, 84, 84) as
frame stacks storing one frame per step, as rollout workers send them, or dense with --obs-format dense,
configs/atari.yaml otherwise, num_minibatches fixed (4), microbatch_size fixed (256), 1 epoch)
each size runs in a fresh child process (this script with --child) that builds a synthetic
batch in rlscale.rollout's dict format, builds the Learner, warms up on a 1024-step slice of
the batch, then times --repeats full iterations (Learner.update).

Memory, CPU (children run with glibc's MALLOC_MMAP_THRESHOLD_ fixed, --malloc-mmap-threshold, so
that freed large blocks leave the process and RSS follows live memory): the child's peak RSS (ru_maxrss, taken by the parent with os.wait4 for exactly
that child; the child's own getrusage(RUSAGE_SELF) is recorded too). A baseline child builds the
model and does one tiny update (B=64). Then
    working_bytes = peak_rss - batch_storage - baseline_rss,
the memory the update needs beyond its input and the fixed cost of torch + model + Adam;
micro-batching should keep it flat in B, which working_growth_pct (smallest -> largest B) checks.
Memory, CUDA: torch.cuda.max_memory_allocated in the child, and batch_storage counts the part
Learner.update copies to the device (obs, actions, logp, values, advantages, returns).

    python scripts/bench_learner.py                    # 2^10 .. 2^18 (2^18: 1.9 GB of frames; dense 7.4 GB)
    python scripts/bench_learner.py --max-log2 16 --repeats 5
    python scripts/bench_learner.py --quick            # smoke test: 2^10 .. 2^12, 1 repeat

--page-faults measures instead what the CPU learner's heap settings (rlscale.util.keep_heap_memory,
applied by configure_learner_process) are for: the minor page faults (getrusage ru_minflt) of
one settled Atari update (B=256, one minibatch of two micro-batches of 128, 1 epoch, frame
stacks), the fewest over --page-fault-repeats updates after 3 untimed ones, in three fresh CPU
children: the learner's heap settings, glibc's defaults (configure_learner_process without
keep_heap_memory) and a user's MALLOC_TRIM_THRESHOLD_=131072 (a user's MALLOC_*_ variable
wins over the learner's settings). Each child starts with no MALLOC_*_ variable but its own.
Takes seconds:

    python scripts/bench_learner.py --page-faults      # page_faults_per_update_{heap_settings,glibc_default,user_trim_threshold}

Prints one JSON object to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import _common as C

NUM_ACTIONS = 4  # Breakout's minimal action set


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# child: one size


def child(args) -> None:
    C.set_threads(args.threads)
    import torch

    from rlscale.ppo import resolve_device
    from rlscale.rollout import take_rows

    n = args.n
    cfg = C.load_cfg("atari", [
        f"ppo.env_steps_per_iteration={n}", f"ppo.num_minibatches={args.num_minibatches}",
        f"ppo.microbatch_size={args.microbatch_size}", f"ppo.epochs={args.epochs}",
        f"noise.enabled={str(args.noise).lower()}", f"device={args.device}",
    ])
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    C.configure_learner(device, args.threads)  # as `rlscale train`, once per learner process
    rss0 = rss_now()
    batch = C.synthetic_batch(n, C.ATARI_OBS_SHAPE, "uint8", NUM_ACTIONS, seed=args.seed, frame_stacks=args.obs_format == "stacks")
    rss_batch = rss_now()
    learner = C.make_learner(cfg, C.env_spec(C.ATARI_OBS_SHAPE, "uint8", NUM_ACTIONS, cfg), device)
    lr = cfg.ppo.lr
    times = []
    if not args.baseline:
        # warm-up on a slice (views: no extra memory), then timed full iterations
        w = min(n, 1024)
        warm = {k: take_rows(v, slice(None, w)) for k, v in batch.items()}
        for _ in range(args.warmup):
            learner.update(warm, lr=lr)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for r in range(args.repeats):
            C.sync(device)
            t0 = time.perf_counter()
            learner.update(batch, lr=lr, iteration=r)
            C.sync(device)
            times.append(time.perf_counter() - t0)
            print(f"    B={n}: repeat {r + 1}/{args.repeats}: {times[-1]:.2f}s", file=sys.stderr, flush=True)
    else:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        learner.update(batch, lr=lr)
        C.sync(device)
    out = {
        "n": n,
        "times_s": times,
        "rss_before_batch_bytes": rss0,
        "rss_after_batch_bytes": rss_batch,
        "rss_end_bytes": rss_now(),
        "self_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "batch_storage_bytes": C.batch_nbytes(batch),
        "obs_bytes": int(batch["obs"].nbytes),
        "device_batch_bytes": C.batch_nbytes(batch, C.DEVICE_KEYS),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "optimizer_steps": learner.optimizer_steps,
    }
    if cuda:
        out["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        out["cuda_max_memory_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
    print("CHILD_JSON " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------
# --page-faults: one child per heap setting

PAGE_FAULT_MODES = ("heap_settings", "glibc_default", "user_trim_threshold")
USER_TRIM_THRESHOLD = 131072  # MALLOC_TRIM_THRESHOLD_ of the user_trim_threshold child
PAGE_FAULT_B, PAGE_FAULT_MICROBATCH, PAGE_FAULT_WARMUP = 256, 128, 3


def page_fault_child(args) -> None:
    C.set_threads(args.threads)
    import torch

    from rlscale import util

    mode = args.page_fault_child
    device = torch.device("cpu")  # the heap settings are the CPU learner's
    cfg = C.load_cfg("atari", [
        f"ppo.env_steps_per_iteration={PAGE_FAULT_B}", "ppo.num_minibatches=1",
        f"ppo.microbatch_size={PAGE_FAULT_MICROBATCH}", "ppo.epochs=1", "device=cpu",
    ])
    # configure_learner_process as `rlscale train` calls it; for glibc_default without its
    # keep_heap_memory (everything else - precision, threads - the same). Records whether the
    # heap settings were applied (not when a MALLOC_*_ variable is set: the user's wins).
    keep = util.keep_heap_memory
    applied = []

    def keep_or_not() -> bool:
        applied.append(mode != "glibc_default" and keep())
        return applied[-1]

    util.keep_heap_memory = keep_or_not
    try:
        C.configure_learner(device, args.threads)
    finally:
        util.keep_heap_memory = keep
    batch = C.synthetic_batch(PAGE_FAULT_B, C.ATARI_OBS_SHAPE, "uint8", NUM_ACTIONS, seed=args.seed, frame_stacks=True)
    learner = C.make_learner(cfg, C.env_spec(C.ATARI_OBS_SHAPE, "uint8", NUM_ACTIONS, cfg), device)
    lr = cfg.ppo.lr
    for i in range(PAGE_FAULT_WARMUP):
        learner.update(batch, lr=lr, iteration=i)
    faults, times = [], []
    for r in range(args.page_fault_repeats):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        learner.update(batch, lr=lr, iteration=PAGE_FAULT_WARMUP + r)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    out = {
        "mode": mode,
        "heap_settings_applied": bool(applied and applied[-1]),
        "malloc_env": {k: os.environ[k] for k in util.MALLOC_ENV if k in os.environ},
        "page_faults_per_update": faults,
        "update_s": times,
        "torch_threads": torch.get_num_threads(),
    }
    print("CHILD_JSON " + json.dumps(out), flush=True)


def run_page_fault_child(args, mode: str) -> dict:
    from rlscale.util import MALLOC_ENV

    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    if mode == "user_trim_threshold":
        env["MALLOC_TRIM_THRESHOLD_"] = str(USER_TRIM_THRESHOLD)
    cmd = [sys.executable, os.path.abspath(__file__), "--page-fault-child", mode, "--threads", str(args.threads),
           "--seed", str(args.seed), "--page-fault-repeats", str(args.page_fault_repeats)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # stderr: inherited
    if p.returncode != 0:
        raise RuntimeError(f"page-fault child ({mode}) failed with exit code {p.returncode}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("CHILD_JSON ")][-1]
    out = json.loads(line[len("CHILD_JSON "):])
    out["child_wall_s"] = time.perf_counter() - t0
    return out


def page_faults(args) -> None:
    result = {
        "benchmark": "bench_learner_page_faults",
        "quick": args.quick,
        "machine": C.machine_info("cpu"),
        "settings": {"env_steps_per_iteration": PAGE_FAULT_B, "num_minibatches": 1,
                     "microbatch_size": PAGE_FAULT_MICROBATCH, "epochs": 1, "obs_shape": list(C.ATARI_OBS_SHAPE),
                     "obs_format": "stacks", "num_actions": NUM_ACTIONS, "device": "cpu",
                     "warmup_updates": PAGE_FAULT_WARMUP, "repeats": args.page_fault_repeats,
                     "threads": args.threads, "seed": args.seed, "user_trim_threshold": USER_TRIM_THRESHOLD,
                     "measure": "fewest ru_minflt over the repeats, one settled update each"},
        "children": {},
    }
    for mode in PAGE_FAULT_MODES:
        C.log(f"page faults: child with {mode}")
        r = run_page_fault_child(args, mode)
        result["children"][mode] = r
        # the fewest: now and then a torch thread's first allocation adds ~1,000 to one update
        result[f"page_faults_per_update_{mode}"] = min(r["page_faults_per_update"])
        C.log(f"page faults, {mode}: {r['page_faults_per_update']} per update "
              f"(heap settings applied: {r['heap_settings_applied']}, update {min(r['update_s']):.2f}s)")
    C.emit(result)


# ---------------------------------------------------------------------------------------------
# parent


def run_child(args, n: int, baseline: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--n", str(n),
           "--num-minibatches", str(args.num_minibatches), "--microbatch-size", str(args.microbatch_size),
           "--epochs", str(args.epochs), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--device", args.device, "--seed", str(args.seed),
           "--noise", "true" if args.noise else "false", "--obs-format", args.obs_format]
    if baseline:
        cmd.append("--baseline")
    env = dict(os.environ)
    if args.malloc_mmap_threshold > 0:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)  # stderr: inherited (progress)
    stdout = p.stdout.read()
    p.stdout.close()
    _, status, ru = os.wait4(p.pid, 0)  # this child's own rusage, not the max over all children
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"child for B={n} failed with exit code {p.returncode}")
    line = [ln for ln in stdout.splitlines() if ln.startswith("CHILD_JSON ")][-1]
    out = json.loads(line[len("CHILD_JSON "):])
    out["peak_rss_bytes"] = int(ru.ru_maxrss) * 1024
    out["child_wall_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-log2", type=int, default=10)
    ap.add_argument("--max-log2", type=int, default=18)
    ap.add_argument("--microbatch-size", type=int, default=256)
    ap.add_argument("--num-minibatches", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed iterations per size")
    ap.add_argument("--warmup", type=int, default=8,
                    help="untimed iterations on a 1024-step slice first; the allocator's resident memory "
                         "settles only after some 30 micro-batch forward/backward passes, so fewer would "
                         "make small B look leaner than large B (which does more passes per iteration)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads in the children (0: default)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--noise", type=lambda s: s.lower() in ("1", "true", "yes", "on"), default=True,
                    help="noise.enabled (true/false, default true as in training)")
    ap.add_argument("--malloc-mmap-threshold", type=int, default=65536,
                    help="glibc MALLOC_MMAP_THRESHOLD_ for the children (0: the learner's own heap settings, "
                         "as in training: rlscale.util.keep_heap_memory). With a small fixed threshold every "
                         "large block goes back to the OS when freed, so peak RSS is the peak of live memory "
                         "but the update runs slower; the learner's settings keep freed blocks for reuse: "
                         "measure memory with the default here and speed with 0")
    ap.add_argument("--obs-format", choices=("stacks", "dense"), default="stacks",
                    help="Atari observations as rollout workers send them (frame stacks: one stored frame "
                         "per step) or dense [B, 4, 84, 84]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke test: up to 2^12, 1 repeat")
    ap.add_argument("--page-faults", action="store_true",
                    help="instead of the sizes: minor page faults per settled CPU update with the learner's "
                         "heap settings, glibc's defaults and a user's MALLOC_TRIM_THRESHOLD_ (seconds)")
    ap.add_argument("--page-fault-repeats", type=int, default=3,
                    help="--page-faults: measured updates per child (the fewest faults is reported)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--page-fault-child", choices=PAGE_FAULT_MODES, help=argparse.SUPPRESS)
    ap.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.page_fault_child:
        page_fault_child(args)
        return
    if args.page_faults:
        page_faults(args)
        return
    if args.quick:
        args.max_log2 = min(args.max_log2, 12)
        args.repeats = 1
    C.set_threads(args.threads)
    from rlscale.ppo import resolve_device

    device = str(resolve_device(args.device))
    cuda = device.startswith("cuda")
    result = {
        "benchmark": "bench_learner",
        "quick": args.quick,
        "machine": {**C.machine_info(device), "mem_available_bytes_at_start": mem_available()},
        "settings": {k: v for k, v in vars(args).items()
                     if k not in ("child", "baseline", "n", "page_faults", "page_fault_repeats", "page_fault_child")}
                    | {"obs_shape": list(C.ATARI_OBS_SHAPE), "obs_dtype": "uint8", "num_actions": NUM_ACTIONS,
                       "memory_measure": "cuda.max_memory_allocated" if cuda else "child ru_maxrss (os.wait4)"},
    }
    C.log(f"baseline child (model + one tiny update, B=64) on {device}")
    base = run_child(args, 64, baseline=True)
    peak_key = "cuda_max_memory_allocated_bytes" if cuda else "peak_rss_bytes"
    storage_key = "device_batch_bytes" if cuda else "batch_storage_bytes"
    # the tiny batch is part of the baseline; subtract it so baseline = torch + model + optimizer
    baseline = base[peak_key] - base[storage_key]
    result["baseline_bytes"] = baseline
    result["baseline_rss_bytes"] = base["peak_rss_bytes"]
    result["baseline_child"] = base
    sizes = []
    for k in range(args.min_log2, args.max_log2 + 1):
        n = 2 ** k
        need = C.batch_nbytes(C.synthetic_batch(64, C.ATARI_OBS_SHAPE, "uint8", NUM_ACTIONS, frame_stacks=args.obs_format == "stacks")) * n // 64
        avail = mem_available()
        if avail is not None and need > 0.85 * avail:
            C.log(f"B=2^{k}: skipped, batch needs {need / 2**30:.1f} GiB of {avail / 2**30:.1f} GiB available")
            sizes.append({"log2": k, "env_steps_per_iteration": n, "skipped": f"batch {need} bytes > 85% of MemAvailable {avail}"})
            continue
        C.log(f"B=2^{k}={n}: child with {args.repeats} repeat(s), batch {need / 2**20:.0f} MiB")
        r = run_child(args, n, baseline=False)
        st = C.stats(r["times_s"])
        peak = r[peak_key]
        row = {
            "log2": k,
            "env_steps_per_iteration": n,
            "batch_storage_bytes": r[storage_key],
            "host_batch_storage_bytes": r["batch_storage_bytes"],
            "obs_bytes": r["obs_bytes"],
            "peak_rss_bytes": r["peak_rss_bytes"],
            "peak_bytes": peak,
            "working_bytes": peak - r[storage_key] - baseline,
            "iteration_s": st,
            "samples_per_s": n * args.epochs / st["median"],
            "samples_per_s_best": n * args.epochs / st["min"],
            "child": r,
        }
        if cuda:
            row["cuda_max_memory_allocated_bytes"] = peak
        sizes.append(row)
        C.log(f"B=2^{k}: {row['samples_per_s']:.0f} samples/s, peak {peak / 2**20:.0f} MiB, "
              f"batch {row['batch_storage_bytes'] / 2**20:.0f} MiB, working {row['working_bytes'] / 2**20:.1f} MiB")
    done = [s for s in sizes if "skipped" not in s]
    result["sizes"] = sizes
    result["samples_per_s_by_log2"] = {str(s["log2"]): s["samples_per_s"] for s in done}
    result["working_bytes_by_log2"] = {str(s["log2"]): s["working_bytes"] for s in done}
    if len(done) >= 2:
        w0, w1 = done[0]["working_bytes"], done[-1]["working_bytes"]
        result["working_growth_pct"] = 100.0 * (w1 / w0 - 1.0) if w0 > 0 else None
        result["working_growth_bytes"] = w1 - w0
        result["working_growth_from_log2"] = done[0]["log2"]
        result["working_growth_to_log2"] = done[-1]["log2"]
    C.emit(result)


if __name__ == "__main__":
    main()
