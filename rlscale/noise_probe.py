"""`rlscale noise-probe`: the noise a batch of RL data really has, beside the in-loop estimates.

At each chosen checkpoint of a run the policy is frozen; the run's own worker layout (same envs
per worker and fragment shape, the probe's own action seeds) continues the run's environments
where the checkpoint saved them (local backend; new episodes otherwise), burns in, then collects
K batches of B env steps, each after a gap of steps that decorrelates it from the one before. Per loss part (policy: clipped surrogate minus the entropy bonus; value; combined; and adam:
the combined gradient in the metric of the checkpoint's Adam preconditioner P, tr(P Sigma) /
G^T P G, which is the reference on gradients scaled by sqrt(P); the in-loop estimate keeps that
P for every minibatch) the
batch gradients give the between-batch reference (rlscale.noise_scale.between_batch_estimates,
a bootstrap interval over the batches). On the same K batches every in-loop estimator runs
through the learner's own code (Learner.update at learning rate 0, so every minibatch is
measured at the checkpoint's parameters), with random and with env micro-batch grouping; their
numerators and denominators are averaged over the K batches before the ratio is taken.

Units: B_simple in examples (env steps) per gradient, for the reference and the in-loop
estimates alike. Output: RUN_DIR/noise_probe.json (a list of rows) and noise_probe.png.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rlscale import checkpoint
from rlscale.actors import make_pool, worker_seed
from rlscale.config import TrainConfig, load_train_config
from rlscale.errors import ConfigError
from rlscale.noise_scale import between_batch_estimates, bootstrap_interval
from rlscale.ppo import Learner, ppo_loss
from rlscale.rollout import FragmentBuffer
from rlscale.train import fragment_lengths
from rlscale.util import atomic_write_json, configure_learner_process, seed_everything

PARTS = ("policy", "value", "combined", "adam")
MODES: tuple[Literal["random", "env"], ...] = ("random", "env")


def _checkpoints(run_dir: Path, iterations: list[int] | None) -> list[Path]:
    paths = checkpoint.list_checkpoints(run_dir)
    if not paths:
        raise ConfigError(f"'{run_dir}' holds no checkpoint; train with checkpoint_keep=0 and a checkpoint_interval "
                          "that spans the run, then probe it")
    if not iterations:
        return paths
    by_iter = {int(p.stem.split("_")[1]): p for p in paths}
    missing = [i for i in iterations if i not in by_iter]
    if missing:
        raise ConfigError(f"no checkpoint at iteration(s) {missing} in '{run_dir}'; available: {sorted(by_iter)}")
    return [by_iter[i] for i in iterations]


def batch_gradients(learner: Learner, batch: dict, clip_coef: float, precond: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Flat gradients [D] of each loss part on the whole batch (mean over its steps), at the
    learner's parameters; advantages normalised over the batch. Micro-batches bound memory.
    With Adam's preconditioner `precond` [D], also 'adam': the combined gradient times
    sqrt(precond), whose plain noise scale is tr(P Sigma) / G^T P G."""
    cfg = learner.cfg.ppo
    t = learner._to_device(batch)
    n = len(t["actions"])
    adv = learner._normalized(t["advantages"])
    sums = {k: [torch.zeros_like(q) for q in learner.params] for k in PARTS}
    for start in range(0, n, cfg.microbatch_size):
        j = torch.arange(start, min(n, start + cfg.microbatch_size), device=learner.device)
        logits, values = learner.model(learner._obs(t["obs"], j))
        parts, _ = ppo_loss(logits, values, t["actions"][j], t["logp"][j], t["values"][j], adv[j], t["returns"][j],
                            clip_coef=clip_coef, clip_vloss=cfg.clip_vloss, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef)
        w = len(j) / n
        g_pi = learner._grads(parts.policy, retain=True)
        g_v = learner._grads(parts.value)
        for k, g in (("policy", g_pi), ("value", g_v), ("combined", torch._foreach_add(g_pi, g_v))):
            torch._foreach_add_(sums[k], g, alpha=w)
    out = {k: torch.cat([x.flatten() for x in v]).cpu() for k, v in sums.items()}
    if precond is not None:
        out["adam"] = out["combined"] * precond.sqrt()
    return out


def _continue_run_envs(pool, path: Path, seed: int) -> bool:
    """Put the run's own environments, as saved beside the checkpoint (local backend), into the
    probe's workers, with the probe's action streams. New episodes started together would keep
    the envs in step where every episode runs to the time limit (a solved CartPole): the
    between-batch reference would then hold a phase shared by all envs of a batch that training,
    whose envs fell out of step early, does not have. Returns whether the states were restored."""
    blobs = checkpoint.load_workers(path) if hasattr(pool, "set_state") else None
    if blobs is None or len(blobs) != len(pool.envs_per_worker):
        return False
    pool.set_state(blobs)
    for i, w in enumerate(pool.workers):
        w.generator.manual_seed(worker_seed(seed, i))
    return True


