"""The PPO loss (pure) and the learner that owns the model and the optimizer.

Each minibatch is processed in micro-batches whose gradients are accumulated, so any batch
fits in memory. The micro-batch gradients exist anyway, so the gradient noise scale comes
almost for free (McCandlish et al. 2018, App. A.1): B_small = one micro-batch, B_big = the
minibatch, both at the same parameters and before gradient clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Categorical

from rlscale import noise_scale as ns
from rlscale.model import ActorCritic
from rlscale.rollout import FrameStacks, minibatch_order
from rlscale.util import keep_heap_memory


@dataclass
class LossParts:
    total: torch.Tensor
    policy: torch.Tensor  # clipped surrogate, minus the entropy bonus
    value: torch.Tensor  # vf_coef * value loss


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
    return LossParts(policy + value, policy, value), diags


def _sq_norm(tensors) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(list(tensors))).pow(2).sum() if tensors else torch.zeros(())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Learner:
    """PPO updates on flat batches; tracks the noise scale; batch size can change any time."""

    def __init__(self, cfg, obs_shape, num_actions: int, device: torch.device):
        self.cfg = cfg
        self.device = device
        if device.type == "cpu":
            keep_heap_memory()  # a CPU update otherwise spends a fifth of its time in page faults
        torch.manual_seed(cfg.seed)
        self.model = ActorCritic(obs_shape, num_actions, cfg.model.hidden_sizes, cfg.model.precision).to(device)
        self.params = [p for p in self.model.parameters()]
        self.param_names = [n for n, _ in self.model.named_parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps, foreach=True)
        self.rng = np.random.default_rng(cfg.seed)
        self.env_steps_per_iteration = cfg.ppo.env_steps_per_iteration
        self.version = 0  # bumped by every update; actors report the version they acted with
        self.optimizer_steps = 0
        beta = cfg.noise.ema_beta
        self.b_simple_history: list[float] = []  # B_simple EMA after each iteration
        self.ema = {k: ns.NoiseScaleEMA(beta) for k in ("combined", "policy", "value", "per_example", "b_noise")}

    # -- batch size API ---------------------------------------------------------------------
    def set_env_steps_per_iteration(self, n: int) -> None:
        """Change the batch size B for the following iterations (minibatch count stays)."""
        from rlscale.config import check_minibatch

        if n <= 0:
            raise ValueError(f"env_steps_per_iteration must be positive, got {n}")
        check_minibatch(n, self.cfg.ppo.num_minibatches)
        self.env_steps_per_iteration = n

    def get_weights(self) -> dict[str, np.ndarray]:
        """The policy's parameters as NumPy arrays: Ray ships those zero-copy through its object
        store (a state dict of tensors is pickled: about 10x slower to put and to read for the CNN)."""
        return {k: v.detach().to("cpu", copy=True).numpy() for k, v in self.model.state_dict().items()}

    # -- one PPO iteration ------------------------------------------------------------------
    def update(self, batch: dict[str, np.ndarray], lr: float, iteration: int = 0, clip_coef: float | None = None) -> dict[str, float]:
        p, ncfg = self.cfg.ppo, self.cfg.noise
        dev = self.device
        mb_size = len(batch["actions"]) // p.num_minibatches
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        # uint8 frames go to the device as bytes (frame stacks as frames + index: t["obs"][j] is
        # then gathered there); the model scales them.
        t = {k: torch.from_numpy(np.asarray(batch[k])).to(dev) for k in ("actions", "logp", "values", "advantages", "returns")}
        obs = batch["obs"]
        t["obs"] = obs.to(dev) if isinstance(obs, FrameStacks) else torch.from_numpy(np.asarray(obs)).to(dev)
        clip_coef = p.clip_coef if clip_coef is None else clip_coef
        loss_kw = dict(clip_coef=clip_coef, clip_vloss=p.clip_vloss, vf_coef=p.vf_coef, ent_coef=p.ent_coef)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def add(key: str, value) -> None:
            # Tensors stay on the device until the end of the update: no sync per micro-batch.
            sums[key] = sums.get(key, 0.0) + (value.detach() if torch.is_tensor(value) else value)
            counts[key] = counts.get(key, 0) + 1

        split = ncfg.enabled and ncfg.split_policy_value
        stop = False
        for epoch in range(p.epochs):
            order = torch.from_numpy(minibatch_order(batch, ncfg.microbatch_mode if ncfg.enabled else "random", self.rng)).to(dev)
            for m in range(p.num_minibatches):
                idx = order[m * mb_size:(m + 1) * mb_size]
                adv = self._normalized(t["advantages"][idx])  # constants for the micro-batches
                chunks = torch.split(torch.arange(len(idx), device=dev), p.microbatch_size)
                measure = ncfg.enabled and len(chunks) >= 2 and (ncfg.epochs == "all" or epoch == 0)
                keep_grads = measure and ncfg.b_noise_interval and iteration % ncfg.b_noise_interval == 0 and epoch == 0 and m == 0
                acc = [torch.zeros_like(q) for q in self.params]
                # The policy and value parts are kept apart only while they are measured.
                parts_acc = {k: [torch.zeros_like(q) for q in self.params] for k in ("policy", "value")} if split and measure else None
                small_sq = {k: [] for k in ("combined", "policy", "value")}
                micro_grads = []
                for c in chunks:
                    j = idx[c]
                    logits, values = self.model(self._obs(t["obs"], j))
                    parts, diags = ppo_loss(logits, values, t["actions"][j], t["logp"][j], t["values"][j], adv[c], t["returns"][j], **loss_kw)
                    w = len(c) / len(idx)  # micro-batch means -> minibatch mean
                    full = len(c) == p.microbatch_size
                    if parts_acc is not None:
                        g_pi = self._grads(parts.policy, retain=True)
                        g_v = self._grads(parts.value)
                        torch._foreach_add_(parts_acc["policy"], g_pi, alpha=w)
                        torch._foreach_add_(parts_acc["value"], g_v, alpha=w)
                        g = torch._foreach_add(g_pi, g_v)
                        if full:
                            small_sq["policy"].append(_sq_norm(g_pi))
                            small_sq["value"].append(_sq_norm(g_v))
                    else:
                        g = self._grads(parts.total)
                    torch._foreach_add_(acc, g, alpha=w)
                    if measure and full:
                        small_sq["combined"].append(_sq_norm(g))
                        if keep_grads and len(micro_grads) < 8:
                            micro_grads.append([x.detach().clone() for x in g])
                    for k, v in diags.items():
                        add(k, v * w)  # micro-batch weights sum to 1 per minibatch
                for q, g in zip(self.params, acc):
                    q.grad = g
                if measure and small_sq["combined"]:
                    self._noise_update("combined", small_sq["combined"], acc, p.microbatch_size, len(idx), add)
                    for k, g_part in (parts_acc or {}).items():
                        self._noise_update(k, small_sq[k], g_part, p.microbatch_size, len(idx), add)
                if epoch == 0 and m == 0 and ncfg.enabled:
                    # The Hessian for B_noise is taken on other samples than the gradients'
                    # (the next minibatch), which keeps H independent of them.
                    h_idx = order[mb_size:2 * mb_size] if p.num_minibatches > 1 else idx
                    self._extra_estimates(t, idx, adv, h_idx, loss_kw, iteration, micro_grads, acc, add)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, p.max_grad_norm if p.max_grad_norm > 0 else math.inf)
                add("losses/grad_norm", grad_norm)
                self.optimizer.step()
                self.optimizer_steps += 1
                add("counts/minibatches", 1)
            if p.target_kl is not None and float(sums.get("losses/approx_kl", 0.0)) / max(1, counts.get("counts/minibatches", 1)) > p.target_kl:
                stop = True
                break
        self.version += 1
        out = {}
        n_mb = sums.pop("counts/minibatches", 1.0)
        counts.pop("counts/minibatches", None)
        for k, v in sums.items():  # sync point: one transfer of each summed metric
            if k.startswith("losses/") and k != "losses/grad_norm":
                out[k] = float(v) / n_mb  # diags were summed with micro-batch weights
            else:
                out[k] = float(v) / counts[k]
        with torch.no_grad():
            y, v = t["returns"], t["values"]
            var_y = y.var()
            out["losses/explained_variance"] = float("nan") if var_y == 0 else float(1 - (y - v).var() / var_y)
        out["charts/learning_rate"] = lr
        out["charts/clip_coef"] = clip_coef
        out["losses/early_stop"] = float(stop)
        self.b_simple_history.append(self.ema["combined"].ratio)
        if ncfg.enabled:
            out["noise/b_simple_ema"] = self.ema["combined"].ratio
            out["noise/grad_sq_ema"] = self.ema["combined"].grad_sq
            out["noise/trace_cov_ema"] = self.ema["combined"].trace_cov
            if split:
                out["noise/b_simple_policy_ema"] = self.ema["policy"].ratio
                out["noise/b_simple_value_ema"] = self.ema["value"].ratio
            if ncfg.per_example_interval:
                out["noise/b_simple_per_example_ema"] = self.ema["per_example"].ratio
            if ncfg.b_noise_interval:
                out["noise/b_noise_ema"] = self.ema["b_noise"].ratio
        return out

    def _obs(self, obs, j: torch.Tensor) -> torch.Tensor:
        x = obs[j]
        if x.dim() == 4:
            # NHWC like the CNN's kernels: oneDNN then makes no float copy of the input in its
            # own layout (CPU update 4-11% faster in 7 of 8 back-to-back pairs, peak RSS 20-30 MiB
            # lower, identical values). Done here, not in the model: vmap (per-example
            # gradients) does not take channels-last tensors.
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _normalized(self, adv: torch.Tensor) -> torch.Tensor:
        if self.cfg.ppo.norm_adv and len(adv) > 1:
            return (adv - adv.mean()) / (adv.std() + 1e-8)
        return adv

    def _grads(self, loss: torch.Tensor, retain: bool = False) -> list[torch.Tensor]:
        gs = torch.autograd.grad(loss, self.params, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(q) if g is None else g for q, g in zip(self.params, gs)]

    def _noise_update(self, key, small_sq, big_grads, b_small, b_big, add) -> None:
        # Sync point (once per measured minibatch): the EMA keeps python floats.
        sq_small = torch.stack(small_sq).mean()
        sq_big = _sq_norm(big_grads)
        grad_sq, trace_cov = ns.two_batch_estimates(float(sq_small), float(sq_big), b_small, b_big)
        self.ema[key].update(grad_sq, trace_cov)
        # combined: noise/grad_sq, noise/b_simple; parts: noise/policy_grad_sq, noise/b_simple_policy
        prefix, suffix = ("noise/", "") if key == "combined" else (f"noise/{key}_", f"_{key}")
        add(f"{prefix}grad_sq", grad_sq)
        add(f"{prefix}trace_cov", trace_cov)
        add(f"noise/b_simple{suffix}", ns.b_simple_ratio(grad_sq, trace_cov))

    def _functional_loss(self, loss_kw):
        names = self.param_names

        def loss_fn(params: dict, b: dict) -> torch.Tensor:
            logits, values = torch.func.functional_call(self.model, params, (b["obs"],))
            parts, _ = ppo_loss(logits, values, b["actions"], b["logp"], b["values"], b["adv"], b["returns"], **loss_kw)
            return parts.total

        params = {k: q.detach() for k, q in zip(names, self.params)}
        return loss_fn, params

    def _extra_estimates(self, t, idx, adv, h_idx, loss_kw, iteration, micro_grads, big_grads, add) -> None:
        """Per-example (B_small = 1) and Hessian-based B_noise estimates, at their intervals."""
        ncfg = self.cfg.noise
        do_pe = ncfg.per_example_interval and iteration % ncfg.per_example_interval == 0
        do_bn = ncfg.b_noise_interval and iteration % ncfg.b_noise_interval == 0 and len(micro_grads) >= 1
        if not (do_pe or do_bn):
            return
        loss_fn, params = self._functional_loss(loss_kw)
        k = min(len(idx), ncfg.per_example_samples)

        def subset(ix, a):
            return {"obs": t["obs"][ix], "actions": t["actions"][ix], "logp": t["logp"][ix],
                    "values": t["values"][ix], "adv": a, "returns": t["returns"][ix]}

        sub = subset(idx[:k], adv[:k])
        if do_pe:
            grad_sq, trace_cov = ns.per_example_estimates(loss_fn, params, sub, chunk_size=64)
            grad_sq, trace_cov = float(grad_sq), float(trace_cov)
            self.ema["per_example"].update(grad_sq, trace_cov)
            add("noise/per_example_grad_sq", grad_sq)
            add("noise/per_example_trace_cov", trace_cov)
            add("noise/b_simple_per_example", ns.b_simple_ratio(grad_sq, trace_cov))
        if do_bn:
            as_dict = lambda gs: {n: g for n, g in zip(self.param_names, gs)}  # noqa: E731
            h_adv = self._normalized(t["advantages"][h_idx[:k]])
            ghg, tr_hs = ns.b_noise_estimates(
                loss_fn, params, subset(h_idx[:k], h_adv), [as_dict(g) for g in micro_grads], as_dict(big_grads),
                self.cfg.ppo.microbatch_size, len(idx),
            )
            ghg, tr_hs = float(ghg), float(tr_hs)
            self.ema["b_noise"].update(ghg, tr_hs)
            add("noise/gHg", ghg)
            add("noise/trace_H_cov", tr_hs)
            add("noise/b_noise", ns.b_simple_ratio(ghg, tr_hs))

    # -- checkpoint state -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "optimizer_steps": self.optimizer_steps,
            "env_steps_per_iteration": self.env_steps_per_iteration,
            "ema": {k: e.state_dict() for k, e in self.ema.items()},
            "b_simple_history": list(self.b_simple_history),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.version = s["version"]
        self.optimizer_steps = s["optimizer_steps"]
        self.env_steps_per_iteration = s["env_steps_per_iteration"]
        for k, e in self.ema.items():
            e.load_state_dict(s["ema"][k])
        self.b_simple_history = [float(x) for x in s["b_simple_history"]]
        self.rng.bit_generator.state = s["rng"]
        torch.set_rng_state(s["torch_rng"])
