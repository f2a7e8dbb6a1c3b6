"""Typed, validated configuration.

One dataclass per concern; OmegaConf does the loading, dotted ``KEY=VALUE`` merging and type
checking against these dataclasses, and ``validate`` checks what types cannot say (sizes that
must divide, ids that must exist). Every error is a ``ConfigError`` whose message names the
problem and the fix, so the CLI can print it as one line.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration the user must fix; the message is one line naming the fix."""


@dataclass
class EnvConfig:
    id: str = "CartPole-v1"
    """Gymnasium classic-control id (CartPole-v1, Acrobot-v1, ...) or ALE v5 id (ALE/Pong-v5)."""
    repeat_action_probability: float = 0.25
    """Atari sticky actions; 0.25 is the v5 default."""
    noop_max: int = 30
    """Atari: up to this many no-op actions at the start of each episode."""
    frame_skip: int = 4
    """Atari: emulator frames per agent step (one env step = frame_skip frames)."""
    frame_stack: int = 4
    """Atari: observations stacked along the channel axis."""
    episodic_life: bool = False
    """Atari, training only: a lost life ends the training episode (scores stay per game)."""
    clip_rewards: bool = False
    """Training rewards clipped to their sign; reported episode returns are always raw."""
    max_episode_frames: int = 108_000
    """Atari: truncate a game after this many frames (30 minutes at 60 fps)."""


@dataclass
class WorkersConfig:
    backend: str = "ray"
    """'ray' (rollout actors) or 'local' (same code in-process, for debugging and exact repeats)."""
    num_workers: int = 0
    """Rollout workers; 0 picks one per available CPU (at least 1)."""
    num_envs_per_worker: int = 4
    """Environments in each worker's vector env (E of a fragment [T, E])."""
    num_envs_per_worker_list: list[int] = field(default_factory=list)
    """Optional per-worker E (overrides num_envs_per_worker; its length sets num_workers)."""
    fragment_length: int = 0
    """Steps T per fragment; 0 sizes fragments so one round of all workers fills the batch."""
    num_cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each rollout actor."""
    overlap: bool = False
    """Collect the next batch while the learner updates (policy lag 1, corrected by the
    behaviour log-probabilities in the PPO ratio); False keeps PPO strictly on-policy."""
    max_restarts: int = 3
    """Rollout-actor failures tolerated in a run before it stops with a checkpoint."""
    address: Optional[str] = None
    """Ray address (None: start or join a local cluster)."""


@dataclass
class PPOConfig:
    env_steps_per_iteration: int = 512
    """Env steps (observations) of fresh data per PPO iteration: the batch size B."""
    num_minibatches: int = 4
    """Minibatches (optimizer steps) per epoch; must divide env_steps_per_iteration."""
    microbatch_size: int = 64
    """Examples per forward/backward; gradients accumulate over a minibatch. Bounds memory."""
    epochs: int = 4
    """Passes over each batch."""
    lr: float = 2.5e-4
    """Adam learning rate at the start."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over total_env_steps."""
    lr_rule: str = "fixed"
    """How lr scales with the batch B from the reference B0: fixed, linear, sqrt or noise."""
    lr_reference_env_steps: int = 0
    """B0, the batch at which ppo.lr was tuned (0 = the run's own env_steps_per_iteration)."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    """PPO ratio clip epsilon."""
    anneal_clip: bool = False
    """Anneal clip_coef linearly to 0 over total_env_steps, like the learning rate."""
    clip_vloss: bool = True
    """Value loss clipping as in PPO2 / CleanRL: max of the clipped and unclipped squared errors."""
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    """Global gradient-norm clip; <= 0 disables it."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    adam_eps: float = 1e-5
    target_kl: Optional[float] = None
    """Stop the epochs of an iteration early when approx KL exceeds this."""


