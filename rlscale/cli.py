"""`rlscale train | train-population | sweep | analyze | submit`: the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _train(args) -> int:
    from rlscale.config import load_train_config
    from rlscale.errors import ConfigError
    from rlscale.train import check_run_dir, train

    if args.resume:
        # With --resume there is no CONFIG: every positional argument is an override.
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        run_dir = Path(args.resume)
        check_run_dir(run_dir, resume=True, overwrite=False)  # before its config.yaml is read
        cfg = load_train_config(run_dir / "config.yaml", overrides)
        summary = train(cfg, run_dir, resume=True)
    else:
        if not args.config:
            raise ConfigError("no config given; run e.g. `rlscale train configs/cartpole.yaml`")
        cfg = load_train_config(args.config, args.overrides)
        summary = train(cfg, Path(args.out) if args.out else None, overwrite=args.overwrite)
    print(json.dumps({k: summary[k] for k in ("env_id", "seed", "env_steps", "iterations", "wall_time_s",
                                             "env_steps_per_s", "episode_return_mean_last20", "b_simple", "run_dir")}))
    return 0


def _train_population(args) -> int:
    from rlscale.config import load_train_config
    from rlscale.errors import ConfigError
    from rlscale.population import train_population

    if not args.seeds or not args.lrs:
        raise ConfigError("a population needs --seeds and --lrs, e.g. --seeds 1 2 3 --lrs 1e-3 5e-4")
    if min(args.lrs) <= 0:
        raise ConfigError(f"--lrs must be positive, got {args.lrs}")
    members = [(seed, lr) for lr in args.lrs for seed in args.seeds]
    if len(set(members)) != len(members):
        raise ConfigError("--seeds and --lrs repeat a member; list each value once")
    out = Path(args.out)
    dirs = [out / f"s{seed}_lr{lr:g}" for seed, lr in members]
    if args.resume:  # with --resume there is no CONFIG: every positional argument is an override
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        cfgs = [load_train_config(d / "config.yaml", overrides) for d in dirs]
    else:
        if not args.config:
            raise ConfigError("no config given; run e.g. `rlscale train-population configs/cartpole.yaml --seeds 1 2 --lrs 1e-3`")
        cfgs = [load_train_config(args.config, [*args.overrides, f"seed={seed}", f"ppo.lr={lr!r}"]) for seed, lr in members]
    summaries = train_population(cfgs, dirs, resume=args.resume, overwrite=args.overwrite)
    for s in summaries:
        print(json.dumps({k: s[k] for k in ("env_id", "seed", "env_steps", "iterations", "wall_time_s",
                                             "episode_return_mean_last20", "b_simple", "run_dir")}))
    return 0


def _sweep(args) -> int:
    from rlscale.sweep import run_sweep

    out = run_sweep(args.config, args.overrides, Path(args.out) if args.out else None, only_envs=args.envs, only=args.only)
    print(json.dumps(out))
    return 0


def _analyze(args) -> int:
    from rlscale.analysis import analyze

    result = analyze(Path(args.sweep_dir), wandb_mode=args.wandb_mode)
    for c in result["pending_batch_sizes"]:
        n = c["n_pending"]
        print(f"{c['env_id']} B={c['B']:g}: {n} trial{'s' * (n != 1)} still pending, left out of the fits until "
              f"{'they finish' if n != 1 else 'it finishes'}", file=sys.stderr)
    for e in result["entries"]:
        print(json.dumps({k: e.get(k) for k in ("env_id", "target", "status", "s_min", "e_min", "b_crit", "b_simple", "ratio")}))
    for env, n in result["trials_without_metrics"].items():
        print(f"{env}: {n} completed trial{'s' * (n != 1)} without a metrics table (metrics.csv or metrics.csv.gz): "
              f"no pooled B_simple for the points {'they' if n != 1 else 'it'} belong to, and no E / E_min or gamma for "
              f"an adaptive run among them (the per-iteration table is needed)", file=sys.stderr)
    print(f"report: {Path(args.sweep_dir) / 'report.html'}", file=sys.stderr)
    return 0


def _noise_probe(args) -> int:
    from rlscale.noise_probe import noise_probe

    rows = noise_probe(Path(args.run_dir), args.checkpoints, args.batches, args.env_steps, args.burn_in, args.gap, args.seed)
    from rlscale.util import to_jsonable

    for r in rows:
        print(json.dumps(to_jsonable({k: r[k] for k in ("iteration", "env_steps", "part", "reference_b_simple", "reference_b_simple_ci",
                                             "inloop_b_simple", "inloop_b_simple_random", "inloop_b_simple_env")})))
    print(f"written: {Path(args.run_dir) / 'noise_probe.json'}, noise_probe.png", file=sys.stderr)
    return 0


def _submit(args) -> int:
    from rlscale.submit import submit

    return submit(args.address, args.command, wait=args.wait, working_dir=args.working_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlscale", description="Large-batch scaling testbed for deep RL (PPO on Ray).")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train PPO from a YAML config")
    t.add_argument("config", nargs="?", help="YAML config, e.g. configs/cartpole.yaml")
    t.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides, e.g. seed=3 env.id=ALE/Pong-v5")
    t.add_argument("--out", help="run directory (default runs/<env>_s<seed>_<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last valid checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.set_defaults(func=_train)

    tp = sub.add_parser("train-population", help="train seeds x learning rates of one config as one vectorised population")
    tp.add_argument("config", nargs="?", help="YAML config (workers.backend=local, tracking.wandb_mode=disabled), e.g. configs/cartpole.yaml")
    tp.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides shared by every member")
    tp.add_argument("--seeds", type=int, nargs="+", required=True, help="member seeds")
    tp.add_argument("--lrs", type=float, nargs="+", required=True, help="member learning rates (ppo.lr); members are seeds x lrs")
    tp.add_argument("--out", required=True, help="directory of the members' run directories (OUT/s<seed>_lr<lr>)")
    tp.add_argument("--resume", action="store_true", help="continue every member from its last valid checkpoint")
    tp.add_argument("--overwrite", action="store_true", help="replace existing member run directories")
    tp.set_defaults(func=_train_population)

    s = sub.add_parser("sweep", help="run a grid of trials (env x batch size x lr rule x seed) on Ray")
    s.add_argument("config", help="sweep YAML, e.g. configs/sweeps/cartpole_ci.yaml")
    s.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides of the sweep file")
    s.add_argument("--out", help="sweep directory (default sweeps/<name>); rerunning resumes it")
    s.add_argument("--envs", nargs="+", metavar="ENV_ID", help="run only these envs' trials now (the others are left as they are)")
    s.add_argument("--only", choices=("grid", "adaptive"), help="run only the fixed-B grid's trials or only the adaptive-batch runs "
                   "(two sweeps of one directory with the two choices run side by side)")
    s.set_defaults(func=_sweep)

    a = sub.add_parser("analyze", help="fit steps vs examples, B_crit vs B_simple, write the report")
    a.add_argument("sweep_dir")
    a.add_argument("--wandb-mode", default=os.environ.get("WANDB_MODE", "offline"), choices=["offline", "online", "disabled"])
    a.set_defaults(func=_analyze)

    n = sub.add_parser("noise-probe", help="reference noise scale from independent batches at a run's checkpoints, beside the in-loop estimates")
    n.add_argument("run_dir")
    n.add_argument("--checkpoints", type=int, nargs="+", metavar="ITERATION", help="checkpoint iterations (default: all kept)")
    n.add_argument("--batches", type=int, default=30, help="independent batches K per checkpoint (default 30)")
    n.add_argument("--env-steps", type=int, nargs="+", metavar="B", help="env steps per batch (default: the run's)")
    n.add_argument("--burn-in", type=int, default=500, help="env steps per env played before the first batch (default 500)")
    n.add_argument("--gap", type=int, default=None, help="env steps per env played between batches (default: 2 fragments)")
    n.add_argument("--seed", type=int, default=12345, help="seed of the probe's own workers")
    n.set_defaults(func=_noise_probe)

    j = sub.add_parser("submit", help="submit an rlscale command as a Ray job")
    j.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://127.0.0.1:8265")
    j.add_argument("--wait", action="store_true", help="follow the logs and exit with the job's status")
    j.add_argument("--working-dir", default=".", help="directory shipped as the job's runtime env")
    j.add_argument("command", nargs=argparse.REMAINDER, help="-- rlscale COMMAND ...")
    j.set_defaults(func=_submit)
    return p


def main(argv: list[str] | None = None) -> int:
    from rlscale.errors import CheckpointError, ConfigError, WorkerFailure

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError) as e:
        print(f"rlscale: error: {e}", file=sys.stderr)
        return 2
    except WorkerFailure as e:
        print(f"rlscale: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rlscale: interrupted; the last checkpoint is in the run directory (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
