"""The training loop: sample, update, sync, log; each phase timed. Read it top to bottom."""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlscale import checkpoint
from rlscale.actors import make_pool
from rlscale.config import ConfigError, TrainConfig, to_dict, to_yaml
from rlscale.envs import is_atari
from rlscale.ppo import Learner, resolve_device
from rlscale.rollout import FragmentBuffer
from rlscale.tracking import MetricsTable, WandbRun
from rlscale.util import atomic_write_json, atomic_write_text, git_sha


@dataclass
class Counters:
    iteration: int = 0
    env_steps: int = 0  # collected and delivered by workers
    env_steps_used: int = 0  # consumed by PPO updates
    env_steps_discarded: int = 0  # lost with fragments of failed workers
    episodes: int = 0
    worker_failures: int = 0
    wall_time_s: float = 0.0
    targets: dict = field(default_factory=dict)  # str(target) -> crossing record


def learning_rate(cfg: TrainConfig, env_steps_per_iteration: int, b_simple: float, progress: float) -> float:
    """Learning rate for the next iteration.

    ppo.lr is tuned at the reference batch B0 = ppo.lr_reference_env_steps; the rule scales it
    to the current batch B: fixed (lr), linear (lr B/B0), sqrt (lr sqrt(B/B0)) or noise, which
    follows eps_opt(B) = eps_max / (1 + B_noise/B) with B_noise the B_simple EMA measured so
    far: lr (1 + B_noise/b0) / (1 + B_noise/b), b = B / num_minibatches examples per gradient
    (before any estimate exists it falls back to lr). Annealing multiplies by 1 - progress.
    """
    p = cfg.ppo
    B, B0 = env_steps_per_iteration, p.lr_reference_env_steps or env_steps_per_iteration
    if p.lr_rule == "fixed":
        lr = p.lr
    elif p.lr_rule == "linear":
        lr = p.lr * B / B0
    elif p.lr_rule == "sqrt":
        lr = p.lr * math.sqrt(B / B0)
    elif p.lr_rule == "noise":
        b, b0 = B / p.num_minibatches, B0 / p.num_minibatches
        lr = p.lr if not (b_simple > 0 and math.isfinite(b_simple)) else p.lr * (1 + b_simple / b0) / (1 + b_simple / b)
    else:
        raise ConfigError(f"ppo.lr_rule must be fixed, linear, sqrt or noise, got '{p.lr_rule}'")
    if p.anneal_lr:
        lr *= max(0.0, 1.0 - progress)
    return lr