def inloop_learner(cfg: TrainConfig, spec, state: dict, mode: Literal["random", "env"],
                   precond: list[torch.Tensor] | None = None) -> Learner:
    """A learner at the checkpoint's weights whose free estimator measures every minibatch of one
    epoch, policy and value apart, with the given micro-batch grouping, and, given Adam's
    preconditioner at the checkpoint (`precond`, per parameter), the preconditioned estimate in
    that fixed metric."""
    c = copy.deepcopy(cfg)
    c.noise.enabled, c.noise.microbatch_mode, c.noise.split_policy_value = True, mode, True
    c.noise.epochs, c.noise.per_example_interval, c.noise.b_noise_interval = "first", 0, 0
    c.ppo.epochs, c.ppo.target_kl = 1, None
    learner = Learner(c, spec, torch.device("cpu"))
    learner.model.load_state_dict(state["model"])
    # the checkpoint's P for every minibatch: the lr-0 steps the probe takes still move Adam's
    # second moment, which would otherwise enter P from the second minibatch on
    learner.fixed_preconditioner = precond
    return learner


def inloop_estimates(learner: Learner, batch: dict, version: int) -> dict[str, tuple[float, float]]:
    """(|G|^2, tr(Sigma)) per part from the learner's own free estimator on one batch."""
    learner.version = version  # the batch was collected at lag 0
    m = learner.update(batch, lr=0.0)  # lr 0: every minibatch at the checkpoint's parameters
    keys = {"combined": ("noise/grad_sq", "noise/trace_cov"), "policy": ("noise/policy_grad_sq", "noise/policy_trace_cov"),
            "value": ("noise/value_grad_sq", "noise/value_trace_cov"), "adam": ("noise/adam_grad_sq", "noise/adam_trace_cov")}
    return {part: (m.get(g, math.nan), m.get(t, math.nan)) for part, (g, t) in keys.items()}


def _ratio(grad_sq: float, trace_cov: float) -> float | None:
    return trace_cov / grad_sq if grad_sq > 0 and trace_cov >= 0 else None


def probe_checkpoint(cfg: TrainConfig, path: Path, env_steps: int, batches: int, burn_in: int, gap: int | None, seed: int,
                     n_boot: int) -> list[dict]:
    state = checkpoint.load(path)
    learner_state = state["learner"]
    probe_cfg = copy.deepcopy(cfg)
    probe_cfg.seed = seed  # the workers' own streams, not the run's
    pool = make_pool(probe_cfg)
    try:
        resumed = _continue_run_envs(pool, path, seed)
        spec = pool.spec()
        seed_everything(cfg.seed)
        learner = Learner(cfg, spec, torch.device("cpu"))
        learner.model.load_state_dict(learner_state["model"])
        learner.optimizer.load_state_dict(learner_state["optimizer"])
        p = learner._adam_preconditioner()  # None before Adam's first step: no 'adam' part
        precond = torch.cat([x.flatten() for x in p]).cpu() if p is not None else None
        parts = [k for k in PARTS if k != "adam" or precond is not None]
        version = learner.version = learner_state["version"]
        weights = learner.get_weights()
        envs = pool.envs_per_worker
        lengths = fragment_lengths(cfg, envs, env_steps)
        gap = 2 * max(lengths) if gap is None else gap  # default: twice a batch's length per env

        def steps(n_per_env: int) -> None:  # played and discarded
            while n_per_env > 0:
                T = min(n_per_env, 256)
                pool.sample([T] * len(envs), weights, version)
                n_per_env -= T

        inloop_learners = {mode: inloop_learner(cfg, spec, learner_state, mode, p) for mode in MODES}
        steps(burn_in)
        grads: dict[str, list[torch.Tensor]] = {k: [] for k in parts}
        inloop: dict[str, dict[str, list[tuple[float, float]]]] = {m: {k: [] for k in parts} for m in MODES}
        for _ in range(batches):
            buf = FragmentBuffer(cfg.ppo.gamma, cfg.ppo.gae_lambda)
            while len(buf) < env_steps:
                for frag in pool.sample(lengths, weights, version).fragments:
                    buf.add(frag)
            batch = buf.take(env_steps)
            for k, g in batch_gradients(learner, batch, cfg.ppo.clip_coef, precond).items():
                grads[k].append(g)
            for mode in MODES:
                for k, est in inloop_estimates(inloop_learners[mode], batch, version).items():
                    if k in inloop[mode]:
                        inloop[mode][k].append(est)
            steps(gap)
    finally:
        pool.close()
    counters = state["run"]["counters"]
    rows = []
    for part in parts:
        g = torch.stack(grads[part])
        grad_sq, trace_cov = between_batch_estimates(g, env_steps)
        lo, hi = bootstrap_interval(g, env_steps, n_boot=n_boot, seed=seed)
        dev = g - g.mean(0)
        cos = torch.nn.functional.cosine_similarity(dev[1:], dev[:-1], dim=1) if len(g) > 2 else torch.zeros(1)
        row = {
            "iteration": counters["iteration"], "env_steps": counters["env_steps"], "part": part,
            "env_steps_per_batch": env_steps, "batches": batches,
            "reference_grad_sq": grad_sq, "reference_trace_cov": trace_cov,
            "reference_b_simple": _ratio(grad_sq, trace_cov), "reference_b_simple_ci": [lo, hi],
            # a diagnostic of dependence between successive batches: the mean cosine of their
            # deviations from the mean (about -1/(K-1) for independent batches whose noise is
            # spread over many directions; a few dominant directions spread it wider)
            "successive_batch_cosine": float(cos.mean()),
            # True: the envs continue from the run's own states at the checkpoint (their episodes
            # at the phases training had); False: new episodes, all started at once
            "envs_from_run": resumed,
        }
        for mode in MODES:
            pairs = np.array(inloop[mode][part], dtype=float)  # [K, 2]: (|G|^2, tr(Sigma)) per batch
            gs, tc = float(np.nanmean(pairs[:, 0])), float(np.nanmean(pairs[:, 1]))
            row[f"inloop_grad_sq_{mode}"], row[f"inloop_trace_cov_{mode}"] = gs, tc
            row[f"inloop_b_simple_{mode}"] = _ratio(gs, tc)
        row["inloop_b_simple"] = row[f"inloop_b_simple_{cfg.noise.microbatch_mode}"]  # the run's headline
        rows.append(row)
    return rows