@dataclass
class NoiseConfig:
    enabled: bool = True
    """Measure B_simple for free from the micro-batch gradients."""
    epochs: str = "first"
    """Epochs that feed the estimate: 'first' (policy gradient at the behaviour policy) or 'all'."""
    microbatch_mode: str = "random"
    """'random' samples per micro-batch, or 'env' (micro-batches of whole per-env slices)."""
    ema_beta: float = 0.95
    """Smoothing of |G|^2 and tr(Sigma) (bias-corrected EMA, updated once per minibatch)."""
    per_example_interval: int = 0
    """Every N iterations also estimate with B_small = 1 (per-sample gradients); 0 = off."""
    per_example_samples: int = 256
    """Samples of the first minibatch used by the per-example estimate."""
    b_noise_interval: int = 0
    """Every N iterations estimate B_noise with Hessian-vector products; 0 = off."""
    split_policy_value: bool = False
    """Also measure the policy and value losses' gradients separately."""


@dataclass
class ModelConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """MLP hidden layers for vector observations (Atari uses the Nature CNN)."""
    precision: str = "fp32"
    """'fp32', or 'bf16': the network's layers run in bfloat16 under torch.autocast, in the
    learner and the rollout workers (weights, optimizer and losses stay float32). Fast on GPUs
    and on CPUs with AVX512-BF16 or AMX; slow elsewhere."""


@dataclass
class TrackingConfig:
    wandb_mode: str = "offline"
    """'offline' (default: runs under wandb/), 'online' or 'disabled'."""
    project: str = "rlscale"
    group: Optional[str] = None
    name: Optional[str] = None
    progress_bar: bool = True
    return_window: int = 20
    """Episodes in the reported mean return (episode_return_mean_last20 uses 20)."""


@dataclass
class TrainConfig:
    seed: int = 1
    total_env_steps: int = 100_000
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda[:N]'."""
    torch_threads: int = 0
    """Learner intra-op threads; 0 leaves torch's default."""
    checkpoint_interval: int = 50
    """Iterations between checkpoints (the final one is always written)."""
    targets: list[float] = field(default_factory=list)
    """Returns whose first crossing by the smoothed return is recorded in summary.json."""
    stop_return: Optional[float] = None
    """Stop once the smoothed return reaches this (sweeps stop at their highest target)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---------------------------------------------------------------------------------------------
# loading and merging


def _valid_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass, nested sections included."""
    keys, defaults = [], cls()
    for f in fields(cls):
        keys.append(prefix + f.name)
        value = getattr(defaults, f.name)
        if is_dataclass(value):
            keys += _valid_keys(type(value), prefix + f.name + ".")
    return keys


def _unknown_key_error(key: str, schema_cls) -> ConfigError:
    valid = _valid_keys(schema_cls)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:  # a typo in the last component only: ppo.lrr -> ppo.lr
        tails = {v.rsplit(".", 1)[-1]: v for v in valid}
        close = [tails[t] for t in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1)]
    hint = f"; did you mean '{close[0]}'?" if close else "; see the dataclasses in rlscale/config.py"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _describe(e: OmegaConfBaseException, schema_cls) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    if isinstance(e, (ConfigAttributeError, ConfigKeyError)) and key:
        return _unknown_key_error(key, schema_cls)
    msg = str(e).splitlines()[0]
    where = f" for '{key}'" if key else ""
    return ConfigError(f"invalid value{where}: {msg}; fix the YAML file or the KEY=VALUE override")


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass a YAML file such as configs/cartpole.yaml")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"config file '{path}' is not valid YAML ({str(e).splitlines()[0]}); fix its syntax") from None
    if not OmegaConf.is_dict(cfg):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not {type(cfg).__name__}")
    return cfg


def parse_overrides(overrides: list[str]) -> Any:
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"override '{o}' is not KEY=VALUE; write it like ppo.lr=3e-4")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {overrides}: {str(e).splitlines()[0]}") from None


def merge_into(schema_cls, *sources) -> Any:
    """Merge sources onto the dataclass schema with type checking; return the typed object."""
    schema = OmegaConf.structured(schema_cls)
    try:
        merged = OmegaConf.merge(schema, *sources)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _describe(e, schema_cls) from None


def load_train_config(path: str | Path | dict | None, overrides: list[str] = ()) -> TrainConfig:
    """Schema <- YAML file (or a dict of its content) <- dotted overrides, then validate."""
    if isinstance(path, dict):
        sources = [OmegaConf.create(path)]
    else:
        sources = [load_yaml(path)] if path else []
    sources.append(parse_overrides(list(overrides)))
    cfg = merge_into(TrainConfig, *sources)
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# ---------------------------------------------------------------------------------------------
# validation of what the types cannot say


