"""Sweeps: a grid of training trials (env x batch size x lr rule or lr x seed) run on Ray.

Each trial is a Ray task inside its own placement group, which reserves one CPU (and
``trial_gpus``) for the learner plus one bundle per rollout actor, so trials and their actors
never oversubscribe the cluster; trials wait for free resources rather than compete. Trial
state lives in SWEEP_DIR/trials/<id>/trial.json; rerunning the command skips completed
trials, resumes interrupted ones from their last checkpoint, and reruns failed ones.

With ``population: true`` the trials that share everything but the settings a population's
members may set apart (seed, learning rate and its rule, ...: rlscale.population.MEMBER_KEYS),
i.e. the same env, batch size and network, run as one population (rlscale.population) in one
Ray task of one CPU; each member still writes its own trial directory and trial.json, in the
form a separate trial writes them, so `rlscale analyze` reads the sweep as it reads any other.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from rlscale.config import load_train_config, load_yaml, merge_into, parse_overrides
from rlscale.errors import ConfigError
from rlscale.schedules import LrRule
from rlscale.util import atomic_write_json, atomic_write_text


@dataclass
class SweepEnv:
    id: str = "CartPole-v1"
    targets: list[float] = field(default_factory=list)
    """Returns whose first crossing is recorded; a trial stops at the highest."""
    total_env_steps: int = 0
    """Env-step budget of each trial on this env (0: the base config's total_env_steps)."""
    overrides: dict = field(default_factory=dict)
    """Extra train-config overrides for this env (dotted keys)."""
    reference_score: float | None = None
    """A published or measured score of a trained agent; with target_fractions, targets are
    fixed in advance as fractions of the way from random_score to it."""
    random_score: float = 0.0
    """The score of a uniformly random policy (the fractions' zero)."""
    reference_source: str = ""
    """Where reference_score and random_score come from (paper, table, command)."""
    target_fractions: list[float] = field(default_factory=list)
    """Targets = random_score + f * (reference_score - random_score), f in (0, 1]."""
    fragment_length: int = 0
    """This env's fragment length T when the sweep varies B through envs (0: the sweep's)."""
    base_config: str = ""
    """This env's train config (empty: the sweep's base_config), e.g. its family's default."""
    env_steps_per_iteration: list[int] = field(default_factory=list)
    """This env's batch sizes (empty: the sweep's)."""
    lr_grid: list[float] = field(default_factory=list)
    """This env's learning-rate grid (empty: the sweep's)."""
    eval_env_steps: int = 0
    """This env's evaluation spacing in env steps (0: the sweep's)."""
    adaptive: dict = field(default_factory=dict)
    """Train-config overrides of this env's adaptive-batch runs (dotted keys; the sweep adds
    ppo.batch_schedule=noise): when set, one such trial per seed (lr_rule 'adaptive') runs
    beside the fixed-B grid, and the analysis sets it beside the fixed-B frontier. With a
    fragment_length T, its B varies as the grid's does, through the envs taking part at T:
    workers of B_min / T envs each, B_max / B_min of them, and workers.collect=needed (these
    overrides may replace that shape)."""

    def resolved_targets(self) -> list[float]:
        if not self.target_fractions:
            return [float(t) for t in self.targets]
        span = float(self.reference_score) - self.random_score  # type: ignore[arg-type]
        return [round(self.random_score + f * span, 6) for f in self.target_fractions]


@dataclass
class SweepConfig:
    name: str = "sweep"
    base_config: str = "configs/cartpole.yaml"
    """Train config every trial starts from (relative paths: to the working directory)."""
    overrides: dict = field(default_factory=dict)
    """Train-config overrides for all trials (dotted keys), e.g. workers.backend: local."""
    envs: list[SweepEnv] = field(default_factory=list)
    env_steps_per_iteration: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024])
    """Batch sizes B (env steps per PPO iteration); powers of two by default."""
    fragment_length: int = 0
    """If > 0, B varies through the number of parallel envs at this fragment length T (the
    usual way to vary an RL batch, and GAE sees T-step fragments at every B): a trial of B
    steps B / T envs, workers.num_envs_per_worker = B / (T x workers.num_workers). 0: the base
    config's envs, each fragment B / envs steps long (T grows with B)."""
    lr_rules: list[LrRule] = field(default_factory=lambda: ["fixed"])
    """Rules scaling lr from the reference batch: fixed, linear, sqrt, noise."""
    lr: float = 0.0
    """Learning rate tuned at reference_env_steps (0: the base config's ppo.lr)."""
    reference_env_steps: int = 0
    """B0 of the rules (0: the base config's ppo.env_steps_per_iteration)."""
    eval_env_steps: int = 0
    """If > 0, every trial evaluates its policy (eval.*) every max(1, eval_env_steps // B)
    iterations, and targets are read from those evaluations: a crossing is dated to within
    max(B, eval_env_steps) env steps at every B, instead of lagging by the finished training
    episodes' age. 0: the base config's eval settings."""
    lr_grid: list[float] = field(default_factory=list)
    """Learning rates tried at every batch size (rule 'grid'), beside or instead of lr_rules."""
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    microbatches_per_minibatch: int = 0
    """If > 0, micro-batch size = minibatch / this (keeps the noise estimate's B_small in step)."""
    max_concurrent: int = 0
    """Trials at once; 0: as many as the cluster's resources allow."""
    trial_gpus: float = 0.0
    """GPUs reserved for each trial's learner."""
    address: str | None = None
    """Ray cluster address (None: local cluster)."""
    population: bool = False
    """Train the trials that differ only in seed, lr and other per-member scalars (same env,
    batch size, network and every other shape setting) as one population per group, one Ray
    task each. Needs workers.backend: local; W&B is off for population trials (their overrides
    get tracking.wandb_mode=disabled: the analysis reads trial.json and metrics.csv or metrics.csv.gz only)."""
    prune: bool = False
    """In a population, stop a member once its learning rate can no longer win any target it
    has not reached against the other lrs of its rule (the smallest median iterations over
    seeds, as the analysis picks the best lr per batch size; rlscale.population.losing_members):
    which lr wins and the winner's numbers stay those of full runs, and the losers' budgets are
    saved. Bootstrap resamples see a stopped seed as never reaching its open targets, and seeds
    or targets added to the sweep later are compared against members that stopped."""
    prune_settled: bool = False
    """With prune: also stop a seed once its own lr's median iterations are fixed without it at
    every target it has not reached (the winner's straggler seeds included): no lr's median and
    so no choice of lr can change, but the seed adds no B_simple to a target it would have
    reached later, and bootstrap resamples see it as never reaching."""


