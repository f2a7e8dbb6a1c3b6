"""Typed, validated configuration.

One dataclass per concern; OmegaConf does the loading, dotted ``KEY=VALUE`` merging and type
checking against these dataclasses, and ``validate`` checks what types cannot say (sizes that
must divide, ids that must exist). Every error is a ``ConfigError`` whose message names the
problem and the fix, so the CLI can print it as one line.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from rlscale.errors import ConfigError
from rlscale.schedules import BatchScheduleName, LrRule, batch_bounds

__all__ = ["ConfigError", "TrainConfig", "load_train_config", "validate"]


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
    """Atari: truncate a game after this many frames (30 minutes at 60 fps). MinAtar, which has
    no time limit of its own: after this many steps."""


@dataclass
class WorkersConfig:
    backend: Literal["ray", "local"] = "ray"
    """'ray' (rollout actors) or 'local' (same code in-process, for debugging and exact repeats)."""
    num_workers: int = 0
    """Rollout workers; 0 picks one per available CPU (at least 1)."""
    num_envs_per_worker: int = 4
    """Environments in each worker's vector env (E of a fragment [T, E])."""
    num_envs_per_worker_list: list[int] = field(default_factory=list)
    """Optional per-worker E (overrides num_envs_per_worker; its length sets num_workers)."""
    fragment_length: int = 0
    """Steps T per fragment; 0 sizes fragments so one round of all workers fills the batch."""
    collect: Literal["all", "needed"] = "all"
    """With a fixed fragment_length, which workers sample in a round: 'all' (steps beyond the
    batch wait in the buffer for the next one), or 'needed': the first workers whose T steps
    cover the batch's missing steps, so B varies through the number of envs taking part at a
    fixed T (what ppo.batch_schedule=noise needs to change B the way a grid over B does). The
    first workers take part first, so a later worker's envs wait mid-episode while B is small;
    training data are unaffected, but finished training episodes then mix policies (evaluate
    with eval.* to date targets)."""
    num_cpus_per_worker: float = 1.0
    """CPUs Ray reserves for each rollout actor."""
    overlap: bool = False
    """Collect the next batch while the learner updates (policy lag 1, corrected by the
    behaviour log-probabilities in the PPO ratio); False keeps PPO strictly on-policy."""
    max_restarts: int = 3
    """Rollout-actor failures tolerated in a run before it stops with a checkpoint."""
    start_timeout_s: float = 300.0
    """Seconds to wait for Ray to place and start the rollout actors (a busy or autoscaling
    cluster may need a while) before the run fails with an error naming the resources."""
    address: str | None = None
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
    lr_rule: LrRule = "fixed"
    """How lr scales with the batch B from the reference B0: fixed, linear, sqrt or noise."""
    lr_reference_env_steps: int = 0
    """B0, the batch at which ppo.lr was tuned (0 = the run's own env_steps_per_iteration)."""
    batch_schedule: BatchScheduleName = "fixed"
    """How B is chosen before each iteration (rlscale/schedules.py): 'fixed' keeps
    env_steps_per_iteration; 'noise' sets B = clamp(batch_scale x B_simple, batch_min, batch_max)
    from the noise scale measured so far (B_simple in env steps per iteration)."""
    batch_min: int = 0
    """Smallest B of the 'noise' schedule, and the B of its warm-up (0 = env_steps_per_iteration)."""
    batch_max: int = 0
    """Largest B of the 'noise' schedule (0 = 32 x batch_min)."""
    batch_scale: float = 1.0
    """c in B = c x B_simple (1: run at the critical batch the noise scale predicts)."""
    batch_warmup_iterations: int = 10
    """Iterations at batch_min before the 'noise' schedule follows the estimate (and until the
    estimate is defined)."""
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
    target_kl: float | None = None
    """Stop the epochs of an iteration early when the approx KL of an epoch's last minibatch
    exceeds this (as CleanRL)."""


