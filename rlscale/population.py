"""Populations: N PPO trials trained in one process as one vectorised model.

The trials of a critical-batch study that share the environment, the batch size, the fragment
shape and the network differ only in scalars: the seed, the learning rate, the clip, entropy
and value coefficients, the gradient clip. A population trains them together (as PureJaxRL
vmaps whole training runs): the members' parameters are stacked (``torch.func.
stack_module_state``) and every forward and backward runs once for all members through
``torch.func.vmap``; each member keeps its own Adam state, learning rate, minibatch order,
noise probe, run state and run directory. Members never mix data: member i's loss reads only
what member i's own policy collected on member i's own environments.

A member is the standalone trial of its config: at step 0 its weights, its rollout workers
(seeds, env offsets), its minibatch order and its Adam steps are those of ``rlscale train``
with workers.backend=local (tests/test_population.py checks gradients, one update and the
first iteration against a standalone Learner and run). A member whose loss or gradient turns
non-finite is frozen and reported (``diverged.json`` in its run directory); the others go on.
A resumed population continues its running members from one checkpoint iteration
(`aligned_checkpoints`; after a stop in the first checkpoint round they start again, in step);
members that left (budget used, pruned, or diverged, even before their first checkpoint) keep
their records as written.

Where a population spends less than its members would apart: the members' actions are drawn at
once from each worker's own generator stream (`draw_noise`: the same actions as the workers'
per-step multinomial draws), one Adam step updates every member (torch's foreach formula, per-
member learning rates and clipping), and a minibatch no noise probe measures (with
noise.epochs=first, every epoch after the first) is not cut into micro-batches, whose gradients
only the probe reads: it goes through one forward and backward, or pieces of at most
max(ppo.microbatch_size, UNMEASURED_PIECE) examples per member. So in a population
ppo.microbatch_size bounds the memory of measured minibatches only; the standalone Learner
keeps cutting every minibatch. The gradient is the same sum either way, up to float rounding
(tests/test_population.py compares a whole update with the standalone Learner's to 1e-5).

Populations use the local backend only (the workers step in this process, in lockstep, so that
one batched forward acts for every member), without overlap, W&B, or the per-example and
B_noise estimates; `check_population` refuses anything else with a one-line ConfigError.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from rlscale import checkpoint
from rlscale.actors import LocalPool, RolloutWorker, SampleResult, plan_envs
from rlscale.config import TrainConfig, check_minibatch, to_dict
from rlscale.envs import EnvSpec
from rlscale.errors import ConfigError
from rlscale.model import build_model
from rlscale.noise_scale import NoiseProbe
from rlscale.ppo import ppo_loss, resolve_device
from rlscale.rollout import Fragment, FrameStacks, microbatch_groups
from rlscale.tracking import Progress, pack_metrics
from rlscale.train import Run, check_run_dir, fragment_lengths, load_checkpoint, open_run
from rlscale.util import atomic_write_json, configure_learner_process, seed_everything

# Config keys the members of one population may set apart: scalars that change no tensor shape
# and no control flow shared by the members. Every other key must be equal.
MEMBER_KEYS = (
    "seed", "total_env_steps", "targets", "stop_return", "checkpoint_interval", "checkpoint_interval_s", "checkpoint_keep", "tracking.",
    "ppo.lr", "ppo.lr_rule", "ppo.lr_reference_env_steps", "ppo.anneal_lr", "ppo.anneal_clip", "ppo.gamma",
    "ppo.gae_lambda", "ppo.clip_coef", "ppo.ent_coef", "ppo.vf_coef", "ppo.max_grad_norm",
)
# Examples per member in one forward/backward of a minibatch no noise probe measures (where
# ppo.microbatch_size is smaller): a population's unmeasured minibatches, most of an update with
# noise.epochs=first, need not be cut into micro-batches, whose gradients only the probe reads.
UNMEASURED_PIECE = 1024
_LOSS_DIAGS = ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def _is_member_key(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MEMBER_KEYS)


def shared_settings(cfg: TrainConfig) -> str:
    """What members of one population must share: every config key but MEMBER_KEYS, as one
    string (trials with equal strings can train as one population)."""
    import json

    return json.dumps({k: v for k, v in sorted(_flat(to_dict(cfg)).items()) if not _is_member_key(k)}, default=str)


def check_population(cfgs: Sequence[TrainConfig], run_dirs: Sequence[Path]) -> None:
    """Refuse, before anything starts, a population its members cannot share (one line each)."""
    if not cfgs:
        raise ConfigError("a population needs at least one member config")
    if len(run_dirs) != len(cfgs):
        raise ConfigError(f"a population of {len(cfgs)} members needs {len(cfgs)} run directories, got {len(run_dirs)}")
    if len({Path(d).resolve() for d in run_dirs}) != len(run_dirs):
        raise ConfigError("population members need distinct run directories")
    first = _flat(to_dict(cfgs[0]))
    for cfg in cfgs:
        if cfg.workers.backend != "local":
            raise ConfigError("populations step their members' envs in-process: set workers.backend=local")
        if cfg.workers.overlap:
            raise ConfigError("populations do not overlap sampling and updates: set workers.overlap=false")
        if cfg.tracking.wandb_mode != "disabled":
            raise ConfigError("populations log to metrics.csv only: set tracking.wandb_mode=disabled")
        if cfg.ppo.batch_schedule != "fixed":
            raise ConfigError("population members share one batch size: set ppo.batch_schedule=fixed")
        if cfg.noise.per_example_interval or cfg.noise.b_noise_interval:
            raise ConfigError("populations measure B_simple only: set noise.per_example_interval=0 and noise.b_noise_interval=0")
        flat = _flat(to_dict(cfg))
        for key in sorted(set(first) | set(flat)):
            if not _is_member_key(key) and first.get(key) != flat.get(key):
                raise ConfigError(f"population members must share {key} (got {first.get(key)!r} and {flat.get(key)!r}); "
                                  f"only {', '.join(k.rstrip('.') for k in MEMBER_KEYS)} may differ")


def _per_member(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """x [n] shaped to broadcast against a stacked tensor [n, ...]."""
    return x.view(-1, *([1] * (like.dim() - 1)))


def member_grads(params: dict[str, torch.Tensor], loss: torch.Tensor, retain: bool = False) -> list[torch.Tensor]:
    """Gradients [N, ...] of the sum of the members' losses: row i is member i's own gradient
    (a member's loss reads only its own rows); zeros where a part reads no parameter."""
    gs = torch.autograd.grad(loss, list(params.values()), retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(q) if g is None else g for q, g in zip(params.values(), gs)]


class Member:
    """Member i of a population as its run sees a learner (train.RunLearner): noise probe,
    version and optimizer-step counters, weights and a checkpoint state in the format of a
    standalone Learner's (a member's run directory resumes alone too)."""

    def __init__(self, population: PopulationLearner, index: int, cfg: TrainConfig):
        self.population, self.index = population, index
        self.probe = NoiseProbe(cfg.noise, cfg.ppo.microbatch_size)
        self.rng = np.random.default_rng(cfg.seed)  # minibatch order, drawn as Learner.update draws it
        self.version = 0
        self.optimizer_steps = 0
        self.diverged = False
        self.lr = cfg.ppo.lr  # the last learning rate, as the optimizer's param group keeps it

    def get_weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in self.population.member_params(self.index).items()}

    def state_dict(self) -> dict:
        pop, i = self.population, self.index
        steps = float(pop.steps[i])
        state = {} if steps == 0 else {
            j: {"step": torch.tensor(steps), "exp_avg": pop.exp_avg[k][i].clone(), "exp_avg_sq": pop.exp_avg_sq[k][i].clone()}
            for j, k in enumerate(pop.names)}
        group = {**pop.adam_group, "lr": self.lr}
        return {"model": {k: v.clone() for k, v in pop.member_params(i).items()},
                "optimizer": {"state": state, "param_groups": [group]}, "version": self.version,
                "optimizer_steps": self.optimizer_steps, "probe": self.probe.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, s: dict) -> None:
        pop, i = self.population, self.index
        with torch.no_grad():
            for j, k in enumerate(pop.names):
                pop.params[k][i] = s["model"][k].to(pop.device)
                st = s["optimizer"]["state"].get(j)
                pop.exp_avg[k][i] = st["exp_avg"].to(pop.device) if st else 0.0
                pop.exp_avg_sq[k][i] = st["exp_avg_sq"].to(pop.device) if st else 0.0
                pop.steps[i] = float(st["step"]) if st else 0.0
        self.lr = s["optimizer"]["param_groups"][0]["lr"]
        self.version, self.optimizer_steps = s["version"], s["optimizer_steps"]
        self.probe.load_state_dict(s["probe"])
        self.rng.bit_generator.state = s["rng"]


