"""MR.Q networks as plain ``nn.Module`` s (algorithm §3).

Conventions (algorithm §3.1): a dense block is Linear -> non-affine LayerNorm -> activation; an MLP is two dense
blocks and a plain output Linear; every Linear/Conv2d weight is Xavier-uniform with gain sqrt(2) and every bias
is zero, output layers included.

Parameter counts (algorithm §3.10) are checked by the tests: 3,857,226 for HalfCheetah (obs 17, act 6) and 4,164,182
for Atari (4x84x84, 18 actions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mrq_lightning.hyperparameters import NETWORK

__all__ = [
    "init_weights",
    "DenseBlock",
    "MLP",
    "VectorStateEncoder",
    "PixelStateEncoder",
    "StateActionEncoder",
    "MDPHead",
    "Encoder",
    "TwinCritic",
    "Policy",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"elu": nn.ELU, "relu": nn.ReLU}


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform (gain sqrt(2)) weights and zero biases for every Linear/Conv2d (algorithm §3.1, D1)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight, gain=math.sqrt(2.0))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DenseBlock(nn.Sequential):
    """Linear -> LayerNorm (no learnable scale or shift, eps 1e-5) -> activation."""

    def __init__(self, in_dim: int, out_dim: int, activation: str = "elu") -> None:
        super().__init__(
            nn.Linear(in_dim, out_dim),
            nn.LayerNorm(out_dim, elementwise_affine=False),
            _ACTIVATIONS[activation](),
        )


class MLP(nn.Sequential):
    """``n_dense`` dense blocks followed by a plain Linear output layer (no norm, no activation)."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = NETWORK.hidden_dim, activation: str = "elu", n_dense: int = 2
    ) -> None:
        dims = [in_dim] + [hidden_dim] * n_dense
        layers: list[nn.Module] = [DenseBlock(a, b, activation) for a, b in zip(dims[:-1], dims[1:])]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)


class VectorStateEncoder(nn.Module):
    """f(s) for vector observations: MLP(obs_dim -> zs_dim) then LN + ELU (algorithm §3.2). No input normalisation."""

    def __init__(self, obs_dim: int, zs_dim: int = NETWORK.zs_dim, hidden_dim: int = NETWORK.hidden_dim) -> None:
        super().__init__()
        self.zs_dim = zs_dim
        self.mlp = MLP(obs_dim, zs_dim, hidden_dim, "elu")

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return F.elu(F.layer_norm(self.mlp(observation), (self.zs_dim,)))


class PixelStateEncoder(nn.Module):
    """f(s) for uint8 frame stacks ``[C, H, W]``: 4 convs (32 channels, ELU) then Linear -> LN -> ELU (algorithm §3.3).

    The input is scaled as ``x / 255 - 0.5``. The flattened size is computed from ``obs_shape`` (1568 at 84x84).
    """

    def __init__(self, obs_shape: Sequence[int], zs_dim: int = NETWORK.zs_dim, channels: int = 32) -> None:
        super().__init__()
        in_channels = int(obs_shape[0])
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=2), nn.ELU(),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ELU(),
            nn.Conv2d(channels, channels, 3, stride=2), nn.ELU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ELU(),
            nn.Flatten(),
        )  # fmt: skip
        with torch.no_grad():
            flat_dim = self.convs(torch.zeros(1, *obs_shape)).shape[-1]
        self.flat_dim = flat_dim
        self.projection = DenseBlock(flat_dim, zs_dim, "elu")

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        batch_shape = observation.shape[:-3]
        x = observation.reshape(-1, *observation.shape[-3:]).float() / 255.0 - 0.5
        return self.projection(self.convs(x)).reshape(*batch_shape, -1)


