"""The training loop: sample, update, sync, log; each phase timed. Read `_loop` top to bottom."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from rlscale import checkpoint, schedules
from rlscale.actors import make_pool
from rlscale.config import TrainConfig, to_dict, to_yaml
from rlscale.envs import EnvSpec, check_env_id
from rlscale.errors import ConfigError, WorkerFailure
from rlscale.evaluation import Evaluator
from rlscale.noise_scale import NoiseProbe
from rlscale.ppo import Learner, resolve_device
from rlscale.run_state import RunState
from rlscale.tracking import MetricsTable, Progress, WandbRun, pack_metrics
from rlscale.util import atomic_write_json, atomic_write_text, configure_learner_process, git_sha, seed_everything


def fragment_lengths(cfg: TrainConfig, envs_per_worker: list[int], need: int) -> list[int]:
    """Steps T per worker for one sampling round that covers `need` env steps.

    With workers.fragment_length = 0 every worker gets T = ceil(need / total envs), so one
    round fills the batch exactly when the envs divide it (then policy lag is 0). With a fixed
    T, every worker samples T steps (workers.collect=all), or only the first workers whose T x E
    steps cover `need` (workers.collect=needed; the others get 0 and wait).
    """
    T = cfg.workers.fragment_length
    if T > 0 and cfg.workers.collect == "needed":
        lengths, covered = [], 0
        for E in envs_per_worker:
            take = covered < need
            lengths.append(T if take else 0)
            covered += T * E if take else 0
        return lengths
    if T > 0:
        return [T] * len(envs_per_worker)
    T = max(1, math.ceil(need / sum(envs_per_worker)))
    return [T] * len(envs_per_worker)


def delivery_unit(cfg: TrainConfig, envs_per_worker: list[int]) -> int:
    """The env steps a varying batch comes in without leftovers: one step of every env (T sized
    to the batch), or T steps of one worker's envs when a fixed T covers a batch with the
    workers needed (workers.collect=needed; config validation asks for equal workers then)."""
    T = cfg.workers.fragment_length
    if T > 0 and cfg.workers.collect == "needed":
        return T * envs_per_worker[0]
    return sum(envs_per_worker)


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


def create_run_dir(run_dir: Path, overwrite: bool, keep: Sequence[str] = ()) -> None:
    """The run directory, emptied first with `overwrite`, but for the files named in `keep`."""
    if run_dir.exists() and overwrite:
        for p in run_dir.iterdir():
            if p.name in keep:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to run directory '{run_dir}' ({e.strerror}); choose a writable --out") from None


def default_run_dir(cfg: TrainConfig) -> Path:
    slug = cfg.env.id.replace("ALE/", "").replace("/", "-")
    return Path("runs") / f"{slug}_s{cfg.seed}_{time.strftime('%Y%m%d-%H%M%S')}"


def train(cfg: TrainConfig, run_dir: Path | None = None, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, init_ray: bool = True, keep: Sequence[str] = ()) -> dict:
    """Train PPO as `cfg` says; write the run directory; return the summary. `keep`: files an
    overwrite leaves in the directory (a sweep's pending trial.json)."""
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    check_run_dir(run_dir, resume, overwrite)
    saved = load_checkpoint(run_dir, cfg) if resume else None  # checked before anything starts
    device = resolve_device(cfg.device)
    configure_learner_process(device, cfg.torch_threads)
    if cfg.workers.backend == "ray" and init_ray:
        from rlscale.cluster import ensure_ray

        ensure_ray(cfg.workers.address)
    pool = make_pool(cfg)  # workers are up before the run directory exists: a failure leaves nothing
    try:
        spec = pool.spec()
        seed_everything(cfg.seed)
        learner = Learner(cfg, spec, device)
        run = open_run(cfg, run_dir, spec, pool, learner, saved, overwrite, quiet, keep)
        if not quiet:
            run.print_header(device)
        return run.loop(quiet)
    finally:
        pool.close()


def open_run(cfg: TrainConfig, run_dir: Path, spec: EnvSpec, pool, learner: RunLearner,
             saved: tuple[Path, dict] | None, overwrite: bool, quiet: bool, keep: Sequence[str] = (),
             records_only: bool = False) -> Run:
    """A run's directory and parts around its built learner: the checkpoint `saved` (from
    `load_checkpoint`, None for a new run) checked against the env and restored, or a fresh
    directory; config.yaml written either way. `records_only`: a population member that left
    with its summary but has no checkpoint (it diverged before its first, or they were removed),
    opened at iteration 0 only to stand beside the others; its directory stays as written."""
    if saved is not None:
        checkpoint.check_compatible(saved[1], to_dict(cfg), spec)
    elif not records_only:
        create_run_dir(run_dir, overwrite, keep)
    if not records_only:
        _write_config(run_dir, cfg, saved)
    state = RunState(cfg.ppo.gamma, cfg.ppo.gae_lambda, cfg.tracking.return_window)
    schedule = schedules.make_batch_schedule(cfg.ppo, delivery_unit(cfg, pool.envs_per_worker))
    wandb_id = _restore(saved, learner, state, schedule, pool, quiet) if saved else None
    run = Run(cfg, run_dir, spec, pool, learner, state, schedule, wandb_id, saved[1].get("pending_row") if saved else None,
              final=records_only)
    if run.pending is not None:  # the checkpoint was written before its iteration was logged
        try:
            run.record()
        except BaseException:
            run.close(1)
            raise
    return run


class RunLearner(Protocol):
    """What a run reads of its learner besides `update`: a Learner, or one member of a
    population (rlscale.population)."""

    probe: NoiseProbe
    version: int
    optimizer_steps: int

    def get_weights(self) -> dict[str, np.ndarray]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, s: dict) -> None: ...