@dataclass
class _Batches:
    """The active members' batches stacked on the device: [n, B] per key ('obs' [n, B, ...],
    or one FrameStacks per member), plus the host arrays the micro-batch grouping reads."""

    host: list[dict]
    t: dict[str, torch.Tensor]
    obs: torch.Tensor | list[FrameStacks]

    def rows(self, key: str, ix: torch.Tensor) -> torch.Tensor:
        return torch.gather(self.t[key], 1, ix)

    def obs_rows(self, ix: torch.Tensor) -> torch.Tensor:
        if isinstance(self.obs, list):
            return torch.stack([fs[j] for fs, j in zip(self.obs, ix)])
        return self.obs[torch.arange(len(ix), device=ix.device)[:, None], ix]


class PopulationLearner:
    """PPO updates of N members at once: the stacked model, per-member Adam and noise probes.

    cfgs: the members' configs (checked by `check_population`); member i's model is built as a
    standalone Learner builds it (seed_everything(seed_i), then build_model), so at step 0 its
    weights equal the standalone model's.
    """

    def __init__(self, cfgs: Sequence[TrainConfig], spec: EnvSpec, device: torch.device):
        self.cfgs, self.spec, self.device = list(cfgs), spec, device
        self.cfg = cfgs[0]  # what the members share
        models = []
        for cfg in cfgs:
            seed_everything(cfg.seed)
            models.append(build_model(spec, cfg.model).to(device))
        params, buffers = stack_module_state(models)
        if buffers:
            raise ConfigError(f"populations stack parameters only; model.encoder={models[0].encoder} has buffers")
        self.params: dict[str, torch.Tensor] = params
        self.names = list(params)
        p = self.cfg.ppo
        self.adam_group = torch.optim.Adam(models[0].parameters(), lr=p.lr, eps=p.adam_eps, foreach=True).state_dict()["param_groups"][0]
        self.betas: tuple[float, float] = self.adam_group["betas"]
        self.base = copy.deepcopy(models[0]).to("meta")  # the architecture; weights come from self.params
        with torch.no_grad():
            self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
            self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        self.steps = torch.zeros(len(cfgs), dtype=torch.float64, device=device)  # Adam steps per member
        as_tensor = lambda xs: torch.tensor(xs, dtype=torch.float32, device=device)  # noqa: E731
        self.vf_coef = as_tensor([c.ppo.vf_coef for c in cfgs])
        self.ent_coef = as_tensor([c.ppo.ent_coef for c in cfgs])
        self.max_grad_norm = as_tensor([c.ppo.max_grad_norm if c.ppo.max_grad_norm > 0 else math.inf for c in cfgs])
        self.members = [Member(self, i, cfg) for i, cfg in enumerate(cfgs)]
        self._forward = vmap(self._member_forward)
        self._losses = vmap(self._member_losses)

    # -- the vectorised model ----------------------------------------------------------------
    def _member_forward(self, params: dict[str, torch.Tensor], obs: torch.Tensor):
        return functional_call(self.base, params, (obs,))

    def _member_losses(self, params, obs, actions, logp, values, adv, returns, clip_coef, vf_coef, ent_coef):
        logits, v = functional_call(self.base, params, (obs,))
        parts, diags = ppo_loss(logits, v, actions, logp, values, adv, returns, clip_coef=clip_coef,
                                clip_vloss=self.cfg.ppo.clip_vloss, vf_coef=vf_coef, ent_coef=ent_coef)
        return parts.policy, parts.value, parts.log_ratio, diags

    def member_params(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v.detach()[i] for k, v in self.params.items()}

    @torch.no_grad()
    def forward(self, members: Sequence[int], obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [n, m, A] and values [n, m] of the members' policies on their observations
        obs [n, m, ...]: one batched forward (the acting step of every member at once)."""
        return self._forward(self._take(members, self.params), obs)

    @torch.no_grad()
    def value(self, member: int, obs: torch.Tensor) -> torch.Tensor:
        """One member's values of obs [m, ...], as its standalone model computes them."""
        return functional_call(self.base, self.member_params(member), (obs,))[1]

    def _take(self, members: Sequence[int], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(members) == len(self.members):
            return {k: v.detach() for k, v in tensors.items()}
        ix = torch.tensor(list(members), device=self.device)
        return {k: v.detach()[ix] for k, v in tensors.items()}

    # -- one PPO iteration for every member --------------------------------------------------
    def update(self, batches: Sequence[dict | None], lrs: Sequence[float], iterations: Sequence[int],
               clip_coefs: Sequence[float]) -> list[dict[str, float] | None]:
        """One PPO iteration of every member whose batch is given (None: the member sits this
        one out, e.g. finished); per member what Learner.update returns, or None.

        Member i trains on batches[i] with lrs[i] and clip_coefs[i], its minibatches drawn from
        its own rng as Learner.update draws them; all members' micro-batches go through one
        vmapped forward and backward. A member whose loss or gradient turns non-finite is left
        at its last finite parameters and marked diverged.
        """
        active = [i for i, b in enumerate(batches) if b is not None and not self.members[i].diverged]
        out: list[dict[str, float] | None] = [None] * len(self.members)
        if not active:
            return out
        full = len(active) == len(self.members)
        ix = torch.tensor(active, device=self.device)
        state = [self.params, self.exp_avg, self.exp_avg_sq]
        if not full:  # the active members' rows, written back below
            state = [{k: v.detach()[ix] for k, v in t.items()} for t in state]
            state[0] = {k: v.requires_grad_() for k, v in state[0].items()}
        step = _Update(self, active, [batches[i] for i in active], *state,
                       lrs=[lrs[i] for i in active], clip_coefs=[clip_coefs[i] for i in active],
                       iterations=[iterations[i] for i in active])
        metrics = step.run()
        with torch.no_grad():
            self.steps[ix] = step.steps
            if not full:
                for dst, src in zip([self.params, self.exp_avg, self.exp_avg_sq], state):
                    for name, v in dst.items():
                        v[ix] = src[name].detach()
        for k, i in enumerate(active):
            m = self.members[i]
            m.version += 1
            m.lr = lrs[i]
            m.optimizer_steps += step.optimizer_steps[k]
            m.diverged = step.diverged[k]
            out[i] = {**metrics[k], "charts/learning_rate": lrs[i], "charts/clip_coef": clip_coefs[i],
                      "losses/early_stop": float(step.early_stop[k]), **m.probe.end_update()}
        return out

    def adam_preconditioner(self, exp_avg_sq: dict[str, torch.Tensor], k: int, step: float) -> list[torch.Tensor] | None:
        """Adam's diagonal preconditioner 1 / (sqrt(v / (1 - beta2^t)) + eps) of row k of
        `exp_avg_sq` after `step` steps, as Learner's; None before the first step."""
        if step == 0:
            return None
        bias = 1 - self.betas[1] ** step
        return [1.0 / ((v[k] / bias).sqrt() + self.adam_group["eps"]) for v in exp_avg_sq.values()]


class _Update:
    """One PPO iteration of the active members: the state of Learner.update's loop, batched.

    Rows k = 0 .. n-1 are the active members; `live[k]` says whether member k still trains in
    this iteration (not stopped early by target_kl, nothing non-finite seen).
    """

    def __init__(self, pop: PopulationLearner, active: list[int], batches: list, params, exp_avg, exp_avg_sq, *,
                 lrs: list[float], clip_coefs: list[float], iterations: list[int]):
        dev = pop.device
        self.pop, self.cfg = pop, pop.cfg
        self.members = [pop.members[i] for i in active]
        self.params, self.exp_avg, self.exp_avg_sq = params, exp_avg, exp_avg_sq
        ix = torch.tensor(active, device=dev)
        self.steps = pop.steps[ix].clone()
        self.lrs = torch.tensor(lrs, dtype=torch.float64, device=dev)
        self.coefs = (torch.tensor(clip_coefs, dtype=torch.float32, device=dev), pop.vf_coef[ix], pop.ent_coef[ix])
        self.max_grad_norm = pop.max_grad_norm[ix]
        self.iterations = iterations
        self.data = self._stack(batches)
        n = len(active)
        self.live = torch.ones(n, dtype=torch.bool, device=dev)
        self.early_stop = [False] * n
        self.diverged = [False] * n
        self.optimizer_steps = [0] * n
        self.sums = {k: torch.zeros(n, device=dev) for k in (*_LOSS_DIAGS, "losses/grad_norm")}
        self.minibatches = torch.zeros(n, device=dev)

    def _stack(self, batches: list[dict]) -> _Batches:
        dev = self.pop.device
        t = {k: torch.from_numpy(np.stack([np.asarray(b[k]) for b in batches])).to(dev)
             for k in ("actions", "logp", "values", "advantages", "returns", "versions")}
        if isinstance(batches[0]["obs"], FrameStacks):
            return _Batches(batches, t, [b["obs"].to(dev) for b in batches])
        return _Batches(batches, t, torch.from_numpy(np.stack([np.asarray(b["obs"]) for b in batches])).to(dev))

    def run(self) -> list[dict[str, float]]:
        p, d = self.cfg.ppo, self.data
        n_steps = d.t["actions"].shape[1]
        check_minibatch(n_steps, p.num_minibatches)
        mb_size = n_steps // p.num_minibatches
        for m in self.members:
            m.probe.start_update()
        versions = torch.tensor([m.version for m in self.members], device=self.pop.device)
        self.lag0 = d.t["versions"] == versions[:, None]  # steps collected with the current weights
        self.logp_mismatch = torch.zeros(len(self.members), device=self.pop.device)
        self.compared = torch.zeros(len(self.members), dtype=torch.bool, device=self.pop.device)
        orders = [np.arange(n_steps)] * len(self.members)
        for epoch in range(p.epochs):
            orders = [m.rng.permutation(n_steps) if not stop else o for m, o, stop in zip(self.members, orders, self.early_stop)]
            order = torch.from_numpy(np.stack(orders)).to(self.pop.device)
            kl = torch.zeros(len(self.members), device=self.pop.device)
            for mb in range(p.num_minibatches):
                part = slice(mb * mb_size, (mb + 1) * mb_size)
                kl = self._minibatch(epoch, mb, order[:, part], [o[part] for o in orders])
            # Early stop on the approx KL of the epoch's last minibatch, per member, as Learner.
            if p.target_kl is not None:
                for k, value in enumerate(kl.tolist()):
                    self.early_stop[k] = self.early_stop[k] or (bool(self.live[k]) and value > p.target_kl)
                self.live &= ~torch.tensor(self.early_stop, device=self.pop.device)
                if all(self.early_stop):
                    break
        return self._metrics()

    def _minibatch(self, epoch: int, mb: int, idx: torch.Tensor, host_idx: list[np.ndarray]) -> torch.Tensor:
        """One minibatch of every live member: its gradient (from micro-batches where a probe
        measures it, else in as few pieces as `UNMEASURED_PIECE` allows), clipped, one Adam
        step. Returns the members' approx KL on it."""
        p, d, pop = self.cfg.ppo, self.data, self.pop
        adv = d.rows("advantages", idx)
        if p.norm_adv and idx.shape[1] > 1:
            adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
        training = [k for k, stop in enumerate(self.early_stop) if not stop]
        n_micro = -(-idx.shape[1] // p.microbatch_size)
        for k in training:
            self.members[k].probe.start_minibatch(self.iterations[k], epoch, mb, n_micro, self._preconditioner(k))
        measured = any(self.members[k].probe.measuring for k in training)
        micro = self._microbatches(idx, host_idx) if measured else self._pieces(idx)
        split = measured and any(self.members[k].probe.split for k in training)
        acc: list[torch.Tensor] = []
        kl = torch.zeros(len(self.members), device=pop.device)
        finite = torch.ones_like(self.live)
        diag_sums = torch.zeros(len(_LOSS_DIAGS), len(self.members), device=pop.device)
        for c in micro:
            j = torch.gather(idx, 1, c)
            pol, val, log_ratio, diags = pop._losses(self.params, d.obs_rows(j), d.rows("actions", j), d.rows("logp", j),
                                                     d.rows("values", j), torch.gather(adv, 1, c), d.rows("returns", j), *self.coefs)
            w = c.shape[1] / idx.shape[1]  # micro-batch means -> minibatch mean
            g = self._grads(pol, val, split)
            if measured:
                for k in training:
                    parts = {"policy": [x[k] for x in g[1]], "value": [x[k] for x in g[2]]} if split else None
                    self.members[k].probe.on_microbatch([x[k] for x in g[0]], w, c.shape[1] == p.microbatch_size, parts)
            if len(micro) == 1:
                acc = list(g[0])
            elif acc:
                torch._foreach_add_(acc, g[0], alpha=w)
            else:
                acc = list(torch._foreach_mul(g[0], w))
            finite &= torch.isfinite(pol + val)
            diag_sums += torch.stack([diags[key] for key in _LOSS_DIAGS]) * w
            if epoch == 0 and mb == 0:  # before any optimizer step: at the behaviour weights
                lag0 = torch.gather(self.lag0, 1, j)
                self.logp_mismatch = torch.maximum(self.logp_mismatch, (log_ratio.abs() * lag0).amax(1))
                self.compared |= lag0.any(1)
        for key, row in zip(_LOSS_DIAGS, torch.where(self.live, diag_sums, 0.0)):
            self.sums[key] += row
        kl = diag_sums[_LOSS_DIAGS.index("losses/approx_kl")]
        if measured:
            for k in training:
                self.members[k].probe.on_minibatch([x[k] for x in acc], idx.shape[1])
        self._step(acc, finite)
        return kl

    def _pieces(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Positions [n, m] of a minibatch no probe measures: the whole minibatch in one forward
        and backward, or near-equal pieces of at most max(ppo.microbatch_size, UNMEASURED_PIECE)
        examples per member (the pieces sum to the minibatch's gradient either way)."""
        size = idx.shape[1]
        count = -(-size // max(self.cfg.ppo.microbatch_size, UNMEASURED_PIECE))
        bounds = [size * i // count for i in range(count + 1)]
        return [torch.arange(a, b, device=idx.device).expand(idx.shape[0], b - a) for a, b in zip(bounds[:-1], bounds[1:])]

    def _preconditioner(self, k: int):
        return lambda: self.pop.adam_preconditioner(self.exp_avg_sq, k, float(self.steps[k]))

    def _microbatches(self, idx: torch.Tensor, host_idx: list[np.ndarray]) -> list[torch.Tensor]:
        """Positions [n, m] into each member's minibatch of every micro-batch of a measured
        minibatch, grouped by noise.microbatch_mode as Learner groups them."""
        p, n = self.cfg.ppo, len(self.members)
        mode = self.cfg.noise.microbatch_mode
        groups = [microbatch_groups(b, ix, p.microbatch_size, mode) for b, ix in zip(self.data.host, host_idx)] \
            if mode == "env" else [microbatch_groups({}, host_idx[0], p.microbatch_size, mode)] * n
        return [torch.from_numpy(np.stack(cs)).to(self.pop.device) for cs in zip(*groups)]

    def _grads(self, policy: torch.Tensor, value: torch.Tensor, split: bool):
        """(total, policy, value) gradients [n, ...] per parameter; member k's rows are the
        gradients of member k's own losses (the sum over members separates them)."""
        if not split:
            return member_grads(self.params, (policy + value).sum()), (), ()
        g_pi = member_grads(self.params, policy.sum(), retain=True)
        g_v = member_grads(self.params, value.sum())
        return torch._foreach_add(g_pi, g_v), g_pi, g_v

    @torch.no_grad()
    def _step(self, grads: list[torch.Tensor], finite: torch.Tensor) -> None:
        """Per-member global-norm clipping and one Adam step (torch.optim.Adam's foreach formula),
        on the live members with finite losses and gradient; others keep their state."""
        norm = torch.cat([g.flatten(1) for g in grads], 1).norm(dim=1)  # [n], as clip_grad_norm_ (up to rounding)
        train = self.live & finite & torch.isfinite(norm)
        train_l = train.tolist()
        self.diverged = [d or (a and not b) for d, a, b in zip(self.diverged, self.live.tolist(), train_l)]
        self.sums["losses/grad_norm"] += torch.where(self.live, norm, 0.0)
        self.minibatches += self.live.float()
        self.optimizer_steps = [s + int(t) for s, t in zip(self.optimizer_steps, train_l)]
        self.live = train
        if not any(train_l):
            return
        scale = (self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
        beta1, beta2 = self.pop.betas
        self.steps += train.double()
        step_size = (self.lrs / (1 - beta1 ** self.steps)).float()
        bias2_sqrt = (1 - beta2 ** self.steps).sqrt().float()
        eps = self.pop.adam_group["eps"]
        qs, ms, vs = list(self.params.values()), list(self.exp_avg.values()), list(self.exp_avg_sq.values())
        per = lambda x: [_per_member(x, q) for q in qs]  # noqa: E731
        g = torch._foreach_mul(grads, per(scale))
        everyone = all(train_l)  # the usual case: update the state in place, no copies
        m_new = ms if everyone else torch._foreach_clone(ms)
        v_new = vs if everyone else torch._foreach_clone(vs)
        torch._foreach_lerp_(m_new, g, 1 - beta1)  # as torch.optim.Adam(foreach=True)
        torch._foreach_mul_(v_new, beta2)
        torch._foreach_addcmul_(v_new, g, g, value=1 - beta2)
        denom = torch._foreach_sqrt(v_new)
        torch._foreach_div_(denom, per(bias2_sqrt))
        torch._foreach_add_(denom, eps)
        step = torch._foreach_div(m_new, denom)
        torch._foreach_mul_(step, per(step_size))
        if everyone:
            torch._foreach_sub_(qs, step)
            return
        q_new = torch._foreach_sub(qs, step)
        for q, m, v, q1, m1, v1 in zip(qs, ms, vs, q_new, m_new, v_new):  # some members hold still
            keep = _per_member(train, q)
            m.copy_(torch.where(keep, m1, m))
            v.copy_(torch.where(keep, v1, v))
            q.copy_(torch.where(keep, q1, q))

    def _metrics(self) -> list[dict[str, float]]:
        d = self.data
        y, v = d.t["returns"], d.t["values"]
        var_y = y.var(1)
        explained = torch.where(var_y == 0, float("nan"), 1 - (y - v).var(1) / var_y)
        means = {k: (s / self.minibatches.clamp(min=1)).tolist() for k, s in self.sums.items()}
        mismatch = torch.where(self.compared, self.logp_mismatch, float("nan")).tolist()
        explained_l = explained.tolist()
        return [{**{key: means[key][k] for key in (*_LOSS_DIAGS, "losses/grad_norm")},
                 "losses/explained_variance": explained_l[k], "losses/logp_mismatch": mismatch[k]}
                for k in range(len(self.members))]


# ----------------------------------------------------------------------------- sampling


class _WorkerRollout:
    """One rollout worker's fragment in the making, one step at a time: the arrays and steps of
    RolloutWorker.sample, with the actions drawn for all members at once (see `draw_noise`)."""

    def __init__(self, worker: RolloutWorker, T: int):
        self.worker, self.T = worker, T
        E = worker.env.num_envs
        worker.recorder.start(T, worker.obs)
        self.reset = np.ones(E, dtype=bool)  # a fragment's first observations are stored whole
        self.arrays: dict[str, np.ndarray] = {"actions": np.empty((T, E), dtype=np.int64), "logp": np.empty((T, E), dtype=np.float32),
                       "values": np.empty((T + 1, E), dtype=np.float32), "rewards": np.empty((T, E), dtype=np.float32),
                       "terminated": np.empty((T, E), dtype=bool), "truncated": np.empty((T, E), dtype=bool)}
        self.bootstrap: list[tuple[int, np.ndarray, np.ndarray]] = []  # (t, envs, V(final obs)) of truncations
        self.returns: list[float] = []
        self.lengths: list[int] = []

    def step(self, t: int, actions: np.ndarray, logp: np.ndarray, values: np.ndarray, value_fn) -> np.ndarray:
        """Act at step t with the drawn actions [E] (their log-probs and the values [E]); the
        new observations."""
        w, a = self.worker, self.arrays
        w.recorder.add(t, w.obs, self.reset)
        a["actions"][t], a["logp"][t], a["values"][t] = actions, logp, values
        out = w.env.step(a["actions"][t])
        a["rewards"][t], a["terminated"][t], a["truncated"][t] = out.reward, out.terminated, out.truncated
        if out.truncated.any():
            cut = np.flatnonzero(out.truncated & ~out.terminated)  # bootstrap from the final state's value
            if len(cut):
                self.bootstrap.append((t, cut, value_fn(torch.from_numpy(out.final_obs[cut])).cpu().numpy()))
        if out.episode_returns:
            self.returns += out.episode_returns
            self.lengths += out.episode_lengths
        w.obs, self.reset = out.obs, out.reset
        return out.obs

    def fragment(self, last_values: np.ndarray, version: int) -> Fragment:
        a = self.arrays
        a["values"][self.T] = last_values
        next_values = a["values"][1:].copy()
        for t, envs, v in self.bootstrap:
            next_values[t, envs] = v
        return Fragment(obs=self.worker.recorder.finish(), values=a["values"][:self.T], next_values=next_values,
                        policy_version=version, env_ids=self.worker.env_ids, episode_returns=self.returns,
                        episode_lengths=self.lengths, **{k: a[k] for k in ("actions", "logp", "rewards", "terminated", "truncated")})


def draw_noise(generator: torch.Generator, steps: int, num_envs: int, num_actions: int) -> torch.Tensor:
    """Exp(1) noise q [steps, num_envs, num_actions] from a worker's sampling generator, so that
    argmax(probs[t] / q[t]) is, action for action, what `steps` calls of torch.multinomial(probs[t],
    1, generator) would draw (the Gumbel-max form torch's CPU multinomial uses for one sample),
    and the generator ends in the same state. One draw per worker and fragment instead of one
    multinomial per worker and step; tests/test_population.py checks the equality."""
    return torch.empty(steps, num_envs, num_actions).exponential_(1, generator=generator)


class PopulationSampler:
    """Every member's rollout workers stepped in lockstep, one batched forward acting for all.

    The workers are those of each member's own LocalPool, so member i steps the envs, seeds,
    env offsets and sampling generator of its standalone local run; at each step the members'
    observations go through one vmapped forward of their own weights, and the actions of every
    member and worker are drawn at once from each worker's own generator stream (`draw_noise`).
    Member i's fragments are those its standalone pool would return (up to float rounding of the
    batched forward, which can flip a draw that falls within rounding of a probability).
    """

    def __init__(self, learner: PopulationLearner, pools: Sequence[LocalPool]):
        self.learner, self.pools = learner, list(pools)

    @torch.no_grad()
    def sample(self, members: Sequence[int], lengths: list[int]) -> dict[int, SampleResult]:
        """`lengths[w]` steps on worker w of each member (its pools share one shape)."""
        learner, dev = self.learner, self.learner.device
        rollouts = [[_WorkerRollout(w, T) for w, T in zip(self.pools[i].workers, lengths) if T > 0] for i in members]
        envs = [r.worker.env.num_envs for r in rollouts[0]]
        bounds = np.cumsum([0, *envs]).tolist()
        slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        steps = [r.T for r in rollouts[0]]
        num_actions = learner.spec.num_actions
        # the members' current observations [n, envs, ...], kept up to date in place
        obs = np.stack([np.concatenate([r.worker.obs for r in rs]) for rs in rollouts])
        noise = torch.ones(len(members), max(steps), bounds[-1], num_actions)  # steps past a worker's T are never read
        for k, rs in enumerate(rollouts):
            for r, e in zip(rs, slices):
                noise[k, :r.T, e] = draw_noise(r.worker.generator, r.T, r.worker.env.num_envs, num_actions)
        value_fns = [lambda x, i=i: learner.value(i, x.to(dev)) for i in members]
        for t in range(max(steps)):
            logits, values = learner.forward(members, torch.from_numpy(obs).to(dev))
            logits = logits.cpu()
            probs, log_probs = torch.softmax(logits, -1), logits - logits.logsumexp(-1, keepdim=True)
            actions = (probs / noise[:, t]).argmax(-1)  # [n, envs]: each worker's multinomial draw
            logp = log_probs.gather(-1, actions[..., None]).squeeze(-1)
            a_np, lp_np, v_np = actions.numpy(), logp.numpy(), values.cpu().numpy()
            for k, rs in enumerate(rollouts):
                for r, e in zip(rs, slices):
                    if r.T > t:
                        obs[k, e] = r.step(t, a_np[k, e], lp_np[k, e], v_np[k, e], value_fns[k])
        _, last = learner.forward(members, torch.from_numpy(obs).to(dev))
        last_np = last.cpu().numpy()
        out = {}
        for k, (i, rs) in enumerate(zip(members, rollouts)):
            version = learner.members[i].version
            out[i] = SampleResult([r.fragment(last_np[k, e], version) for r, e in zip(rs, slices)], 0, 0)
        return out


# ----------------------------------------------------------------------------- pruning


class Finished(NamedTuple):
    """A finished run of the same batch size outside the population (a sweep's earlier trial,
    for instance one of an lr the grid had before it grew), which pruning counts as a member
    that left: `group` is its (lr rule, lr), `reached` maps a target to the iteration it was
    reached at, `iterations` is how far the run got, `pruned` that pruning stopped it (so it
    might still have reached its open targets, after `iterations`)."""

    group: tuple[str, float]
    reached: dict[str, int]
    iterations: int
    pruned: bool = False

    @classmethod
    def from_summary(cls, group: tuple[str, float], summary: dict) -> Finished:
        """From a run's summary (or a sweep's trial record, which carries the same fields)."""
        reached = {k: int(v["iterations"]) for k, v in (summary.get("targets") or {}).items() if v and v.get("reached")}
        return cls((str(group[0]), float(group[1])), reached, int(summary.get("iterations") or 0), bool(summary.get("pruned")))


LOSING_REASON = "its learning rate can no longer win any target it has not reached"
SETTLED_REASON = "its learning rate's median iterations are fixed without it at every target it has not reached"


def losing_members(groups: Sequence, reached: Sequence[dict[str, int]], active: Sequence[bool], iterations: Sequence[int],
                   targets: Sequence[str], finished: Sequence[Finished] = (), settled: bool = False) -> dict[int, str]:
    """Active members whose group (their lr) can no longer win any target they have not reached
    (with `settled`, also those whose own group's median is fixed at every target they have not
    reached, winner or not: such a seed can change no group's median, so which group wins and its
    median stay; it adds no B_simple to a target it would have reached later, and counts as
    never reaching in bootstrap resamples), each with its reason (LOSING_REASON, else
    SETTLED_REASON), in member order.

    A sweep's analysis takes, per batch size and target, the group with the smallest median
    over seeds of the iterations to the target (a seed that never reaches counts as +inf).
    ``groups[m]`` is member m's group, ``reached[m]`` maps a target to the iteration m reached
    it at, ``active[m]`` says m still trains (a member that left has its final record) and
    ``iterations[m]`` how far it got. An active member that has not reached a target by its
    iteration t reaches it later or never, so its group's median lies between the median with
    such seeds at t + 1 and the one with them at +inf. When both agree the median is fixed. A
    group loses a target when its lowest possible median exceeds another group's fixed one. A
    member may stop when its group loses every target it has not reached: which group wins,
    and every number the analysis reports for the winner, stay what the full runs would give.
    Only bootstrap resamples, which see a stopped seed as never reaching, can differ; and a
    sweep extended later by more seeds or targets compares against members that stopped.

    `finished`: runs outside the population (`Finished`) that count as members that left; one
    that was pruned counts as one that might still reach its open targets after its last
    iteration (its lr may have more seeds now, and with them another median). They are never
    among the members returned.
    """
    n = len(groups)
    groups = [*groups, *(f.group for f in finished)]
    reached = [*reached, *(f.reached for f in finished)]
    iterations = [*iterations, *(f.iterations for f in finished)]
    open_ = [*active, *(f.pruned for f in finished)]  # whose unreached targets are still open
    by_group: dict = {}
    for m, g in enumerate(groups):
        by_group.setdefault(g, []).append(m)

    def median(ms: list[int], target: str, soonest: bool) -> float:
        later = [iterations[m] + 1 if soonest and open_[m] else math.inf for m in ms]
        return float(np.median([reached[m].get(target, t) for m, t in zip(ms, later)]))

    lowest = {(g, k): median(ms, k, True) for g, ms in by_group.items() for k in targets}
    fixed = {(g, k): lowest[g, k] for g, ms in by_group.items() for k in targets if lowest[g, k] == median(ms, k, False)}
    out = {}
    for m, g in enumerate(groups[:n]):
        open_targets = [k for k in targets if k not in reached[m]]
        if not active[m] or not open_targets:
            continue
        if all(any(h != g and v < lowest[g, k] for (h, kk), v in fixed.items() if kk == k) for k in open_targets):
            out[m] = LOSING_REASON
        elif settled and all((g, k) in fixed for k in open_targets):
            out[m] = SETTLED_REASON
    return out


# ----------------------------------------------------------------------------- training


def aligned_checkpoints(cfgs: Sequence[TrainConfig], run_dirs: Sequence[Path]) -> list[tuple[Path, dict] | None]:
    """Each member's checkpoint to resume from, or None for a member that has none to load.

    Members that left the population (summary.json, pruned.json or diverged.json) resume from
    their newest, as a run does; one whose summary is written but has no checkpoint (it
    diverged before its first, or its checkpoints were removed) gets None and keeps its records
    as they are (the only members with a summary that get None). A member still running without a checkpoint means the stop
    came in the first round of checkpoints, or in the iteration a member diverged before it (so
    no member has more than that one checkpoint): all running members then start again (None),
    in step, losing at most that round. Where others hold more, a ConfigError names the member.

    The members still running step together and write their checkpoints in one round, so their
    newest differ only when a stop came during a round: some hold that round's checkpoint, the
    others' newest is the round before. Those ahead then resume from the round before as well,
    and the interrupted round's files are removed (no later resume or tool reads them): resuming
    each member from its own newest would keep two groups apart for the rest of the run, each
    evaluating at its own iterations. Any other spread (members that never ran together) is
    left as it is, with a warning."""
    n = len(run_dirs)
    its = {i: _checkpoint_iterations(d) for i, d in enumerate(run_dirs)}
    records = {i for i, d in enumerate(run_dirs) if not its[i] and (d / "summary.json").is_file()}  # left, no checkpoint
    unsaved = [i for i in range(n) if not its[i] and i not in records]  # no checkpoint, no summary
    running = [i for i, d in enumerate(run_dirs) if not any((d / f).is_file() for f in ("summary.json", "pruned.json", "diverged.json"))]
    if unsaved and (any(its.values()) or records):  # (with no checkpoint and no records at all, load_checkpoint refuses)
        again = sorted({*unsaved, *running})
        several = [i for i in again if len(its[i]) > 1]
        if several:
            raise ConfigError(f"cannot resume: member {unsaved[0]} ({run_dirs[unsaved[0]]}) has no checkpoint while member "
                              f"{several[0]} has {len(its[several[0]])}; start the population again without --resume")
        print(f"population: member(s) {unsaved} have no checkpoint (a stop came before their first); the running members "
              f"{again} start again", file=sys.stderr)
        return [None if i in records or i in again else load_checkpoint(run_dirs[i], cfgs[i]) for i in range(n)]
    newest = {i: max(its[i], default=0) for i in running}
    saved: dict[int, tuple[Path, dict]] = {}
    spread = sorted(set(newest.values()))
    if len(spread) == 2:
        before, top = spread
        ahead = [i for i in running if newest[i] == top]
        if all(before in its[i] and not any(before < x < top for x in its[i]) for i in ahead):  # one round apart
            try:
                for i in ahead:
                    path = checkpoint.checkpoint_path(run_dirs[i], before)
                    state = checkpoint.load(path)
                    checkpoint.check_compatible(state, to_dict(cfgs[i]))
                    saved[i] = (path, state)
            except checkpoint.CheckpointError as e:
                saved.clear()
                print(f"warning: {e}", file=sys.stderr)
            else:
                for i in running:  # the round's checkpoints, and workers' files written before a checkpoint was
                    interrupted = checkpoint.checkpoint_path(run_dirs[i], top)
                    checkpoint.workers_path(interrupted).unlink(missing_ok=True)
                    interrupted.unlink(missing_ok=True)
                print(f"population: a stop came while the members' checkpoints of iteration {top} were written ({len(ahead)} of "
                      f"{len(running)} were); all {len(running)} running members resume from iteration {before}", file=sys.stderr)
    if len(spread) > 1 and not saved:
        print(f"population: the running members' newest checkpoints are at iterations {spread}, not one round of "
              f"checkpoints apart; each resumes from its own newest", file=sys.stderr)
    return [saved[i] if i in saved else None if i in records else load_checkpoint(d, cfg)
            for i, (cfg, d) in enumerate(zip(cfgs, run_dirs))]


def _checkpoint_iterations(run_dir: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in checkpoint.list_checkpoints(run_dir)]


def train_population(cfgs: Sequence[TrainConfig], run_dirs: Sequence[Path], resume: bool = False, overwrite: bool = False,
                     quiet: bool = False, prune: bool = False, groups: Sequence[tuple[str, float]] | None = None,
                     finished: Sequence[Finished] = (), prune_settled: bool = False, keep: Sequence[str] = ()) -> list[dict]:
    """Train the members `cfgs` as one population, member i into run_dirs[i]; their summaries.

    Each run directory gets what `rlscale train` writes (config.yaml, metrics.csv, checkpoints,
    summary.json; time columns are the population's shared iteration times); with `resume`
    each member continues from its checkpoint (`aligned_checkpoints`: the running members from
    the newest iteration they all have). A member leaves the population when its
    budget is used, its stop return reached, or it diverges (then diverged.json says where).
    With `prune`, also when its learning rate can no longer win any target it has not reached
    against the other members' of its lr rule (`losing_members`; pruned.json says when, and a
    resumed population leaves it out). `groups`: each member's (lr rule, lr) as the analysis
    labels it (a sweep's grid trials train with rule 'fixed'); default the configs'.
    `finished`: runs of the same batch size and targets outside the population, which pruning
    compares against as members that left (so an lr added to a grid later can lose to the lrs
    already run). `keep`: files an overwrite leaves in the run directories (as `train`'s).
    Local backend only (see the module docstring).
    """
    run_dirs = [Path(d) for d in run_dirs]
    check_population(cfgs, run_dirs)
    for d in run_dirs:
        check_run_dir(d, resume, overwrite)
    saved = aligned_checkpoints(cfgs, run_dirs) if resume else [None] * len(cfgs)
    device = resolve_device(cfgs[0].device)
    configure_learner_process(device, cfgs[0].torch_threads)
    pools = [LocalPool(cfg, plan_envs(cfg)) for cfg in cfgs]  # as make_pool builds a local run's
    try:
        spec = pools[0].spec()
        learner = PopulationLearner(cfgs, spec, device)
        # a member with a summary and nothing to load left without a checkpoint (aligned_checkpoints)
        records_only = [resume and s is None and (d / "summary.json").is_file() for s, d in zip(saved, run_dirs)]
        again = [resume and s is None and not r for s, r in zip(saved, records_only)]  # starts again (aligned_checkpoints)
        for cfg, s in zip(cfgs, saved):  # every checkpoint fits before any directory is emptied
            if s is not None:
                checkpoint.check_compatible(s[1], to_dict(cfg), spec)
        runs = [open_run(cfg, d, spec, pool, member, s, overwrite or a, quiet, keep, records_only=r)
                for cfg, d, pool, member, s, r, a in zip(cfgs, run_dirs, pools, learner.members, saved, records_only, again)]
        labels: list[tuple[str, float]] = list(groups) if groups is not None else [(str(c.ppo.lr_rule), c.ppo.lr) for c in cfgs]
        loop = _PopulationLoop(learner, runs, labels if prune else None, finished, settled=prune_settled,
                               left=[i for i, r in enumerate(records_only) if r])
        return loop.loop(quiet)
    finally:
        for pool in pools:
            pool.close()


class _PopulationLoop:
    """The members' runs driven together: sample all, update all, log each (train.Run's steps)."""

    def __init__(self, learner: PopulationLearner, runs: list[Run], groups: list[tuple[str, float]] | None = None,
                 finished: Sequence[Finished] = (), settled: bool = False, left: Sequence[int] = ()):
        self.learner, self.runs = learner, runs
        self.left = set(left)  # members opened records-only (they left, and have no checkpoint)
        self.settled = settled  # also stop seeds whose lr's median is fixed without them (losing_members)
        self.groups = groups  # each member's (lr rule, lr) when pruning, else None
        self.finished = list(finished)  # runs outside the population that pruning counts as members that left
        self.sampler = PopulationSampler(learner, [r.pool for r in runs])
        self.summaries: dict[int, dict] = {}

    def pruned(self, active: list[int]) -> dict[int, str]:
        """Active members to stop now, when pruning, with the reason: `losing_members` among
        each lr rule's members and finished runs (the analysis also picks a best lr per rule)."""
        runs, groups = self.runs, self.groups
        if groups is None or not active:
            return {}
        targets = [str(x) for x in runs[0].targets]
        out: dict[int, str] = {}
        for rule in sorted({g[0] for g in groups}):
            ms = [i for i, g in enumerate(groups) if g[0] == rule]
            # a member that left: what its summary says (a records-only member's state is at iteration 0,
            # and a diverged one's checkpoint can be older than its divergence)
            left = {i: Finished.from_summary(groups[i], self.summaries[i]) for i in ms if i in self.summaries}
            args = ([groups[i] for i in ms],
                    [left[i].reached if i in left else {k: v["iterations"] for k, v in runs[i].state.counters.targets.items()} for i in ms],
                    [i in active for i in ms], [left[i].iterations if i in left else runs[i].state.counters.iteration for i in ms],
                    targets, [f for f in self.finished if f.group[0] == rule])
            out.update({ms[j]: why for j, why in losing_members(*args, settled=self.settled).items()})
        return dict(sorted(out.items()))

    def loop(self, quiet: bool) -> list[dict]:
        runs, learner = self.runs, self.learner
        active = [i for i, r in enumerate(runs) if i not in self.left and not r.finished()
                  and not any((r.run_dir / f).is_file() for f in ("pruned.json", "diverged.json"))]
        for i in set(range(len(runs))) - set(active):
            self.finish(i, earlier=True)
        # a resumed population decides again who leaves at the iteration it resumes at (the stop
        # may have come between a checkpoint, or a replayed row, and that decision)
        self.leave(active)
        progress = self.progress(quiet)
        clock = time.perf_counter()
        starts = [clock - r.state.counters.wall_time_s for r in runs]  # each member's clock origin
        consistent = True
        try:
            while active:
                B = {i: runs[i].schedule.env_steps_per_iteration(runs[i].state.counters.iteration, learner.members[i].probe.b_simple)
                     for i in active}
                t0 = time.perf_counter()
                self.fill(active, B)
                batches: list[dict | None] = [None] * len(runs)
                for i in active:
                    batches[i] = runs[i].state.buffer.take(B[i])
                consistent = False
                t1 = time.perf_counter()
                hyper = {i: runs[i].schedule_values(B[i]) for i in active}
                lags = {i: learner.members[i].version - batches[i]["versions"] for i in active}  # type: ignore[index]
                metrics = learner.update(batches, [hyper.get(i, (0.0, 0.0))[0] for i in range(len(runs))],
                                         [r.state.counters.iteration for r in runs], [hyper.get(i, (0.0, 0.0))[1] for i in range(len(runs))])
                t2 = time.perf_counter()
                for i in active:
                    runs[i].count(B[i], lags[i], metrics[i] or {}, (t0, t1, t2, t2), starts[i])
                consistent = True
                evaluations = self.evaluate([i for i in active if runs[i].eval_due(B[i])])
                save = any(runs[i].checkpoint_due() for i in active)  # the members' checkpoints stay at one iteration
                for i in active:
                    runs[i].record(evaluation=evaluations.get(i), save=save)
                if progress:
                    progress.update(sum(r.state.counters.env_steps_used for r in runs), members=str(len(active)))
                self.leave(active)
        except BaseException:
            # as a single run: keep only consistent states (never one inside an update); a member
            # that diverged at this iteration keeps its last checkpoint (finite weights), and
            # repeats its steps from there on resume
            for i in active if consistent else []:
                if runs[i].state.counters.iteration and not learner.members[i].diverged:
                    runs[i].save_after_error()
            raise
        finally:
            if progress:
                progress.close()
            for i in active:  # members that left the population closed theirs in `finish`
                if runs[i].evaluator is not None:
                    runs[i].evaluator.close()  # type: ignore[union-attr]
        return [self.summaries[i] for i in range(len(runs))]

    @torch.no_grad()
    def evaluate(self, members: list[int]) -> dict[int, tuple[list[float], float]]:
        """The due members' evaluations, played together: each member's own Evaluator (its eval
        envs, seeds and action draws, as its standalone run's), one batched forward per step
        for every member still playing. Returns {member: (returns, the shared seconds)}."""
        if not members:
            return {}
        t0 = time.perf_counter()
        evaluators = {i: self.runs[i].evaluator for i in members}
        obs = {i: ev.begin(self.runs[i].state.counters.iteration) for i, ev in evaluators.items()}  # type: ignore[union-attr]
        while obs:
            playing = sorted(obs)
            logits, _ = self.learner.forward(playing, torch.from_numpy(np.stack([obs[i] for i in playing])).to(self.learner.device))
            logits = logits.cpu()
            for k, i in enumerate(playing):
                nxt = evaluators[i].advance(logits[k])  # type: ignore[union-attr]
                if nxt is None:
                    del obs[i]
                else:
                    obs[i] = nxt
        seconds = time.perf_counter() - t0
        return {i: (ev.returns(), seconds) for i, ev in evaluators.items()}  # type: ignore[union-attr]

    def progress(self, quiet: bool) -> Progress | None:
        cfg = self.runs[0].cfg
        if quiet or not cfg.tracking.progress_bar:
            return None
        total = sum(r.cfg.total_env_steps for r in self.runs)
        done = sum(min(r.state.counters.env_steps_used, r.cfg.total_env_steps) for r in self.runs)
        return Progress(total, done, interval_s=cfg.tracking.progress_interval_s, desc=f"population of {len(self.runs)}: env steps")

    def fill(self, active: list[int], B: dict[int, int]) -> None:
        """Sampling rounds until every active member's buffer holds its batch; members short of
        the same number of steps sample together (in practice all of them)."""
        while True:
            short: dict[int, list[int]] = {}
            for i in active:
                need = B[i] - len(self.runs[i].state.buffer)
                if need > 0:
                    short.setdefault(need, []).append(i)
            if not short:
                return
            for need, members in short.items():
                run = self.runs[members[0]]
                lengths = fragment_lengths(run.cfg, run.pool.envs_per_worker, need)
                for i, result in self.sampler.sample(members, lengths).items():
                    self.runs[i].state.absorb(result)

    def leave(self, active: list[int]) -> None:
        """Members done after this iteration leave `active`: budget used, stop return reached,
        diverged, or (pruning) their lr can no longer win a target they have not reached."""
        runs = self.runs
        for i in [i for i in active if self.learner.members[i].diverged or runs[i].finished()]:
            self.finish(i)
            active.remove(i)
        stop = self.pruned(active)
        for i in active if stop else []:  # the others' checkpoints hold the reaches that decided it
            if i not in stop:
                runs[i].save()
        for i, reason in stop.items():
            c = runs[i].state.counters
            self.finish(i, pruned={"iteration": c.iteration, "env_steps": c.env_steps_used, "reason": reason})
            active.remove(i)

    def finish(self, i: int, pruned: dict | None = None, earlier: bool = False) -> None:
        """Member i leaves the population: its final checkpoint (none after a divergence: the
        last one holds finite weights), pruned.json when `pruned` says why it stops, and its
        summary. `earlier`: it left in an earlier session (the population resumed), and its
        records stand as they were written; only a summary a stop kept from being written is
        written now, from its checkpoint."""
        run, member = self.runs[i], self.learner.members[i]
        summary = run.run_dir / "summary.json"
        if earlier and summary.is_file():
            pack_metrics(run.run_dir)  # records written before runs packed their tables
            self.summaries[i] = json.loads(summary.read_text())
            run.close(0)
            return
        if member.diverged:
            c = run.state.counters
            atomic_write_json(run.run_dir / "diverged.json", {"iteration": c.iteration, "env_steps": c.env_steps,
                                                              "reason": "non-finite loss or gradient; weights frozen before it"})
            print(f"population: member {i} ({run.run_dir}) diverged at iteration {c.iteration}; the others go on", file=sys.stderr)
        elif not earlier:
            run.save()
            if pruned is not None:  # after the checkpoint: a resume from it leaves the member out
                atomic_write_json(run.run_dir / "pruned.json", pruned)
        self.summaries[i] = run.write_summary()  # before the eval envs close: a stop between leaves the records whole
        run.close(0)