@dataclass
class Trial:
    trial_id: str
    env_id: str
    base_config: str
    seed: int
    env_steps_per_iteration: int
    lr_rule: str
    lr: float
    overrides: list[str]


def load_sweep_config(path, overrides=()) -> SweepConfig:
    cfg = merge_into(SweepConfig, load_yaml(path), parse_overrides(list(overrides)))
    if not cfg.envs:
        raise ConfigError(f"sweep '{path}' lists no envs; add an 'envs:' list with ids and targets")
    if cfg.prune and not cfg.population:
        raise ConfigError(f"sweep '{path}' sets prune: true, which stops members of a population; set population: true as well")
    if cfg.prune_settled and not cfg.prune:
        raise ConfigError(f"sweep '{path}' sets prune_settled: true, which refines pruning; set prune: true as well")
    for e in cfg.envs:
        _check_env_grid(cfg, e, path)
    for steps in [cfg.eval_env_steps] + [e.eval_env_steps for e in cfg.envs]:
        if steps < 0:
            raise ConfigError(f"sweep eval_env_steps must be >= 0 (0 = the base config's eval settings), got {steps}")
    for e in cfg.envs:
        _check_env_targets(e)
        T = _fragment_length(cfg, e)
        if T < 0:
            raise ConfigError(f"sweep fragment_length must be >= 0 (0 = T grows with B), got {T} for env '{e.id}'")
        workers = _num_workers(cfg, e)
        if T and workers < 1:
            raise ConfigError(f"sweep fragment_length sets the envs per worker, so env '{e.id}' needs workers.num_workers >= 1 "
                              f"(got {workers}); set it in the sweep's overrides")
        for b in _batch_sizes(cfg, e) if T else []:
            if b % (T * workers):
                raise ConfigError(f"sweep batch size {b} is not a multiple of fragment_length {T} x workers.num_workers {workers} "
                                  f"(env '{e.id}'); pick batch sizes that are, e.g. powers of two")
    return cfg