class StateActionEncoder(nn.Module):
    """g(zs, a): action embedding ELU(Linear(a -> za_dim)) (no norm, algorithm §3.4), then MLP(zs ++ za -> zsa_dim).

    ``zsa`` is the raw output of the last Linear (algorithm §3.5).
    """

    def __init__(
        self,
        action_dim: int,
        zs_dim: int = NETWORK.zs_dim,
        za_dim: int = NETWORK.za_dim,
        zsa_dim: int = NETWORK.zsa_dim,
        hidden_dim: int = NETWORK.hidden_dim,
    ) -> None:
        super().__init__()
        self.action_embedding = nn.Linear(action_dim, za_dim)
        self.mlp = MLP(zs_dim + za_dim, zsa_dim, hidden_dim, "elu")

    def forward(self, zs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        za = F.elu(self.action_embedding(action))
        return self.mlp(torch.cat([zs, za], dim=-1))


class MDPHead(nn.Module):
    """Linear MDP head m(zsa) -> (done, next zs, reward logits), split in that order (algorithm §3.6). All raw."""

    def __init__(
        self, zsa_dim: int = NETWORK.zsa_dim, zs_dim: int = NETWORK.zs_dim, num_bins: int = NETWORK.num_bins
    ) -> None:
        super().__init__()
        self.zs_dim = zs_dim
        self.linear = nn.Linear(zsa_dim, 1 + zs_dim + num_bins)

    def forward(self, zsa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.linear(zsa)
        return out[..., :1], out[..., 1 : 1 + self.zs_dim], out[..., 1 + self.zs_dim :]


class Encoder(nn.Module):
    """The whole model-based representation trained by the encoder loss: f, g (with action embedding) and m.

    Args:
        obs_shape: per-state observation shape: ``(obs_dim,)`` or ``(C * history, H, W)``.
        action_dim: continuous action dimension or number of discrete actions.
        pixels: use the convolutional state encoder.
    """

    def __init__(
        self,
        obs_shape: Sequence[int],
        action_dim: int,
        pixels: bool = False,
        zs_dim: int = NETWORK.zs_dim,
        za_dim: int = NETWORK.za_dim,
        zsa_dim: int = NETWORK.zsa_dim,
        hidden_dim: int = NETWORK.hidden_dim,
        num_bins: int = NETWORK.num_bins,
    ) -> None:
        super().__init__()
        if pixels:
            self.state_encoder: nn.Module = PixelStateEncoder(obs_shape, zs_dim)
        else:
            self.state_encoder = VectorStateEncoder(int(obs_shape[0]), zs_dim, hidden_dim)
        self.state_action_encoder = StateActionEncoder(action_dim, zs_dim, za_dim, zsa_dim, hidden_dim)
        self.mdp_head = MDPHead(zsa_dim, zs_dim, num_bins)
        self.apply(init_weights)

    def encode_state(self, observation: torch.Tensor) -> torch.Tensor:
        return self.state_encoder(observation)

    def encode_state_action(self, zs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.state_action_encoder(zs, action)

    def predict(self, zsa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.mdp_head(zsa)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.encode_state(observation)


class TwinCritic(nn.Module):
    """Two independent value MLPs on zsa (3 dense blocks + Linear(->1) each); output ``[..., 2]`` (algorithm §3.7)."""

    def __init__(
        self, zsa_dim: int = NETWORK.zsa_dim, hidden_dim: int = NETWORK.hidden_dim, num_critics: int = 2
    ) -> None:
        super().__init__()
        self.critics = nn.ModuleList(
            [MLP(zsa_dim, 1, hidden_dim, "elu", n_dense=3) for _ in range(num_critics)]
        )
        self.apply(init_weights)

    def forward(self, zsa: torch.Tensor) -> torch.Tensor:
        return torch.cat([critic(zsa) for critic in self.critics], dim=-1)


class Policy(nn.Module):
    """pi(zs): MLP with ReLU (algorithm §3.8). Returns ``(action, pre_activation)``.

    Continuous: ``tanh(u)``. Discrete: a soft Gumbel-softmax sample with temperature ``gumbel_tau`` (10), drawn
    afresh on every call (acting, target computation and the actor loss alike).
    """

    def __init__(
        self,
        action_dim: int,
        discrete: bool = False,
        zs_dim: int = NETWORK.zs_dim,
        hidden_dim: int = NETWORK.hidden_dim,
        gumbel_tau: float = NETWORK.gumbel_tau,
    ) -> None:
        super().__init__()
        self.discrete = discrete
        self.gumbel_tau = gumbel_tau
        self.mlp = MLP(zs_dim, action_dim, hidden_dim, "relu")
        self.apply(init_weights)

    def forward(self, zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre_activation = self.mlp(zs)
        if self.discrete:
            action = F.gumbel_softmax(pre_activation, tau=self.gumbel_tau, hard=False)
        else:
            action = torch.tanh(pre_activation)
        return action, pre_activation