class Run:
    """One run's parts, so that the loop below reads as one screen. A population
    (rlscale.population) drives one Run per member through the same steps, its own sampling
    and update in place of `fill` and `Learner.update`."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, spec: EnvSpec, pool, learner: RunLearner, state: RunState,
                 schedule, wandb_id: str | None, pending: dict | None = None, final: bool = False):
        self.cfg, self.run_dir, self.spec, self.pool = cfg, run_dir, spec, pool
        self.learner, self.state, self.schedule = learner, state, schedule
        self.targets = sorted(float(x) for x in cfg.targets)
        self.pending = pending  # the counted iteration's metrics row until `record` logs it
        self.saved_at = time.monotonic()  # when the last checkpoint was written (or the run opened)
        self.table = MetricsTable(run_dir / "metrics.csv")
        # rows past the checkpoint are recomputed; a pending row is logged again by `record`. A run
        # that diverged (a population member), or one opened `final` (records only), keeps its rows.
        if not final and not (run_dir / "diverged.json").is_file():
            upto = state.counters.iteration - (pending is not None)
            self.table.truncate_after(upto)
            logged = self.table.last_value("iteration")
            if upto > 0 and not logged >= upto:  # NaN too: no rows at all
                print(f"warning: {self.table.path} ends at iteration {logged:g}, before the checkpoint's {upto}: "
                      f"the rows between are missing (a metrics table older than the checkpoint)", file=sys.stderr)
        self.wb = WandbRun(cfg.tracking.wandb_mode, run_dir, cfg.tracking.project, cfg.tracking.name or run_dir.name,
                           cfg.tracking.group, to_dict(cfg), resume_id=wandb_id)
        self.inflight = None  # at most one sampling request in flight
        self.evaluator = Evaluator(cfg.env, cfg.model, cfg.eval.episodes, cfg.seed, cfg.eval.max_episode_steps) if cfg.eval.enabled else None
        # the latest evaluation's mean return (a resumed run's, from its metrics up to the checkpoint)
        self.last_eval = self.table.last_value("eval/return_mean") if self.evaluator is not None else math.nan

    def loop(self, quiet: bool) -> dict:
        cfg, c, state = self.cfg, self.state.counters, self.state
        learner = self.learner
        assert isinstance(learner, Learner), "a population member's run is driven by rlscale.population"
        progress = self.progress(quiet)
        start = time.perf_counter() - c.wall_time_s
        weights = learner.get_weights()
        consistent = True  # the state is at an iteration boundary: a checkpoint of it is valid
        exit_code = 1
        try:
            while not self.finished():
                B = self.schedule.env_steps_per_iteration(c.iteration, learner.probe.b_simple)
                t0 = time.perf_counter()
                # -- sample: fragments of any size until the buffer holds one batch -------------
                self.fill(B, weights)
                batch = state.buffer.take(B)
                consistent = False  # the batch has left the buffer and is not counted as used yet
                if cfg.workers.overlap and c.env_steps_used + B < cfg.total_env_steps:
                    self.prefetch(B, weights)  # actors collect the next batch while we update
                t1 = time.perf_counter()
                # -- update -------------------------------------------------------------------
                lr, clip = self.schedule_values(B)
                lag = learner.version - batch["versions"]
                metrics = learner.update(batch, lr, iteration=c.iteration, clip_coef=clip)
                t2 = time.perf_counter()
                # -- sync: new weights to CPU; the pool ships them with the next request --------
                weights = learner.get_weights()
                t3 = time.perf_counter()
                self.count(B, lag, metrics, (t0, t1, t2, t3), start)
                consistent = True
                # -- log ------------------------------------------------------------------------
                self.record(progress=progress)
            self.collect_inflight()  # played steps are delivered and counted, never dropped
            self.save()
            exit_code = 0
        except BaseException as e:
            # Keep what was learned, but only a consistent state: a failure inside an update
            # (its model half-stepped, its batch out of the buffer) keeps the last checkpoint.
            saved = consistent and c.iteration > 0 and self.save_after_error()
            if isinstance(e, WorkerFailure):
                where = (f"a checkpoint of iteration {c.iteration} was written; resume with --resume {self.run_dir}"
                         if saved else "no checkpoint was written")
                raise WorkerFailure(f"{e}; {where}") from e
            raise
        finally:
            if progress:
                progress.close()
            self.close(exit_code)
        return self.write_summary()

    def close(self, exit_code: int) -> None:
        """The W&B run finished with `exit_code`, the eval envs closed."""
        self.wb.finish(exit_code)
        if self.evaluator is not None:
            self.evaluator.close()

    def finished(self) -> bool:
        """The env-step budget is used up or the stop return reached."""
        return self.state.counters.env_steps_used >= self.cfg.total_env_steps or self.reached_stop()

    def progress(self, quiet: bool) -> Progress | None:
        c, cfg = self.state.counters, self.cfg
        if not cfg.tracking.progress_bar or quiet:
            return None
        return Progress(cfg.total_env_steps, min(c.env_steps_used, cfg.total_env_steps), interval_s=cfg.tracking.progress_interval_s)

    def schedule_values(self, B: int) -> tuple[float, float]:
        """The learning rate and PPO clip range of the next update of B env steps."""
        progress_frac = self.state.counters.env_steps_used / self.cfg.total_env_steps
        return (schedules.learning_rate(self.cfg.ppo, B, self.learner.probe.b_simple, progress_frac),
                schedules.clip_coef(self.cfg.ppo, progress_frac))

    def count(self, B: int, lag, metrics: dict, times: tuple[float, float, float, float], start: float) -> None:
        """Count an update of B env steps: the counters move on and its metrics row waits in
        `pending` until `record` logs it. `start`: the run's clock origin."""
        c = self.state.counters
        c.iteration += 1
        c.env_steps_used += B
        c.wall_time_s = times[-1] - start
        self.pending = self.row(B, lag, metrics, times)

    def checkpoint_due(self) -> bool:
        """Whether the iteration just counted ends with a checkpoint: every checkpoint_interval
        iterations, and once checkpoint_interval_s seconds have passed since the last one."""
        every_s = self.cfg.checkpoint_interval_s
        return (self.state.counters.iteration % self.cfg.checkpoint_interval == 0
                or bool(every_s and time.monotonic() - self.saved_at >= every_s))

    def record(self, progress: Progress | None = None, evaluation: tuple[list[float], float] | None = None,
               save: bool | None = None) -> None:
        """Log the counted iteration: its evaluation when due, target crossings, metrics row,
        W&B, progress, and a checkpoint when one is due (`checkpoint_due`, or `save` when the
        caller decides, as a population does for all its members at once). `evaluation`: this iteration's
        evaluation (returns, seconds) when the caller ran it. A checkpoint written before it
        finished holds the pending row, and the resumed run records it first (`open_run`), so an
        interruption loses neither the row nor a target crossed at this iteration's evaluation."""
        c = self.state.counters
        assert self.pending is not None, "record() follows count()"
        row = dict(self.pending)
        B = int(row["env_steps_per_iteration"])
        score = None
        if self.evaluator is not None:
            score = self.evaluate(row, B, evaluation)
        self.state.record_targets(self.targets, row, self.learner.probe.summary, score=score)
        self.table.append(row)
        self.pending = None
        self.wb.log(row, step=c.iteration)
        if progress:
            progress.update(c.env_steps_used, ret=f"{row['charts/episode_return_smoothed']:.1f}",
                            sps=f"{c.env_steps / max(c.wall_time_s, 1e-9):.0f}")
        if self.checkpoint_due() if save is None else save:
            self.collect_inflight()  # a checkpoint holds every step played so far
            self.save()

    def eval_due(self, B: int) -> bool:
        """Whether the iteration just counted, which used B env steps, evaluates."""
        c = self.state.counters
        return self.evaluator is not None and self.cfg.eval.due(c.iteration, c.env_steps_used, B)

    def evaluate(self, row: dict, B: int, done: tuple[list[float], float] | None = None) -> float:
        """Every eval.interval iterations (or eval.env_steps env steps): the policy's mean return over eval.episodes whole
        episodes on the eval envs (or the `done` evaluation's returns and seconds), into `row`
        (nan columns otherwise). Returns it (nan when no evaluation was due)."""
        assert self.evaluator is not None
        mean = std = cut = math.nan
        t0 = time.perf_counter()
        seconds = 0.0
        if self.eval_due(B):
            if done is None:
                returns = self.evaluator.evaluate(self.learner.get_weights(), self.state.counters.iteration)
                seconds = time.perf_counter() - t0
            else:
                returns, seconds = done
            mean, std = float(np.mean(returns)), float(np.std(returns))
            cut = float(self.evaluator.games_cut)
            self.last_eval = mean
        row.update({"eval/return_mean": mean, "eval/return_std": std, "time/eval_s": seconds})
        if self.cfg.eval.max_episode_steps:  # how many of the evaluation's games were cut, not ended
            row["eval/games_cut"] = cut
        return mean

    def save_after_error(self) -> bool:
        """A checkpoint of a consistent state after an error; never raises (the error that
        stopped the run is the one to report). Returns whether it was written. A batch being
        collected (overlap) goes into it when it can still be collected, as into a periodic one,
        so that the resumed run is the uninterrupted one."""
        try:
            try:
                self.collect_inflight()
            except Exception as collect_error:  # e.g. the worker that failed: keep the state without it
                self.inflight = None
                print(f"warning: the batch being collected is left out of the checkpoint ({collect_error})", file=sys.stderr)
            self.save()
            return True
        except Exception as save_error:
            print(f"warning: no checkpoint written after the error ({save_error})", file=sys.stderr)
            return False

    def write_summary(self) -> dict:
        summary = make_summary(self.cfg, self)
        pack_metrics(self.run_dir)  # the copy a study's records keep (rlscale.tracking)
        atomic_write_json(self.run_dir / "summary.json", summary)
        return summary

    def collect_inflight(self) -> None:
        if self.inflight is not None:
            self.state.absorb(self.pool.collect(self.inflight))
            self.inflight = None

    def fill(self, B: int, weights: dict) -> None:
        """Sampling rounds (one request in flight at most) until the buffer holds B steps."""
        state, version = self.state, self.learner.version
        while len(state.buffer) < B:
            if self.inflight is None:
                self.inflight = self.pool.submit(fragment_lengths(self.cfg, self.pool.envs_per_worker, B - len(state.buffer)),
                                                 weights, version)
            result, self.inflight = self.pool.collect(self.inflight), None
            state.absorb(result)

    def prefetch(self, B: int, weights: dict) -> None:
        """Request the next batch's missing steps now, unless a request is in flight already or
        the buffer holds the next batch (then the actors wait: nothing piles up unused)."""
        short = B - len(self.state.buffer)
        if self.inflight is None and short > 0:
            self.inflight = self.pool.submit(fragment_lengths(self.cfg, self.pool.envs_per_worker, short),
                                             weights, self.learner.version)

    def reached_stop(self) -> bool:
        stop = self.cfg.stop_return
        if stop is None:
            return False
        if self.evaluator is not None:
            return self.last_eval >= stop
        return self.state.window_full and self.state.smoothed_return >= stop

    def row(self, B: int, lag, metrics: dict, times: tuple[float, float, float, float]) -> dict:
        c, (t0, t1, t2, t3) = self.state.counters, times
        return {
            "iteration": c.iteration,
            "env_steps": c.env_steps,
            "env_steps_used": c.env_steps_used,
            "env_steps_discarded": c.env_steps_discarded,
            "frames": c.env_steps * self.spec.frames_per_env_step,
            "optimizer_steps": self.learner.optimizer_steps,
            "episodes": c.episodes,
            "wall_time_s": c.wall_time_s,
            "env_steps_per_iteration": B,
            "charts/env_steps_per_iteration": B,
            "charts/batch_b_simple": self.schedule.last_b_simple,  # the estimate that set B (adaptive schedule)
            "charts/episode_return_smoothed": self.state.smoothed_return,
            "charts/SPS": B / (t3 - t0),
            "charts/policy_lag_mean": float(lag.mean()),
            "charts/policy_lag_max": int(lag.max()),
            "charts/worker_failures": c.worker_failures,
            "time/sample_s": t1 - t0,
            "time/update_s": t2 - t1,
            "time/sync_s": t3 - t2,
            **metrics,
        }

    def save(self) -> None:
        blobs = self.pool.get_state() if hasattr(self.pool, "get_state") else None
        path = checkpoint.checkpoint_path(self.run_dir, self.state.counters.iteration)
        if blobs is not None:  # worker state first: a checkpoint file that exists has its workers file
            checkpoint.save_workers(path, blobs)
        checkpoint.save(self.run_dir, self.state.counters.iteration, {
            "config": to_dict(self.cfg), "spec": asdict(self.spec), "learner": self.learner.state_dict(),
            "run": self.state.state_dict(), "schedule": self.schedule.state_dict(),
            "torch_rng": torch.get_rng_state(), "wandb_id": self.wb.id,
            "pending_row": self.pending,  # the counted iteration's row when it is not logged yet
        }, keep=self.cfg.checkpoint_keep)
        self.saved_at = time.monotonic()

    def print_header(self, device) -> None:
        cfg, pool, B = self.cfg, self.pool, self.schedule.current
        print(
            f"rlscale: {cfg.env.id} | {len(pool.envs_per_worker)} {cfg.workers.backend} workers x {pool.envs_per_worker} envs "
            f"| {self.schedule.describe()} ({B * self.spec.frames_per_env_step} frames now), {cfg.ppo.num_minibatches} "
            f"minibatches of {B // cfg.ppo.num_minibatches}, micro-batches of {cfg.ppo.microbatch_size} | {cfg.ppo.epochs} "
            f"epochs | device {device} | run dir {self.run_dir}",
            file=sys.stderr,
        )


