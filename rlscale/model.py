"""Actor-critic networks; the encoder is picked by name from the env's spec (or model.encoder).

Encoders (``ENCODERS``): ``nature_cnn`` (Mnih et al. 2015, for 84x84 uint8 frame stacks: a
shared trunk, then policy and value heads), ``minatar_cnn`` (Young & Tian 2019, for MinAtar's
[C, 10, 10] binary grids: one 3x3 convolution of 16 channels, a 128-unit layer, then the heads)
and ``mlp`` (separate policy and value MLPs on the
flattened observation). A family names its default in ``EnvSpec.encoder``; adding an encoder
is one builder function and one entry in ``ENCODERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from rlscale.envs.base import EnvSpec


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Module:
    # Orthogonal init as in the PPO implementation details (Huang et al. 2022).
    assert isinstance(layer.weight, torch.Tensor) and isinstance(layer.bias, torch.Tensor), "a layer with weight and bias"
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


# model.precision -> the dtype the network computes in under torch.autocast (None: float32)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


class Networks(NamedTuple):
    trunk: nn.Module  # observation -> features shared by both heads (may hold no parameters)
    actor: nn.Module  # features -> logits [N, A]
    critic: nn.Module  # features -> value [N, 1]


class FloatFlatten(nn.Module):
    """[N, *obs_shape] -> float [N, D]; no parameters."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.float().flatten(1)


class ScaledConvTrunk(nn.Sequential):
    """uint8 frames travel as bytes and are scaled to [0, 1] only here, on the device."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs.float() / 255.0)


class FloatConvTrunk(nn.Sequential):
    """Binary grids (uint8 0/1) are used as they are, as floats: no scaling."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs.float())


def mlp(spec: EnvSpec, hidden_sizes) -> Networks:
    d = int(np.prod(spec.obs_shape))

    def tower(out: int, std: float) -> nn.Sequential:
        layers: list[nn.Module] = []
        last = d
        for h in hidden_sizes:
            layers += [layer_init(nn.Linear(last, h)), nn.Tanh()]
            last = h
        return nn.Sequential(*layers, layer_init(nn.Linear(last, out), std=std))

    return Networks(FloatFlatten(), tower(spec.num_actions, 0.01), tower(1, 1.0))


def nature_cnn(spec: EnvSpec, hidden_sizes) -> Networks:
    c = spec.obs_shape[0]
    trunk = ScaledConvTrunk(
        layer_init(nn.Conv2d(c, 32, 8, stride=4)), nn.ReLU(),
        layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
        layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
        nn.Flatten(),
        layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU(),
    )
    # NHWC kernels: oneDNN's and cuDNN's fast layout; only the weights' memory layout changes.
    trunk.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format; torch's stub omits it
    return Networks(trunk, layer_init(nn.Linear(512, spec.num_actions), std=0.01), layer_init(nn.Linear(512, 1), std=1.0))


def minatar_cnn(spec: EnvSpec, hidden_sizes) -> Networks:
    """MinAtar's network (Young & Tian 2019): conv 3x3, 16 channels, stride 1, no padding, ReLU;
    a 128-unit ReLU layer; policy and value heads. model.hidden_sizes is not used."""
    c, h, w = spec.obs_shape
    trunk = FloatConvTrunk(
        layer_init(nn.Conv2d(c, 16, 3, stride=1)), nn.ReLU(),
        nn.Flatten(),
        layer_init(nn.Linear(16 * (h - 2) * (w - 2), 128)), nn.ReLU(),
    )
    return Networks(trunk, layer_init(nn.Linear(128, spec.num_actions), std=0.01), layer_init(nn.Linear(128, 1), std=1.0))


ENCODERS: dict[str, Callable[[EnvSpec, list[int]], Networks]] = {"mlp": mlp, "nature_cnn": nature_cnn, "minatar_cnn": minatar_cnn}


class ActorCritic(nn.Module):
    """Policy logits and state value; the encoder comes from the spec unless `encoder` names one.

    precision='bf16' runs the layers under torch.autocast in bfloat16 (weights, gradients,
    optimizer state and the outputs stay float32).
    """

    def __init__(self, spec: EnvSpec, hidden_sizes=(64, 64), precision: str = "fp32", encoder: str = "auto"):
        super().__init__()
        self.autocast_dtype = PRECISIONS[precision]
        self.spec = spec
        self.encoder = spec.encoder if encoder == "auto" else encoder
        self.trunk, self.actor, self.critic = ENCODERS[self.encoder](spec, list(hidden_sizes))
        # Image-shaped micro-batches are fed channels-last to match convolution kernels.
        self.channels_last = self.encoder == "nature_cnn"

    def _autocast(self, obs: torch.Tensor):
        return torch.autocast(obs.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [N, *obs_shape] -> (logits [N, A], value [N]), float32."""
        with self._autocast(obs):
            h = self.trunk(obs)
            logits, value = self.actor(h), self.critic(h).squeeze(-1)
        return logits.float(), value.float()

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        with self._autocast(obs):
            value = self.critic(self.trunk(obs)).squeeze(-1)
        return value.float()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator: torch.Generator | None = None):
        """Sample actions: returns (actions [N], log-probs [N], values [N])."""
        logits, value = self(obs)
        probs = torch.softmax(logits, dim=-1)
        actions = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        logp = Categorical(logits=logits).log_prob(actions)
        return actions, logp, value


def build_model(spec: EnvSpec, model_cfg) -> ActorCritic:
    return ActorCritic(spec, model_cfg.hidden_sizes, model_cfg.precision, model_cfg.encoder)