@dataclass
class NoiseConfig:
    enabled: bool = True
    """Measure B_simple for free from the micro-batch gradients."""
    epochs: Literal["first", "all"] = "first"
    """Epochs that feed the estimate: 'first' (every minibatch of the first epoch) or 'all'."""
    microbatch_mode: Literal["random", "env"] = "env"
    """How a minibatch is cut into the micro-batches the estimate compares: 'env' (its steps
    grouped by env slice, in time order: the micro-batches are then independent given the
    policy, and the estimate agrees with the between-batch reference of `rlscale noise-probe`,
    docs/noise_scale.md) or 'random' (the minibatch's random order: correlated steps of one env
    fall into every micro-batch, and tr(Sigma) reads several times too low). The training
    minibatches are the same either way."""
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
    encoder: str = "auto"
    """'auto' (the env family's default: mlp for vectors, nature_cnn for Atari frames) or a key
    of rlscale.model.ENCODERS."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layers of the mlp encoder's policy and value networks."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """'fp32', or 'bf16': the network's layers run in bfloat16 under torch.autocast, in the
    learner and the rollout workers (weights, optimizer and losses stay float32). Fast on GPUs
    and on CPUs with AVX512-BF16 or AMX; slow elsewhere."""


@dataclass
class TrackingConfig:
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """'offline' (default: runs under wandb/), 'online' or 'disabled'."""
    project: str = "rlscale"
    group: str | None = None
    name: str | None = None
    progress_bar: bool = True
    """A progress bar on a terminal; elsewhere (a log file, a Ray job) a plain line."""
    progress_interval_s: float = 10.0
    """Seconds between plain progress lines when stderr is not a terminal."""
    return_window: int = 20
    """Episodes in the reported mean return (episode_return_mean_last20 uses 20)."""


@dataclass
class EvalConfig:
    interval: int = 0
    """Evaluate the current policy every N iterations (0 = off). On: targets and stop_return
    are judged by the evaluation's mean return, not by finished training episodes."""
    env_steps: int = 0
    """Evaluate also whenever the env steps trained on cross a multiple of this (0 = off): a
    spacing in env steps whatever B is, for runs whose B changes (ppo.batch_schedule=noise)."""
    episodes: int = 10
    """Episodes per evaluation, one per eval env, each to its end or to max_episode_steps
    (rlscale/evaluation.py)."""
    max_episode_steps: int = 0
    """Cut an evaluation game after this many env steps and score it as it stands (0 = play every
    game to its end). Training games are not cut (env.max_episode_frames caps those). An
    evaluation waits for its longest game, so a policy that survives without scoring (MinAtar
    Seaquest's, at a high lr) can make one evaluation cost more than hundreds of iterations."""

    @property
    def enabled(self) -> bool:
        return self.interval > 0 or self.env_steps > 0

    def due(self, iteration: int, env_steps_used: int, batch: int) -> bool:
        """Whether the iteration that just used `batch` env steps (ending at `env_steps_used`) evaluates."""
        by_iteration = self.interval > 0 and iteration % self.interval == 0
        by_steps = self.env_steps > 0 and env_steps_used // self.env_steps > (env_steps_used - batch) // self.env_steps
        return by_iteration or by_steps


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
    checkpoint_interval_s: float = 600.0
    """Also a checkpoint at the first iteration that ends this many seconds of wall time after the
    last one (0: by iterations only), so a run with long iterations (a large batch, a large
    population) keeps its progress when it is stopped."""
    checkpoint_keep: int = 3
    """Newest checkpoints kept (0 keeps all, e.g. for `rlscale noise-probe` along the run)."""
    targets: list[float] = field(default_factory=list)
    """Returns whose first crossing by the smoothed return (or the evaluation's mean return,
    with eval.interval > 0) is recorded in summary.json."""
    stop_return: float | None = None
    """Stop once the smoothed return reaches this (sweeps stop at their highest target)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


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


_CHOICES = re.compile(r"Invalid value '(.*)', expected one of \[(.*)\]")


def _describe(e: OmegaConfBaseException, schema_cls) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    if isinstance(e, (ConfigAttributeError, ConfigKeyError)) and key:
        return _unknown_key_error(key, schema_cls)
    msg = str(e).splitlines()[0]
    choices = _CHOICES.search(msg)
    if choices and key:  # a Literal field: name the allowed values
        return ConfigError(f"{key} must be one of {choices.group(2)}, got '{choices.group(1)}'")
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


def load_train_config(path: str | Path | dict | None, overrides: Sequence[str] = ()) -> TrainConfig:
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
    if is_dataclass(cfg) and not isinstance(cfg, type):  # a loaded config: plain values, fast
        return asdict(cfg)
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# ---------------------------------------------------------------------------------------------
# validation of what the types cannot say


def _positive(name: str, value, fix: str = "") -> None:
    if value is None or value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}{'; ' + fix if fix else ''}")


def _at_least(name: str, value, low, meaning: str = "") -> None:
    if value < low:
        raise ConfigError(f"{name} must be >= {low}{meaning}, got {value}")


def _in_range(name: str, value, low: float, high: float, closed_high: bool = True) -> None:
    if not (low <= value <= high if closed_high else low <= value < high):
        raise ConfigError(f"{name} must lie in [{low}, {high}{']' if closed_high else ')'}, got {value}")


def check_finite(obj, prefix: str = "") -> None:
    """Every float in a config (lists included) must be a finite number: nan and inf are refused."""
    for f in fields(obj):
        value, name = getattr(obj, f.name), prefix + f.name
        if is_dataclass(value):
            check_finite(value, name + ".")
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v}")


def validate(cfg: TrainConfig) -> None:
    """Check what the types cannot say, before anything is started or written."""
    from rlscale.envs import check_env_id
    from rlscale.model import ENCODERS

    check_finite(cfg)
    p, w, n, e = cfg.ppo, cfg.workers, cfg.noise, cfg.env
    _at_least("seed", cfg.seed, 0)
    _positive("total_env_steps", cfg.total_env_steps)
    _positive("checkpoint_interval", cfg.checkpoint_interval)
    _at_least("checkpoint_interval_s", cfg.checkpoint_interval_s, 0, " (0 = by iterations only)")
    _at_least("checkpoint_keep", cfg.checkpoint_keep, 0, " (0 keeps all)")
    _at_least("torch_threads", cfg.torch_threads, 0, " (0 = torch's default)")
    # workers
    _at_least("workers.num_workers", w.num_workers, 0, " (0 = one per CPU)")
    _positive("workers.num_envs_per_worker", w.num_envs_per_worker)
    for x in w.num_envs_per_worker_list:
        _positive("workers.num_envs_per_worker_list entries", x)
    _at_least("workers.fragment_length", w.fragment_length, 0, " (0 = auto)")
    if w.collect == "needed" and w.overlap:
        raise ConfigError("workers.collect=needed cannot run with workers.overlap=true (the next batch's size is not known "
                          "while the update runs); set workers.overlap=false")
    if w.collect == "needed" and w.fragment_length == 0:
        raise ConfigError("workers.collect=needed varies the envs taking part at a fixed T; set workers.fragment_length > 0 "
                          "(or workers.collect=all, where T = 0 sizes the fragments to the batch)")
    _positive("workers.num_cpus_per_worker", w.num_cpus_per_worker)
    _at_least("workers.max_restarts", w.max_restarts, 0)
    _positive("workers.start_timeout_s", w.start_timeout_s)
    # ppo
    _positive("ppo.env_steps_per_iteration", p.env_steps_per_iteration)
    _positive("ppo.num_minibatches", p.num_minibatches)
    _positive("ppo.microbatch_size", p.microbatch_size)
    _positive("ppo.epochs", p.epochs)
    _positive("ppo.lr", p.lr)
    _positive("ppo.clip_coef", p.clip_coef)
    _positive("ppo.adam_eps", p.adam_eps)
    _at_least("ppo.vf_coef", p.vf_coef, 0)
    _at_least("ppo.ent_coef", p.ent_coef, 0)
    if p.target_kl is not None:
        _positive("ppo.target_kl", p.target_kl, "leave it unset (null) for no early stop")
    check_minibatch(p.env_steps_per_iteration, p.num_minibatches)
    if not 0.0 <= p.gamma <= 1.0 or not 0.0 <= p.gae_lambda <= 1.0:
        raise ConfigError(f"ppo.gamma and ppo.gae_lambda must lie in [0, 1], got {p.gamma} and {p.gae_lambda}")
    _at_least("ppo.lr_reference_env_steps", p.lr_reference_env_steps, 0, " (0 = the run's own batch)")
    _at_least("ppo.batch_min", p.batch_min, 0, " (0 = ppo.env_steps_per_iteration)")
    _at_least("ppo.batch_max", p.batch_max, 0, " (0 = 32 x ppo.batch_min)")
    _positive("ppo.batch_scale", p.batch_scale)
    _at_least("ppo.batch_warmup_iterations", p.batch_warmup_iterations, 0)
    if p.batch_schedule == "noise":
        if w.collect == "needed" and len(set(w.num_envs_per_worker_list)) > 1:
            raise ConfigError("ppo.batch_schedule=noise with workers.collect=needed rounds B to one worker's T x E steps; "
                              "give every worker the same envs (workers.num_envs_per_worker, no per-worker list)")
        lo, hi = batch_bounds(p)
        if hi < lo:
            raise ConfigError(f"ppo.batch_max={hi} is below ppo.batch_min={lo}; raise ppo.batch_max (or set 0 for 32 x batch_min)")
        check_minibatch(lo, p.num_minibatches)
        if not n.enabled or lo // p.num_minibatches < 2 * p.microbatch_size:
            raise ConfigError(f"ppo.batch_schedule=noise needs the noise estimate at ppo.batch_min={lo}: noise.enabled and "
                              f"minibatches of at least 2 micro-batches (lower ppo.microbatch_size to "
                              f"{max(1, lo // p.num_minibatches // 2)} or raise ppo.batch_min)")
    # noise
    _in_range("noise.ema_beta", n.ema_beta, 0.0, 1.0, closed_high=False)
    if n.per_example_interval < 0 or n.b_noise_interval < 0:
        raise ConfigError("noise.per_example_interval and noise.b_noise_interval must be >= 0 (0 = off)")
    _at_least("noise.per_example_samples", n.per_example_samples, 2)
    # env
    _in_range("env.repeat_action_probability", e.repeat_action_probability, 0.0, 1.0)
    _at_least("env.noop_max", e.noop_max, 0)
    _positive("env.frame_skip", e.frame_skip)
    _positive("env.frame_stack", e.frame_stack)
    _positive("env.max_episode_frames", e.max_episode_frames)
    # model, tracking
    for h in cfg.model.hidden_sizes:
        _positive("model.hidden_sizes entries", h)
    if cfg.model.encoder != "auto" and cfg.model.encoder not in ENCODERS:
        raise ConfigError(f"model.encoder must be 'auto' or one of {', '.join(ENCODERS)}, got '{cfg.model.encoder}'")
    _positive("tracking.return_window", cfg.tracking.return_window)
    _at_least("eval.interval", cfg.eval.interval, 0, " (0 = off)")
    _at_least("eval.env_steps", cfg.eval.env_steps, 0, " (0 = off)")
    _positive("eval.episodes", cfg.eval.episodes)
    _at_least("eval.max_episode_steps", cfg.eval.max_episode_steps, 0, " (0 = no cut)")
    _positive("tracking.progress_interval_s", cfg.tracking.progress_interval_s)
    check_env_id(e.id)
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