def load_checkpoint(run_dir: Path, cfg: TrainConfig) -> tuple[Path, dict]:
    path, state = checkpoint.load_latest(run_dir, warn=lambda m: print(m, file=sys.stderr))
    # The environment, network and seed cannot change on resume: refuse before anything starts.
    checkpoint.check_compatible(state, to_dict(cfg))
    return path, state


def _write_config(run_dir: Path, cfg: TrainConfig, saved) -> None:
    """config.yaml is the config the run goes on with; on a resume that changes it, the
    earlier one is kept beside it as config.before_resume_<iteration>.yaml."""
    path, text = run_dir / "config.yaml", to_yaml(cfg)
    before = path.read_text() if path.is_file() else None
    if text == before:
        return
    if saved is not None and before is not None:
        iteration = saved[1]["run"]["counters"]["iteration"]
        atomic_write_text(run_dir / f"config.before_resume_{iteration:08d}.yaml", before)
    atomic_write_text(path, text)


def _restore(saved: tuple[Path, dict], learner: RunLearner, state: RunState, schedule, pool, quiet: bool) -> str | None:
    """The checkpoint into the learner, run state, schedule and (where saved) the workers."""
    path, s = saved
    learner.load_state_dict(s["learner"])
    state.load_state_dict(s["run"])
    schedule.load_state_dict(s["schedule"])
    torch.set_rng_state(s["torch_rng"])
    blobs = checkpoint.load_workers(path) if hasattr(pool, "set_state") else None
    if blobs is not None and len(blobs) == len(pool.envs_per_worker):
        pool.set_state(blobs)  # environments continue exactly where they were
    elif not quiet:
        print("note: environments restart from new episodes (their state is not in the checkpoint)", file=sys.stderr)
    if not quiet:
        c = state.counters
        print(f"resumed from {path} at iteration {c.iteration}, {c.env_steps} env steps", file=sys.stderr)
    return s.get("wandb_id")