def _check_env_grid(cfg: SweepConfig, e: SweepEnv, path) -> None:
    """An env's grid is not empty and holds positive batch sizes and learning rates."""
    if not _batch_sizes(cfg, e) or not cfg.seeds or not (cfg.lr_rules or _lr_grid(cfg, e)):
        raise ConfigError(f"sweep '{path}' has an empty grid for env '{e.id}'; env_steps_per_iteration, seeds and lr_rules "
                          f"(or lr_grid) need at least one value each")
    for b in _batch_sizes(cfg, e):
        if b <= 0:
            raise ConfigError(f"sweep env_steps_per_iteration entries must be positive, got {b}")
    for lr in _lr_grid(cfg, e):
        if not lr > 0:
            raise ConfigError(f"sweep lr_grid entries must be positive, got {lr}")


def _num_workers(cfg: SweepConfig, env: SweepEnv, base=None) -> int:
    """The env's trials' rollout workers: its overrides, the sweep's, else its base config's
    (`base`: that config, when the caller has it loaded)."""
    overrides = {**cfg.overrides, **env.overrides}
    if "workers.num_workers" in overrides:
        return int(overrides["workers.num_workers"])
    base = base if base is not None else load_yaml(env.base_config or cfg.base_config)
    return int(OmegaConf.select(base, "workers.num_workers", default=0))


def _slug(env_id: str) -> str:
    return env_id.replace("ALE/", "").replace("/", "-")


def _fragment_length(cfg: SweepConfig, env: SweepEnv) -> int:
    return env.fragment_length or cfg.fragment_length


def _eval_env_steps(cfg: SweepConfig, env: SweepEnv) -> int:
    return env.eval_env_steps or cfg.eval_env_steps


def _run_overrides(cfg: SweepConfig, env: SweepEnv, targets: list[float]) -> list[str]:
    """What every trial of the env sets after its own settings: targets, stop, group, budget."""
    ov = [f"targets={_yaml_value(targets)}", f"stop_return={max(targets)}", f"tracking.group={cfg.name}"]
    return ov + ([f"total_env_steps={env.total_env_steps}"] if env.total_env_steps else [])


def _batch_sizes(cfg: SweepConfig, env: SweepEnv) -> list[int]:
    return list(env.env_steps_per_iteration or cfg.env_steps_per_iteration)


def _lr_grid(cfg: SweepConfig, env: SweepEnv) -> list[float]:
    return list(env.lr_grid or cfg.lr_grid)


def _check_env_targets(e: SweepEnv) -> None:
    if e.target_fractions:
        if e.targets:
            raise ConfigError(f"sweep env '{e.id}' sets both targets and target_fractions; keep one")
        if e.reference_score is None or not e.reference_source.strip():
            raise ConfigError(f"sweep env '{e.id}' has target_fractions but no reference_score and reference_source; "
                              f"write the reference score and where it comes from")
        if e.reference_score <= e.random_score:
            raise ConfigError(f"sweep env '{e.id}': reference_score ({e.reference_score}) must exceed random_score "
                              f"({e.random_score}); targets are fractions of the way up from random")
        bad = [f for f in e.target_fractions if not 0 < f <= 1]
        if bad:
            raise ConfigError(f"sweep env '{e.id}': target_fractions must lie in (0, 1], got {bad}")
    elif not e.targets:
        raise ConfigError(f"sweep env '{e.id}' has no targets; list the returns to reach, e.g. targets: [100, 200], "
                          f"or target_fractions with a reference_score")


def _fmt(x: float) -> str:
    return f"{x:g}".replace("+", "")


