"""The PPO loss (pure) and the learner that owns the model and the optimizer.

Each minibatch is processed in micro-batches whose gradients are accumulated, so any batch
fits in memory. The micro-batch gradients exist anyway, so the gradient noise scale comes
almost for free (McCandlish et al. 2018, App. A.1): the learner hands them to its
``NoiseProbe`` (rlscale/noise_scale.py), which takes B_small = one micro-batch and B_big = the
minibatch, both at the same parameters and before gradient clipping.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.distributions import Categorical

from rlscale.config import check_minibatch
from rlscale.envs.base import EnvSpec
from rlscale.model import build_model
from rlscale.noise_scale import Batch, NoiseProbe, Params
from rlscale.rollout import FrameStacks, microbatch_groups


@dataclass
class LossParts:
    total: torch.Tensor
    policy: torch.Tensor  # clipped surrogate, minus the entropy bonus
    value: torch.Tensor  # vf_coef * value loss
    log_ratio: torch.Tensor  # [N] log pi(a|s) - behaviour log-prob, detached


def ppo_loss(logits, values, actions, old_logp, old_values, advantages, returns, *,
             clip_coef: float, clip_vloss: bool, vf_coef: float, ent_coef: float):
    """Clipped-surrogate PPO loss, mean over the given samples.

    Value loss: PPO2's clipped variant (as in CleanRL): 0.5 * max((V - R)^2, (V_clip - R)^2)
    with V_clip = V_old + clip(V - V_old, -eps, eps); plain 0.5 * (V - R)^2 otherwise.
    Returns (LossParts, diagnostics dict of detached scalars).
    """
    dist = Categorical(logits=logits)
    logp = dist.log_prob(actions)
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    if clip_vloss:
        v_clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((values - returns) ** 2).mean()
    entropy = dist.entropy().mean()
    policy = pg_loss - ent_coef * entropy
    value = vf_coef * v_loss
    with torch.no_grad():
        diags = {
            "losses/policy_loss": pg_loss.detach(),
            "losses/value_loss": v_loss.detach(),
            "losses/entropy": entropy.detach(),
            # k3 estimator of KL(old || new) (Schulman), low variance and positive
            "losses/approx_kl": ((ratio - 1) - log_ratio).mean(),
            "losses/clipfrac": ((ratio - 1.0).abs() > clip_coef).float().mean(),
        }
    return LossParts(policy + value, policy, value, log_ratio.detach()), diags


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Learner:
    """PPO updates on flat batches of any size; its NoiseProbe measures the noise scale.

    The model is built from the global torch RNG: seed it first (rlscale.util.seed_everything).
    """

    def __init__(self, cfg, spec: EnvSpec, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.model = build_model(spec, cfg.model).to(device)
        self.params = list(self.model.parameters())
        self.param_names = [n for n, _ in self.model.named_parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps, foreach=True)
        # A fixed P for the preconditioned noise scale instead of Adam's current one (the noise
        # probe measures a checkpoint's metric while its lr-0 steps move Adam's state).
        self.fixed_preconditioner: list[torch.Tensor] | None = None
        self.probe = NoiseProbe(cfg.noise, cfg.ppo.microbatch_size)
        self.rng = np.random.default_rng(cfg.seed)  # minibatch order
        self.version = 0  # bumped by every update; actors report the version they acted with
        self.optimizer_steps = 0

    def get_weights(self) -> dict[str, np.ndarray]:
        """The policy's parameters as NumPy arrays: Ray ships those zero-copy through its object
        store (a state dict of tensors is pickled: much slower to put and to read for the CNN)."""
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in self.model.state_dict().items()}

    # -- one PPO iteration ------------------------------------------------------------------
    def update(self, batch: dict, lr: float, iteration: int = 0, clip_coef: float | None = None) -> dict[str, float]:
        """PPO epochs over one batch: minibatches of B / num_minibatches steps, each the mean of
        its micro-batches' gradients, clipped, one Adam step. Returns the iteration's metrics."""
        p = self.cfg.ppo
        clip_coef = p.clip_coef if clip_coef is None else clip_coef
        loss_kw = dict(clip_coef=clip_coef, clip_vloss=p.clip_vloss, vf_coef=p.vf_coef, ent_coef=p.ent_coef)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t = self._to_device(batch)
        n = len(t["actions"])
        check_minibatch(n, p.num_minibatches)
        mb_size = n // p.num_minibatches
        probe = self.probe
        probe.start_update()
        logs = _Sums()
        logp_mismatch = torch.zeros((), device=self.device)
        compared = torch.zeros((), dtype=torch.bool, device=self.device)  # a lag-0 step was compared
        lag0 = t["versions"] == self.version  # steps collected with the current weights
        stopped = False
        # random grouping cuts every minibatch at the same positions: computed once
        fixed_micro = self._microbatches(batch, np.arange(mb_size)) if self.cfg.noise.microbatch_mode == "random" else None
        for epoch in range(p.epochs):
            order = self.rng.permutation(n)  # [n] numpy; the training minibatches
            order_t = torch.from_numpy(order).to(self.device)
            for m in range(p.num_minibatches):
                idx = order_t[m * mb_size:(m + 1) * mb_size]
                adv = self._normalized(t["advantages"][idx])  # constants for the micro-batches
                # How a minibatch is cut into micro-batches only matters to the probe: the
                # minibatch's steps, and so its gradient, are the same either way.
                micro = fixed_micro or self._microbatches(batch, order[m * mb_size:(m + 1) * mb_size])
                probe.start_minibatch(iteration, epoch, m, len(micro), self._adam_preconditioner)
                acc = [torch.zeros_like(q) for q in self.params]
                minibatch_kl = torch.zeros((), device=self.device)
                for c in micro:
                    j = idx[c]
                    logits, values = self.model(self._obs(t["obs"], j))
                    parts, diags = ppo_loss(logits, values, t["actions"][j], t["logp"][j], t["values"][j], adv[c], t["returns"][j], **loss_kw)
                    w = len(c) / len(idx)  # micro-batch means -> minibatch mean
                    full = len(c) == p.microbatch_size
                    g: list[torch.Tensor] | tuple[torch.Tensor, ...]
                    if probe.split:
                        g_pi, g_v = self._grads(parts.policy, retain=True), self._grads(parts.value)
                        g = torch._foreach_add(g_pi, g_v)
                        probe.on_microbatch(g, w, full, {"policy": g_pi, "value": g_v})
                    else:
                        g = self._grads(parts.total)
                        probe.on_microbatch(g, w, full)
                    torch._foreach_add_(acc, g, alpha=w)
                    logs.add_weighted(diags, w)  # micro-batch weights sum to 1 per minibatch
                    minibatch_kl = minibatch_kl + diags["losses/approx_kl"] * w
                    if epoch == 0 and m == 0:  # before any optimizer step: at the behaviour weights
                        logp_mismatch = torch.maximum(logp_mismatch, (parts.log_ratio.abs() * lag0[j]).max())
                        compared = compared | lag0[j].any()
                for q, q_grad in zip(self.params, acc):
                    q.grad = q_grad
                probe.on_minibatch(acc, len(idx))
                if epoch == 0 and m == 0:
                    self._probe_extras(t, idx, adv, order_t, mb_size, micro, loss_kw, iteration, acc)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, p.max_grad_norm if p.max_grad_norm > 0 else math.inf)
                logs.add("losses/grad_norm", grad_norm)
                self.optimizer.step()
                self.optimizer_steps += 1
                logs.minibatches += 1
            # Early stop on the approx KL of the epoch's last minibatch, as CleanRL (one sync per epoch).
            if p.target_kl is not None and float(minibatch_kl) > p.target_kl:
                stopped = True
                break
        self.version += 1
        out = logs.means()
        with torch.no_grad():
            y, v = t["returns"], t["values"]
            var_y = y.var()
            out["losses/explained_variance"] = float("nan") if var_y == 0 else float(1 - (y - v).var() / var_y)
        out["losses/logp_mismatch"] = float(logp_mismatch) if bool(compared) else float("nan")
        out["charts/learning_rate"] = lr
        out["charts/clip_coef"] = clip_coef
        out["losses/early_stop"] = float(stopped)
        out.update(probe.end_update())
        return out

    def _microbatches(self, batch: dict, minibatch: np.ndarray) -> list[torch.Tensor]:
        """Positions into the minibatch of each micro-batch, on the device."""
        groups = microbatch_groups(batch, minibatch, self.cfg.ppo.microbatch_size, self.cfg.noise.microbatch_mode)
        return [torch.from_numpy(c).to(self.device) for c in groups]

    def _adam_preconditioner(self) -> list[torch.Tensor] | None:
        """Adam's diagonal preconditioner 1 / (sqrt(v / (1 - beta2^t)) + eps) per parameter (the
        step it would take is lr m_hat P); None before its first step. `fixed_preconditioner`,
        when set, is returned instead."""
        if self.fixed_preconditioner is not None:
            return self.fixed_preconditioner
        group = self.optimizer.param_groups[0]
        beta2, eps = group["betas"][1], group["eps"]
        out = []
        for q in self.params:
            st = self.optimizer.state.get(q, {})
            if "exp_avg_sq" not in st:
                return None
            bias = 1 - beta2 ** float(st["step"])
            out.append(1.0 / ((st["exp_avg_sq"] / bias).sqrt() + eps))
        return out

    def _to_device(self, batch: dict) -> dict[str, Any]:  # tensors, but 'obs' may be FrameStacks
        # uint8 frames go to the device as bytes (frame stacks as frames + index, gathered there
        # per micro-batch); the model scales them.
        with warnings.catch_warnings():
            # Fragments from Ray's object store are read-only views; the learner only reads them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t: dict[str, Any] = {k: torch.from_numpy(np.asarray(batch[k])).to(self.device)
                                 for k in ("actions", "logp", "values", "advantages", "returns", "versions")}
        obs = batch["obs"]
        t["obs"] = obs.to(self.device) if isinstance(obs, FrameStacks) else torch.from_numpy(np.asarray(obs)).to(self.device)
        return t

    def _obs(self, obs, j: torch.Tensor) -> torch.Tensor:
        x = obs[j]
        if self.model.channels_last and x.dim() == 4:
            # NHWC like the CNN's kernels: oneDNN then makes no float copy of the input in its
            # own layout. Done here, not in the model: vmap (per-example gradients) does not
            # take channels-last tensors.
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _normalized(self, adv: torch.Tensor) -> torch.Tensor:
        if self.cfg.ppo.norm_adv and len(adv) > 1:
            return (adv - adv.mean()) / (adv.std() + 1e-8)
        return adv

    def _grads(self, loss: torch.Tensor, retain: bool = False) -> list[torch.Tensor]:
        gs = torch.autograd.grad(loss, self.params, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(q) if g is None else g for q, g in zip(self.params, gs)]

    def _probe_extras(self, t, idx, adv, order, mb_size, micro, loss_kw, iteration, big_grads) -> None:
        """The per-example and B_noise estimates on the first minibatch, when due.

        B_noise takes its Hessian on samples the gradients did not see: the next minibatch; with
        one minibatch per epoch, the micro-batches after the kept ones (the last kept one is
        given up for it if need be), the big gradient then being the kept micro-batches' mean.
        """
        k = min(len(idx), self.cfg.noise.per_example_samples)
        small = self.probe.kept_grads
        h_idx = order[mb_size:2 * mb_size]
        b_big = len(idx)
        if self.cfg.ppo.num_minibatches == 1:
            small = small[:len(micro) - 1]
            h_idx = idx[torch.cat(micro[len(small):])]
            b_big = len(small) * self.cfg.ppo.microbatch_size
            big_grads = [torch.stack(gs).mean(0) for gs in zip(*small)] if small else big_grads

        def samples(ix, a):
            return {"obs": t["obs"][ix], "actions": t["actions"][ix], "logp": t["logp"][ix],
                    "values": t["values"][ix], "adv": a, "returns": t["returns"][ix]}

        def hessian_samples():
            return samples(h_idx[:k], self._normalized(t["advantages"][h_idx[:k]]))

        model = self.model

        def loss_fn(params: Params, b: Batch) -> torch.Tensor:
            assert isinstance(params, dict)  # torch.func passes the dict built below; functional_call takes dicts
            logits, values = torch.func.functional_call(model, params, (b["obs"],))
            parts, _ = ppo_loss(logits, values, b["actions"], b["logp"], b["values"], b["adv"], b["returns"], **loss_kw)
            return parts.total

        params = {name: q.detach() for name, q in zip(self.param_names, self.params)}
        self.probe.extras(iteration, loss_fn, params, samples(idx[:k], adv[:k]), hessian_samples, small, big_grads, b_big)

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "optimizer_steps": self.optimizer_steps,
            "probe": self.probe.state_dict(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.version = s["version"]
        self.optimizer_steps = s["optimizer_steps"]
        self.probe.load_state_dict(s["probe"])
        self.rng.bit_generator.state = s["rng"]


class _Sums:
    """An update's metrics, summed on the device and read once at the end (one sync each)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.minibatches = 0

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value.detach()
        self.counts[key] = self.counts.get(key, 0) + 1

    def add_weighted(self, diags: dict[str, torch.Tensor], weight: float) -> None:
        for k, v in diags.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
            self.counts[k] = 0  # a weighted sum: its mean is per minibatch

    def means(self) -> dict[str, float]:
        n = max(1, self.minibatches)
        return {k: float(v) / (self.counts[k] or n) for k, v in self.sums.items()}