def noise_probe(run_dir: Path, iterations: list[int] | None = None, batches: int = 30, env_steps: list[int] | None = None,
                burn_in: int = 500, gap: int | None = None, seed: int = 12345, n_boot: int = 1000, quiet: bool = False) -> list[dict]:
    """Probe a run's checkpoints; write RUN_DIR/noise_probe.json and noise_probe.png."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"'{run_dir}' holds no rlscale run (config.yaml missing); pass a run directory")
    if batches < 3:
        raise ConfigError(f"--batches must be at least 3 (between-batch covariance and its interval), got {batches}")
    if burn_in < 0 or (gap is not None and gap < 0):
        raise ConfigError("--burn-in and --gap are env steps per env and must be >= 0")
    cfg = load_train_config(run_dir / "config.yaml", ["tracking.wandb_mode=disabled", "tracking.progress_bar=false"])
    sizes = env_steps or [cfg.ppo.env_steps_per_iteration]
    for b in sizes:
        if b <= 0 or b % cfg.ppo.num_minibatches:
            raise ConfigError(f"--env-steps {b} must be a positive multiple of the run's ppo.num_minibatches={cfg.ppo.num_minibatches}")
    paths = _checkpoints(run_dir, iterations)
    configure_learner_process(torch.device("cpu"), cfg.torch_threads)
    if cfg.workers.backend == "ray":
        from rlscale.cluster import ensure_ray

        ensure_ray(cfg.workers.address)
    rows = []
    for path in paths:
        for b in sizes:
            new = probe_checkpoint(cfg, path, b, batches, burn_in, gap, seed, n_boot)
            rows += new
            if not quiet:
                print(f"{path.name} B={b}: " + ", ".join(
                    f"{r['part']} ref {_fmt(r['reference_b_simple'])} random {_fmt(r['inloop_b_simple_random'])} "
                    f"env {_fmt(r['inloop_b_simple_env'])}" for r in new), file=sys.stderr)
    atomic_write_json(run_dir / "noise_probe.json", rows)
    plot(rows, run_dir / "noise_probe.png")
    return rows


def _fmt(x) -> str:
    return "undefined" if x is None else f"{x:.3g}"


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parts = [p for p in PARTS if any(r["part"] == p for r in rows)]
    fig = Figure(figsize=(4.2 * len(parts), 3.6))
    FigureCanvasAgg(fig)
    for i, part in enumerate(parts):
        ax = fig.add_subplot(1, len(parts), i + 1)
        sel = [r for r in rows if r["part"] == part]
        x = np.array([r["env_steps"] for r in sel], dtype=float)
        ref = np.array([r["reference_b_simple"] or np.nan for r in sel], dtype=float)
        lo = np.array([r["reference_b_simple_ci"][0] for r in sel], dtype=float)
        hi = np.array([min(r["reference_b_simple_ci"][1], 1e12) for r in sel], dtype=float)
        ax.errorbar(x, ref, yerr=[np.clip(ref - lo, 0, None), np.clip(hi - ref, 0, None)], fmt="o-", color="k",
                    capsize=3, label="between batches (95% CI)")
        for mode, color in zip(MODES, ("tab:orange", "tab:blue")):
            ax.plot(x, [r[f"inloop_b_simple_{mode}"] or np.nan for r in sel], "s--", color=color, label=f"in-loop, {mode} micro-batches")
        ax.set_yscale("log")
        ax.set_xlabel("env steps at the checkpoint")
        ax.set_title("combined gradient, Adam-preconditioned" if part == "adam" else f"{part} gradient")
        if i == 0:
            ax.set_ylabel("B_simple (env steps per gradient)")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