def expand_grid(cfg: SweepConfig) -> list[Trial]:
    trials = []
    for env in cfg.envs:
        base_path = env.base_config or cfg.base_config
        base = load_yaml(base_path)
        base_lr = cfg.lr or float(OmegaConf.select(base, "ppo.lr", default=2.5e-4))
        b0 = cfg.reference_env_steps or int(OmegaConf.select(base, "ppo.env_steps_per_iteration", default=512))
        base_nmb = OmegaConf.select(base, "ppo.num_minibatches", default=4)
        slug = _slug(env.id)
        env_overrides = {**cfg.overrides, **env.overrides}  # the env's own win
        shared = [f"{k}={_yaml_value(v)}" for k, v in env_overrides.items()]
        nmb = int(env_overrides.get("ppo.num_minibatches", base_nmb))
        targets = env.resolved_targets()
        T, eval_steps = _fragment_length(cfg, env), _eval_env_steps(cfg, env)
        workers = _num_workers(cfg, env, base)
        for B in _batch_sizes(cfg, env):
            shape = [f"workers.fragment_length={T}", f"workers.num_envs_per_worker={B // (T * workers)}"] if T else []
            lr_choices = [(rule, base_lr) for rule in cfg.lr_rules] + [("grid", lr) for lr in _lr_grid(cfg, env)]
            for rule, lr in lr_choices:
                for seed in cfg.seeds:
                    ov = shared + shape + [
                        f"env.id={env.id}", f"seed={seed}", f"ppo.env_steps_per_iteration={B}",
                        f"ppo.lr={lr}", f"ppo.lr_rule={'fixed' if rule == 'grid' else rule}",
                        f"ppo.lr_reference_env_steps={b0}", *_run_overrides(cfg, env, targets),
                    ]
                    if eval_steps:
                        ov.append(f"eval.interval={max(1, eval_steps // B)}")
                    if cfg.population:
                        ov.append("tracking.wandb_mode=disabled")
                    if cfg.microbatches_per_minibatch:
                        ov.append(f"ppo.microbatch_size={max(1, B // nmb // cfg.microbatches_per_minibatch)}")
                    tag = rule if rule != "grid" else f"lr{_fmt(lr)}"
                    tid = f"{slug}_B{B}_{tag}_s{seed}"
                    ov.append(f"tracking.name={tid}")
                    trials.append(Trial(tid, env.id, base_path, seed, B, rule, lr, ov))
        if env.adaptive:
            trials += _adaptive_trials(cfg, env, base_path, shared, targets)
    return trials


def _adaptive_trials(cfg: SweepConfig, env: SweepEnv, base_path: str, shared: list[str], targets: list[float]) -> list[Trial]:
    """One adaptive-batch trial per seed: the env's shared overrides, then its `adaptive` ones."""
    from rlscale.config import load_train_config

    extra = [f"{k}={_yaml_value(v)}" for k, v in env.adaptive.items()]
    shape = _adaptive_shape(cfg, env, load_train_config(base_path, [*shared, *extra, "ppo.batch_schedule=noise"]))
    probe = load_train_config(base_path, [*shared, *shape, *extra, "ppo.batch_schedule=noise"])  # its B0 and lr, for the record
    eval_steps = _eval_env_steps(cfg, env)
    out = []
    for seed in cfg.seeds:
        tid = f"{_slug(env.id)}_adaptive_s{seed}"
        ov = [*shared, *shape, f"env.id={env.id}", f"seed={seed}", *extra, "ppo.batch_schedule=noise",
              *_run_overrides(cfg, env, targets)]
        if eval_steps:  # its B changes: evaluate every eval_steps env steps, as the grid's trials do
            ov += ["eval.interval=0", f"eval.env_steps={eval_steps}"]
        if cfg.population:
            ov.append("tracking.wandb_mode=disabled")
        ov.append(f"tracking.name={tid}")
        out.append(Trial(tid, env.id, base_path, seed, probe.ppo.env_steps_per_iteration, "adaptive", probe.ppo.lr, ov))
    return out


def _adaptive_shape(cfg: SweepConfig, env: SweepEnv, probe) -> list[str]:
    """Worker overrides that let an adaptive run's B vary as the grid's does (through the envs
    taking part at the env's fragment length T): B_max / B_min workers of B_min / T envs."""
    from rlscale.schedules import batch_bounds

    T = _fragment_length(cfg, env)
    if not T:
        return []
    lo, hi = batch_bounds(probe.ppo)
    if lo % T or hi % lo:
        raise ConfigError(f"sweep env {env.id}: adaptive ppo.batch_min={lo} must be a multiple of fragment_length {T} "
                          f"and ppo.batch_max={hi} a multiple of batch_min, so that B varies through whole workers")
    return [f"workers.fragment_length={T}", "workers.collect=needed", f"workers.num_envs_per_worker={lo // T}",
            f"workers.num_workers={hi // lo}", "workers.num_envs_per_worker_list=[]"]