def fragment_lengths(cfg: TrainConfig, envs_per_worker: list[int], need: int) -> list[int]:
    """Steps T per worker for one sampling round that covers `need` env steps.

    With workers.fragment_length = 0 every worker gets T = ceil(need / total envs), so one
    round fills the batch exactly when the envs divide it (then policy lag is 0).
    """
    if cfg.workers.fragment_length > 0:
        return [cfg.workers.fragment_length] * len(envs_per_worker)
    T = max(1, math.ceil(need / sum(envs_per_worker)))
    return [T] * len(envs_per_worker)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a run directory we must not touch, before anything is started or written."""
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"cannot resume: '{run_dir}' holds no rlscale run (config.yaml missing); check the path")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory '{run_dir}' is a file; choose a writable --out")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(f"run directory '{run_dir}' already exists; pass --resume to continue it or --overwrite to replace it")
    parent = run_dir.resolve()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to run directory '{run_dir}' ('{parent}' is not a writable directory); choose a writable --out")


def create_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        return
    if run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to run directory '{run_dir}' ({e.strerror}); choose a writable --out") from None


def default_run_dir(cfg: TrainConfig) -> Path:
    slug = cfg.env.id.replace("ALE/", "").replace("/", "-")
    return Path("runs") / f"{slug}_s{cfg.seed}_{time.strftime('%Y%m%d-%H%M%S')}"


def train(cfg: TrainConfig, run_dir: Path | None = None, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, init_ray: bool = True) -> dict:
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    check_run_dir(run_dir, resume, overwrite)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    # Ray and the workers start before the run directory exists, so a failure here leaves nothing behind.
    if cfg.workers.backend == "ray" and init_ray:
        from rlscale.cluster import ensure_ray

        ensure_ray(cfg.workers.address)
    pool = make_pool(cfg)
    spec = pool.spec()
    try:
        create_run_dir(run_dir, resume, overwrite)
    except BaseException:
        pool.close()
        raise
    if not resume:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    device = resolve_device(cfg.device)
    learner = Learner(cfg, spec.obs_shape, spec.num_actions, device)
    buffer = FragmentBuffer(cfg.ppo.gamma, cfg.ppo.gae_lambda)
    c = Counters()
    returns: deque[float] = deque(maxlen=cfg.tracking.return_window)
    last20: deque[float] = deque(maxlen=20)
    wandb_id = None
    table = MetricsTable(run_dir / "metrics.csv")
    if resume:
        c, wandb_id = _restore(run_dir, cfg, spec, pool, learner, buffer, returns, last20, quiet)
        table.truncate_after(c.iteration)  # rows past the checkpoint are recomputed, never duplicated

    frames = spec.frames_per_env_step
    env_total = sum(pool.envs_per_worker)
    if not quiet:
        B = learner.env_steps_per_iteration
        print(
            f"rlscale: {cfg.env.id} | {len(pool.envs_per_worker)} {cfg.workers.backend} workers x {pool.envs_per_worker} envs "
            f"| B = {B} env steps/iteration ({B * frames} frames), {cfg.ppo.num_minibatches} minibatches of {B // cfg.ppo.num_minibatches}, "
            f"micro-batches of {cfg.ppo.microbatch_size} | {cfg.ppo.epochs} epochs | device {device} | run dir {run_dir}",
            file=sys.stderr,
        )
    run_name = cfg.tracking.name or run_dir.name
    wb = WandbRun(cfg.tracking.wandb_mode, run_dir, cfg.tracking.project, run_name, cfg.tracking.group,
                  to_dict(cfg), resume_id=wandb_id)
    bar = None
    if cfg.tracking.progress_bar and not quiet:
        from tqdm import tqdm

        bar = tqdm(total=cfg.total_env_steps, initial=min(c.env_steps_used, cfg.total_env_steps), unit="step",
                   unit_scale=True, dynamic_ncols=True, file=sys.stderr, desc="env steps")
    start = time.perf_counter() - c.wall_time_s
    targets = sorted(float(x) for x in cfg.targets)
    weights = learner.get_weights()
    inflight = None  # a sampling request in flight (overlap mode)
    exit_code = 1
    try:
        while c.env_steps_used < cfg.total_env_steps and not _reached_stop(cfg, returns):
            B = learner.env_steps_per_iteration
            t0 = time.perf_counter()
            # -- sample: fragments of any size until the buffer holds one batch -----------
            while len(buffer) < B:
                if inflight is None:
                    inflight = pool.submit(fragment_lengths(cfg, pool.envs_per_worker, B - len(buffer)), weights, learner.version)
                res = pool.collect(inflight)
                inflight = None
                for frag in res.fragments:
                    buffer.add(frag)
                    c.env_steps += frag.size
                    returns.extend(frag.episode_returns)
                    last20.extend(frag.episode_returns)
                    c.episodes += len(frag.episode_returns)
                c.env_steps_discarded += res.discarded_env_steps
                c.worker_failures += res.failures
            batch = buffer.take(B)
            if cfg.workers.overlap and c.env_steps_used + B < cfg.total_env_steps:
                # Actors collect the next batch with the current weights while we update.
                need = max(1, learner.env_steps_per_iteration - len(buffer))
                inflight = pool.submit(fragment_lengths(cfg, pool.envs_per_worker, need), weights, learner.version)
            t1 = time.perf_counter()
            # -- update -----------------------------------------------------------------
            b_simple = learner.ema["combined"].ratio
            lr = learning_rate(cfg, B, b_simple, c.env_steps_used / cfg.total_env_steps)
            lag = learner.version - batch["versions"]
            progress = c.env_steps_used / cfg.total_env_steps
            clip = cfg.ppo.clip_coef * (1.0 - progress if cfg.ppo.anneal_clip else 1.0)
            metrics = learner.update(batch, lr, iteration=c.iteration, clip_coef=max(clip, 1e-8))
            c.iteration += 1
            c.env_steps_used += B
            t2 = time.perf_counter()
            # -- sync: new weights to CPU; the pool ships them with the next request ------
            weights = learner.get_weights()
            t3 = time.perf_counter()
            c.wall_time_s = t3 - start
            mean_ret = float(np.mean(returns)) if returns else float("nan")
            row = {
                "iteration": c.iteration,
                "env_steps": c.env_steps,
                "env_steps_used": c.env_steps_used,
                "env_steps_discarded": c.env_steps_discarded,
                "frames": c.env_steps * frames,
                "optimizer_steps": learner.optimizer_steps,
                "episodes": c.episodes,
                "wall_time_s": c.wall_time_s,
                "env_steps_per_iteration": B,
                "charts/episode_return_smoothed": mean_ret,
                "charts/SPS": B / (t3 - t0),
                "charts/policy_lag_mean": float(lag.mean()),
                "charts/policy_lag_max": int(lag.max()),
                "charts/worker_failures": c.worker_failures,
                "time/sample_s": t1 - t0,
                "time/update_s": t2 - t1,
                "time/sync_s": t3 - t2,
                **metrics,
            }
            if len(returns) == returns.maxlen:  # a full window of episodes before a target counts
                _record_targets(c, targets, mean_ret, row, learner)
            table.append(row)
            wb.log(row, step=c.iteration)
            if bar:
                bar.update(min(c.env_steps_used, cfg.total_env_steps) - bar.n)
                bar.set_postfix(ret=f"{mean_ret:.1f}", sps=f"{c.env_steps / max(c.wall_time_s, 1e-9):.0f}", refresh=False)
            if c.iteration % cfg.checkpoint_interval == 0:
                _save(run_dir, c, learner, buffer, returns, last20, cfg, spec, wb.id, pool)
        exit_code = 0
    except BaseException:
        # Keep what was learned: a checkpoint at the last finished iteration, then re-raise.
        try:
            if c.iteration:
                _save(run_dir, c, learner, buffer, returns, last20, cfg, spec, wb.id, pool)
        finally:
            pool.close()
        raise
    finally:
        if bar:
            bar.close()
        wb.finish(exit_code)
    _save(run_dir, c, learner, buffer, returns, last20, cfg, spec, wb.id, pool)
    pool.close()
    summary = make_summary(cfg, c, learner, last20, frames, run_dir, env_total)
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _restore(run_dir, cfg, spec, pool, learner, buffer, returns, last20, quiet) -> tuple[Counters, str | None]:
    """Load the newest valid checkpoint into the learner, buffer, return windows and workers."""
    path, state = checkpoint.load_latest(run_dir, warn=lambda m: print(m, file=sys.stderr))
    check_compatible(state, cfg, spec)
    learner.load_state_dict(state["learner"])
    returns.extend(state["returns"])
    last20.extend(state["returns_last20"])
    pieces = [{k: v.numpy() for k, v in p.items()} for p in state["buffer"]["pieces"]]  # saved as tensors
    buffer.load_state({"pieces": pieces, "next_fragment": state["buffer"]["next_fragment"]})
    blobs = checkpoint.load_workers(path) if hasattr(pool, "set_state") else None
    if blobs is not None and len(blobs) == len(pool.envs_per_worker):
        pool.set_state(blobs)  # environments continue exactly where they were
    elif not quiet:
        print("note: environments restart from new episodes (their state is not in the checkpoint)", file=sys.stderr)
    c = Counters(**state["counters"])
    if not quiet:
        print(f"resumed from {path} at iteration {c.iteration}, {c.env_steps} env steps", file=sys.stderr)
    return c, state.get("wandb_id")


def _reached_stop(cfg: TrainConfig, returns) -> bool:
    if cfg.stop_return is None or len(returns) < returns.maxlen:
        return False
    return float(np.mean(returns)) >= cfg.stop_return


def _record_targets(c: Counters, targets, mean_ret: float, row: dict, learner: Learner) -> None:
    """First crossing of each target by the smoothed return (mean of the last N episodes)."""
    if not targets or not math.isfinite(mean_ret):
        return
    for tgt in targets:
        key = str(tgt)
        if key in c.targets or mean_ret < tgt:
            continue
        c.targets[key] = {
            "reached": True,
            "iterations": c.iteration,
            "optimizer_steps": row["optimizer_steps"],
            "env_steps": c.env_steps,
            "wall_time_s": c.wall_time_s,
            "b_simple_mean": learner_b_simple_mean(learner),
        }


def learner_b_simple_mean(learner: Learner) -> float | None:
    hist = learner.b_simple_history
    finite = [x for x in hist if math.isfinite(x)]
    return float(np.mean(finite)) if finite else None


def _save(run_dir, c: Counters, learner, buffer, returns, last20, cfg, spec, wandb_id, pool=None) -> None:
    state = {
        "env_id": cfg.env.id,
        "obs_shape": list(spec.obs_shape),
        "num_actions": spec.num_actions,
        "hidden_sizes": list(cfg.model.hidden_sizes),
        "learner": learner.state_dict(),
        "counters": dict(c.__dict__),
        "returns": list(returns),
        "returns_last20": list(last20),
        "buffer": buffer.state(),
        "wandb_id": wandb_id,
    }
    # Worker state first: a checkpoint file that exists always has its workers file complete.
    blobs = pool.get_state() if pool is not None and hasattr(pool, "get_state") else None
    if blobs is not None:
        checkpoint.save_workers(checkpoint.checkpoint_path(run_dir, c.iteration), blobs)
    checkpoint.save(run_dir, c.iteration, state)


def check_compatible(state: dict, cfg: TrainConfig, spec) -> None:
    if state["env_id"] != cfg.env.id or tuple(state["obs_shape"]) != tuple(spec.obs_shape) or state["num_actions"] != spec.num_actions:
        raise checkpoint.CheckpointError(
            f"checkpoint is for {state['env_id']} (obs {tuple(state['obs_shape'])}, {state['num_actions']} actions), "
            f"not {cfg.env.id}; resume with the run's own config"
        )
    if list(state["hidden_sizes"]) != list(cfg.model.hidden_sizes):
        raise checkpoint.CheckpointError(
            f"checkpoint model has hidden sizes {state['hidden_sizes']}, config asks {list(cfg.model.hidden_sizes)}; resume with the run's own config"
        )


def make_summary(cfg, c: Counters, learner: Learner, last20, frames: int, run_dir: Path, env_total: int) -> dict:
    targets = {}
    for tgt in sorted(float(x) for x in cfg.targets):
        targets[str(tgt)] = c.targets.get(str(tgt), {"reached": False, "iterations": None, "optimizer_steps": None,
                                                    "env_steps": None, "wall_time_s": None, "b_simple_mean": None})
    return {
        "env_id": cfg.env.id,
        "seed": cfg.seed,
        "env_steps": c.env_steps,
        "env_steps_used": c.env_steps_used,
        "env_steps_discarded": c.env_steps_discarded,
        # collected = used + discarded (lost with failed workers) + still buffered
        "env_steps_collected": c.env_steps + c.env_steps_discarded,
        "frames": c.env_steps * frames,
        "iterations": c.iteration,
        "optimizer_steps": learner.optimizer_steps,
        "episodes": c.episodes,
        "wall_time_s": c.wall_time_s,
        "env_steps_per_s": c.env_steps / c.wall_time_s if c.wall_time_s > 0 else None,
        "episode_return_mean_last20": float(np.mean(last20)) if last20 else None,
        "env_steps_per_iteration": learner.env_steps_per_iteration,
        "num_minibatches": cfg.ppo.num_minibatches,
        "num_envs": env_total,
        "worker_failures": c.worker_failures,
        "b_simple_mean": learner_b_simple_mean(learner),
        "targets": targets,
        "atari": is_atari(cfg.env.id),
        "git_sha": git_sha(),
        "run_dir": str(run_dir),
    }