def make_summary(cfg: TrainConfig, run: Run) -> dict:
    state, learner, c = run.state, run.learner, run.state.counters
    empty: dict[str, Any] = {"reached": False, "iterations": None, "optimizer_steps": None, "env_steps": None,
             "wall_time_s": None, "b_simple": None, "b_simple_ci": None, "b_simple_parts": {}}
    targets = {str(t): c.targets.get(str(t), empty) for t in sorted(float(x) for x in cfg.targets)}
    last20 = list(state.last20)
    noise = learner.probe.summary()
    family = check_env_id(cfg.env.id).name
    return {
        "env_id": cfg.env.id,
        "env_family": family,
        "seed": cfg.seed,
        "env_steps": c.env_steps,
        "env_steps_used": c.env_steps_used,
        "env_steps_buffered": len(state.buffer),
        "env_steps_discarded": c.env_steps_discarded,
        # collected = used + still buffered + discarded (lost with failed workers)
        "env_steps_collected": c.env_steps + c.env_steps_discarded,
        "frames": c.env_steps * run.spec.frames_per_env_step,
        "iterations": c.iteration,
        "optimizer_steps": learner.optimizer_steps,
        "episodes": c.episodes,
        "wall_time_s": c.wall_time_s,
        "env_steps_per_s": c.env_steps / c.wall_time_s if c.wall_time_s > 0 else None,
        "episode_return_mean_last20": float(np.mean(last20)) if last20 else None,
        "env_steps_per_iteration": run.schedule.current,  # the last B (the only one with a fixed schedule)
        "batch_schedule": cfg.ppo.batch_schedule,
        "batch_schedule_followed": run.schedule.followed(),  # [iteration, B, B_simple that set it] at each change
        "num_minibatches": cfg.ppo.num_minibatches,
        "num_envs": sum(run.pool.envs_per_worker),
        "worker_failures": c.worker_failures,
        # B_simple over the whole run: ratio of the averaged estimates, per part (examples per gradient)
        "b_simple": noise.get("combined", {}).get("b_simple"),
        "b_simple_ci": noise.get("combined", {}).get("b_simple_ci"),
        "b_simple_parts": noise,
        "targets": targets,
        # a population member stopped because its lr could no longer win (rlscale.population.losing_members)
        "pruned": json.loads((run.run_dir / "pruned.json").read_text()) if (run.run_dir / "pruned.json").is_file() else None,
        "atari": family == "atari",
        "git_sha": git_sha(),
        "run_dir": str(run.run_dir),
    }