def _yaml_value(v) -> str:
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _trial_record(trial: Trial, status: str, error: str | None = None, summary: dict | None = None, nmb: int = 0,
                  population: dict | None = None) -> dict:
    s = summary or {}
    return {
        "trial_id": trial.trial_id, "env_id": trial.env_id, "seed": trial.seed,
        "env_steps_per_iteration": trial.env_steps_per_iteration, "num_minibatches": s.get("num_minibatches", nmb),
        "lr_rule": trial.lr_rule, "lr": trial.lr, "status": status, "error": error,
        "targets": s.get("targets", {}), "b_simple": s.get("b_simple"), "pruned": s.get("pruned"),
        "env_steps": s.get("env_steps"), "iterations": s.get("iterations"), "wall_time_s": s.get("wall_time_s"),
        "overrides": trial.overrides, "population": population,
    }


# A trial started afresh keeps the pending trial.json `run_sweep` wrote for it until its own record
# replaces it, so that an analysis meanwhile sees it running, not absent
KEEP_ON_FRESH_START = ("trial.json",)


def run_trial(trial: Trial, base_config: dict, trial_dir: str | Path) -> dict:
    """Train one trial (in a Ray task or in-process); never raises: failures are recorded."""
    from rlscale.train import train

    trial_dir = Path(trial_dir)
    nmb = 0
    try:
        cfg = load_train_config(base_config, trial.overrides)
        nmb = cfg.ppo.num_minibatches
        resume = _has_checkpoint(trial_dir)
        if resume:
            cfg = load_train_config(trial_dir / "config.yaml", [])
        summary = train(cfg, trial_dir, resume=resume, overwrite=not resume, quiet=True, init_ray=False, keep=KEEP_ON_FRESH_START)
        rec = _trial_record(trial, "completed", summary=summary, nmb=nmb)
    except Exception as e:  # recorded, so that analysis reports the failure
        rec = _trial_record(trial, "failed", error=_failure(trial_dir, e), nmb=nmb)
    atomic_write_json(trial_dir / "trial.json", rec)
    if "wandb" in sys.modules:
        # Close W&B's service now: Ray reuses or ends this worker process later, and W&B's
        # own exit hook would then find its service gone.
        sys.modules["wandb"].teardown()
    return rec


def _has_checkpoint(trial_dir: Path) -> bool:
    return (trial_dir / "checkpoints").is_dir() and any((trial_dir / "checkpoints").glob("ckpt_*.pt"))


def _failure(trial_dir: Path, e: Exception) -> str:
    trial_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(trial_dir / "error.txt", traceback.format_exc())
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def run_population(trials: list[Trial], base_config: dict, trial_dirs: list[str], prune: bool = False,
                   finished: Sequence = (), prune_settled: bool = False) -> list[dict]:
    """Train trials that can share a population (see `population_groups`) as one; their
    records, written as run_trial writes them. Never raises: a failure fails every member.
    `finished`: completed trials of the same env and B that pruning compares against
    (`finished_trials`)."""
    from rlscale.population import train_population

    dirs = [Path(d) for d in trial_dirs]
    resume = any(_has_checkpoint(d) for d in dirs)  # the group's trials all resume or all start (population_groups)
    nmbs = [0] * len(trials)
    try:
        cfgs = [load_train_config(d / "config.yaml", []) if resume else load_train_config(base_config, t.overrides)
                for t, d in zip(trials, dirs)]
        nmbs = [c.ppo.num_minibatches for c in cfgs]
        summaries = train_population(cfgs, dirs, resume=resume, overwrite=not resume, quiet=True, prune=prune, keep=KEEP_ON_FRESH_START,
                                     groups=[(t.lr_rule, t.lr) for t in trials], finished=finished, prune_settled=prune_settled)
        pop = {"first": trials[0].trial_id, "members": len(trials)}  # scripts/study_cost.py sums populations' times
        recs = [_trial_record(t, "completed", summary=s, nmb=n, population=pop) for t, s, n in zip(trials, summaries, nmbs)]
    except Exception as e:  # recorded for every member, so that analysis reports the failure
        err = _failure(dirs[0], e)
        for d in dirs[1:]:
            atomic_write_text(d / "error.txt", (dirs[0] / "error.txt").read_text())
        recs = [_trial_record(t, "failed", error=err, nmb=n) for t, n in zip(trials, nmbs)]
    for rec, d in zip(recs, dirs):
        atomic_write_json(d / "trial.json", rec)
    return recs