def _positive(name: str, value, fix: str = "") -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}{'; ' + fix if fix else ''}")


def validate(cfg: TrainConfig) -> None:
    from rlscale.envs import check_env_id  # envs imports nothing from here at module level

    p, w, n = cfg.ppo, cfg.workers, cfg.noise
    _positive("total_env_steps", cfg.total_env_steps)
    _positive("ppo.env_steps_per_iteration", p.env_steps_per_iteration)
    _positive("ppo.num_minibatches", p.num_minibatches)
    _positive("ppo.microbatch_size", p.microbatch_size)
    _positive("ppo.epochs", p.epochs)
    _positive("ppo.lr", p.lr)
    _positive("workers.num_envs_per_worker", w.num_envs_per_worker)
    _positive("checkpoint_interval", cfg.checkpoint_interval)
    if w.num_workers < 0:
        raise ConfigError(f"workers.num_workers must be >= 0 (0 = one per CPU), got {w.num_workers}")
    if w.fragment_length < 0:
        raise ConfigError(f"workers.fragment_length must be >= 0 (0 = auto), got {w.fragment_length}")
    for e in w.num_envs_per_worker_list:
        _positive("workers.num_envs_per_worker_list entries", e)
    if w.max_restarts < 0:
        raise ConfigError(f"workers.max_restarts must be >= 0, got {w.max_restarts}")
    check_minibatch(p.env_steps_per_iteration, p.num_minibatches)
    if not 0.0 <= p.gamma <= 1.0 or not 0.0 <= p.gae_lambda <= 1.0:
        raise ConfigError(f"ppo.gamma and ppo.gae_lambda must lie in [0, 1], got {p.gamma} and {p.gae_lambda}")
    if p.clip_coef <= 0:
        raise ConfigError(f"ppo.clip_coef must be positive, got {p.clip_coef}")
    if p.lr_rule not in ("fixed", "linear", "sqrt", "noise"):
        raise ConfigError(f"ppo.lr_rule must be fixed, linear, sqrt or noise, got '{p.lr_rule}'")
    if p.lr_reference_env_steps < 0:
        raise ConfigError(f"ppo.lr_reference_env_steps must be >= 0 (0 = the run's own batch), got {p.lr_reference_env_steps}")
    if w.backend not in ("ray", "local"):
        raise ConfigError(f"workers.backend must be 'ray' or 'local', got '{w.backend}'")
    if n.epochs not in ("first", "all"):
        raise ConfigError(f"noise.epochs must be 'first' or 'all', got '{n.epochs}'")
    if n.microbatch_mode not in ("random", "env"):
        raise ConfigError(f"noise.microbatch_mode must be 'random' or 'env', got '{n.microbatch_mode}'")
    if not 0.0 <= n.ema_beta < 1.0:
        raise ConfigError(f"noise.ema_beta must lie in [0, 1), got {n.ema_beta}")
    if n.per_example_interval < 0 or n.b_noise_interval < 0:
        raise ConfigError("noise.per_example_interval and noise.b_noise_interval must be >= 0 (0 = off)")
    if cfg.tracking.wandb_mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"tracking.wandb_mode must be offline, online or disabled, got '{cfg.tracking.wandb_mode}'")
    _positive("tracking.return_window", cfg.tracking.return_window)
    for h in cfg.model.hidden_sizes:
        _positive("model.hidden_sizes entries", h)
    from rlscale.model import PRECISIONS

    if cfg.model.precision not in PRECISIONS:
        raise ConfigError(f"model.precision must be {' or '.join(repr(k) for k in PRECISIONS)}, got '{cfg.model.precision}'")
    check_env_id(cfg.env.id)
    check_device(cfg.device)


def check_minibatch(env_steps_per_iteration: int, num_minibatches: int) -> None:
    if env_steps_per_iteration % num_minibatches:
        raise ConfigError(
            f"ppo.num_minibatches={num_minibatches} does not divide ppo.env_steps_per_iteration="
            f"{env_steps_per_iteration}; pick a divisor (e.g. a power of two for both)"
        )


def check_device(device: str) -> None:
    import torch

    if device == "auto" or device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device='{device}' asked for but CUDA is not available here; use device=auto or device=cpu")
        return
    raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got '{device}'")