def finished_trials(sweep_dir: Path, group: list[Trial]) -> list:
    """The sweep's completed trials of the group's env, B and lr rules, outside the group, as
    pruning's `population.Finished` runs: an lr added to a grid later can then lose to the lrs
    that ran before (the analysis compares them all). Read when the group starts, so that
    populations which finished earlier in the same sweep count."""
    from rlscale.population import Finished

    ids = {t.trial_id for t in group}
    keys = {(t.env_id, t.env_steps_per_iteration, t.lr_rule) for t in group}
    out = []
    for path in sorted((sweep_dir / "trials").glob("*/trial.json")):
        if path.parent.name in ids:
            continue
        try:
            rec = json.loads(path.read_text())
            if rec.get("status") == "completed" and (rec.get("env_id"), rec.get("env_steps_per_iteration"), rec.get("lr_rule")) in keys:
                out.append(Finished.from_summary((rec["lr_rule"], rec["lr"]), rec))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue  # a record this code cannot read: pruning goes on without it (never less safe)
    return out


def _pooled(trials: list[Trial]) -> list[Trial]:
    """The trials a population may train: all but the adaptive-batch ones (run alone)."""
    return [t for t in trials if t.lr_rule != "adaptive"]


def population_groups(todo: list[Trial], trial_cfgs: dict, sweep_dir: Path) -> list[list[Trial]]:
    """The trials to run, grouped into populations: the same shared settings and either all
    resuming or all starting. A trial resumes when it holds a checkpoint, or when it left its
    population (summary.json, its trial still pending) and members of the same settings hold
    checkpoints: a stop interrupted that population, which keeps the member's records as written
    (`population.train_population`). Where none holds one, the stop came before the first round
    of checkpoints, and all start again. Refuses (ConfigError) a trial no population can train,
    before anything starts."""
    from rlscale.population import check_population, shared_settings

    settings = {t.trial_id: shared_settings(trial_cfgs[t.trial_id]) for t in todo}
    held = {t.trial_id: _has_checkpoint(sweep_dir / "trials" / t.trial_id) for t in todo}
    saved = {settings[t.trial_id] for t in todo if held[t.trial_id]}
    groups: dict[tuple[str, bool], list[Trial]] = {}
    for t in todo:
        left = (sweep_dir / "trials" / t.trial_id / "summary.json").is_file() and settings[t.trial_id] in saved
        key = (settings[t.trial_id], held[t.trial_id] or left)
        groups.setdefault(key, []).append(t)
    out = list(groups.values())
    for group in out:
        check_population([trial_cfgs[t.trial_id] for t in group], [sweep_dir / "trials" / t.trial_id for t in group])
    return out


def _bundles(trial_cfg, trial_gpus: float) -> list[dict]:
    from rlscale.actors import plan_envs

    learner = {"CPU": 1.0}
    if trial_gpus:
        learner["GPU"] = trial_gpus
    if trial_cfg.workers.backend == "local":
        return [learner]
    return [learner] + [{"CPU": trial_cfg.workers.num_cpus_per_worker} for _ in plan_envs(trial_cfg)]


def write_wandb_sweep_files(cfg: SweepConfig, sweep_dir: Path) -> list[Path]:
    """W&B sweep files (one per env, since each env has its own targets) for `wandb sweep`.

    W&B's ${args_no_hyphens} expands to key=value pairs, which is exactly rlscale's override
    syntax, so a user with a W&B server runs `wandb sweep FILE` then `wandb agent ID`.
    """
    paths = []
    for env in cfg.envs:
        lrs = sorted(set(_lr_grid(cfg, env)) | ({cfg.lr} if cfg.lr else set()))
        slug = _slug(env.id)
        params = {
            "env.id": {"value": env.id},
            "ppo.env_steps_per_iteration": {"values": _batch_sizes(cfg, env)},
            "ppo.lr_rule": {"values": [r for r in cfg.lr_rules] or ["fixed"]},
            "seed": {"values": list(cfg.seeds)},
            "targets": {"value": json.dumps(env.resolved_targets())},
            "stop_return": {"value": max(env.resolved_targets())},
            "tracking.group": {"value": cfg.name},
        }
        if lrs:
            params["ppo.lr"] = {"values": lrs}
        if env.total_env_steps:
            params["total_env_steps"] = {"value": env.total_env_steps}
        for k, v in {**cfg.overrides, **env.overrides}.items():
            params[k] = {"value": v}
        doc = {
            "name": f"{cfg.name}-{slug}",
            "description": ("rlscale sweep grid; the study protocol's per-B settings (fragment_length's envs per B, "
                            "eval_env_steps' interval per B) and adaptive runs are not expressed here: run `rlscale sweep` for them"
                            if (_fragment_length(cfg, env) or _eval_env_steps(cfg, env) or env.adaptive)
                            else "rlscale sweep grid"),
            "program": "rlscale",
            "method": "grid",
            "metric": {"name": "charts/episode_return_smoothed", "goal": "maximize"},
            "parameters": params,
            "command": ["rlscale", "train", env.base_config or cfg.base_config, "tracking.wandb_mode=online", "${args_no_hyphens}"],
        }
        p = sweep_dir / f"wandb_sweep_{slug}.yaml"
        atomic_write_text(p, yaml.safe_dump(doc, sort_keys=False))
        paths.append(p)
    return paths


def run_sweep(config_path, overrides=(), sweep_dir: Path | None = None, quiet: bool = False,
              only_envs: list[str] | None = None, only: str | None = None) -> dict:
    """Run the sweep's trials not completed yet (with `only_envs`, only those envs' trials;
    with `only` 'grid' or 'adaptive', only the fixed-B grid's trials or the adaptive-batch
    runs; the others are left as they are); returns counts."""
    cfg = load_sweep_config(config_path, overrides)
    trials = expand_grid(cfg)
    if only not in (None, "grid", "adaptive"):
        raise ConfigError(f"only={only!r} is not a kind of trial; use 'grid' or 'adaptive' (or leave it out for both)")
    unknown = sorted(set(only_envs or []) - {e.id for e in cfg.envs})
    if unknown:
        raise ConfigError(f"--envs names {', '.join(unknown)}, which sweep '{config_path}' does not list; "
                          f"pick from {', '.join(e.id for e in cfg.envs)}")
    # Validate every trial's train config before anything starts (and before any file is written).
    trial_cfgs = {t.trial_id: load_train_config(t.base_config, t.overrides) for t in trials}
    sweep_dir = Path(sweep_dir) if sweep_dir else Path("sweeps") / cfg.name
    if cfg.population:  # refused before anything is written
        population_groups(_pooled(trials), trial_cfgs, sweep_dir)
    (sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
    meta = {
        "name": cfg.name,
        "targets": {e.id: e.resolved_targets() for e in cfg.envs},
        "references": {e.id: {"reference_score": e.reference_score, "random_score": e.random_score,
                              "source": e.reference_source, "target_fractions": list(e.target_fractions)}
                       for e in cfg.envs if e.target_fractions},
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "trials": [t.trial_id for t in trials],
    }
    atomic_write_json(sweep_dir / "sweep.json", meta)
    write_wandb_sweep_files(cfg, sweep_dir)

    todo, done = [], 0
    chosen = [t for t in trials if (not only_envs or t.env_id in only_envs)
              and (only is None or (t.lr_rule == "adaptive") == (only == "adaptive"))]
    for t in chosen:
        rec_path = sweep_dir / "trials" / t.trial_id / "trial.json"
        if rec_path.is_file():
            try:
                if json.loads(rec_path.read_text()).get("status") == "completed":
                    done += 1
                    continue
            except json.JSONDecodeError:
                pass
        todo.append(t)
    if todo:
        _connect(cfg, todo, trial_cfgs)  # a cluster too small is refused before any record says pending
    groups = ([*population_groups(_pooled(todo), trial_cfgs, sweep_dir), *[[t] for t in todo if t.lr_rule == "adaptive"]]
              if cfg.population else [[t] for t in todo])
    order = {t.trial_id: k for k, t in enumerate(todo)}
    # what a stop interrupted first (its checkpoints hold work not yet in a record), then the
    # config's order: env by env, adaptive runs after their env's grid
    groups.sort(key=lambda g: (not any(_has_checkpoint(sweep_dir / "trials" / t.trial_id) for t in g), order[g[0].trial_id]))
    for g in groups:  # a pending record names its population, as a completed one does (scripts/study_cost.py)
        pop = {"first": g[0].trial_id, "members": len(g)} if cfg.population and g[0].lr_rule != "adaptive" else None
        for t in g:
            rec_path = sweep_dir / "trials" / t.trial_id / "trial.json"
            rec_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(rec_path, _trial_record(t, "pending", nmb=trial_cfgs[t.trial_id].ppo.num_minibatches, population=pop))
    if not quiet:
        alone = sum(1 for g in groups if g[0].lr_rule == "adaptive")
        kinds = [*([f"{len(groups) - alone} populations"] if len(groups) > alone else []), *([f"{alone} adaptive runs"] if alone else [])]
        pops = f" as {' and '.join(kinds)}" if cfg.population and kinds else ""
        part = ", ".join([*(only_envs or []), *([f"{only} trials only"] if only else [])])
        picked = f" ({done + len(todo)} in {part})" if part else ""
        print(f"sweep {cfg.name}: {len(trials)} trials{picked}, {done} already completed, {len(todo)} to run{pops} -> {sweep_dir}",
              file=sys.stderr)

    results = _run_on_ray(cfg, groups, trial_cfgs, sweep_dir, quiet) if todo else []
    statuses = [r["status"] for r in results]
    out = {"sweep_dir": str(sweep_dir), "trials": len(trials), "skipped_completed": done,
           "ran": len(results), "completed": statuses.count("completed"), "failed": statuses.count("failed")}
    return out


def _connect(cfg: SweepConfig, todo: list[Trial], trial_cfgs: dict) -> None:
    """Join the sweep's Ray cluster; refuse it if one trial needs more CPUs than it has."""
    import ray

    from rlscale.cluster import ensure_ray

    ensure_ray(cfg.address)
    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    need = max(sum(b.get("CPU", 0) for b in _bundles(trial_cfgs[t.trial_id], cfg.trial_gpus)) for t in todo)
    if need > cluster_cpus:
        raise ConfigError(f"one trial needs {need:g} CPUs (learner + rollout actors) but the cluster has {cluster_cpus:g}; lower workers.num_workers or use workers.backend=local in the sweep overrides")


def _run_on_ray(cfg: SweepConfig, groups: list[list[Trial]], trial_cfgs: dict, sweep_dir: Path, quiet: bool) -> list[dict]:
    """One Ray task per group: a trial alone (run_trial) or a population (run_population)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    from tqdm import tqdm

    remote_trial, remote_population = ray.remote(run_trial), ray.remote(run_population)
    todo = [t for g in groups for t in g]
    limit = cfg.max_concurrent or len(groups)
    # each env's base config travels with its tasks as a dict: no path needed where they run
    bases = {p: OmegaConf.to_container(load_yaml(p)) for p in {t.base_config for t in todo}}
    queue = list(groups)
    running: dict = {}
    results: list[dict] = []
    bar = tqdm(total=len(todo), desc="trials", unit="trial", file=sys.stderr, disable=quiet)
    try:
        while queue or running:
            while queue and len(running) < limit:
                group = queue.pop(0)
                pg = placement_group(_bundles(trial_cfgs[group[0].trial_id], cfg.trial_gpus), strategy="PACK")
                strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)
                dirs = [str((sweep_dir / "trials" / t.trial_id).resolve()) for t in group]
                base = bases[group[0].base_config]
                pooled = cfg.population and group[0].lr_rule != "adaptive"
                fn, args = ((remote_population, (group, base, dirs, cfg.prune, finished_trials(sweep_dir, group) if cfg.prune else [],
                                                 cfg.prune_settled))
                            if pooled else (remote_trial, (group[0], base, dirs[0])))
                ref = fn.options(num_cpus=1, num_gpus=cfg.trial_gpus, scheduling_strategy=strategy, max_retries=0).remote(*args)
                running[ref] = (group, pg)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                group, pg = running.pop(ref)
                try:
                    out: Any = ray.get(ref)
                    recs: list[dict] = out if isinstance(out, list) else [out]
                except Exception as e:  # the task's process died: record its trials as failed
                    recs = []
                    for t in group:
                        recs.append(_trial_record(t, "failed", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
                        atomic_write_json(sweep_dir / "trials" / t.trial_id / "trial.json", recs[-1])
                remove_placement_group(pg)
                results.extend(recs)
                bar.update(len(group))
                bar.set_postfix(last=f"{group[-1].trial_id}:{recs[-1]['status']}", refresh=False)
    finally:
        bar.close()
    return results
