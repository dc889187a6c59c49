"""TorchRL-facing builders: the acting policy and TensorDictModules with a documented key table.

=====================  ===================================  ==============================================
module                 in_keys                              out_keys
=====================  ===================================  ==============================================
state encoder          ``observation``                      ``state_embedding``
state-action encoder   ``state_embedding``, ``action``      ``state_action_embedding``
MDP head               ``state_action_embedding``           ``pred_terminal``, ``pred_next_state_embedding``,
                                                            ``pred_reward_logits``
twin critic            ``state_action_embedding``           ``state_action_value`` (last dim 2)
policy                 ``state_embedding``                  ``action``, ``pre_activation``
acting policy          ``observation``                      ``action`` (explores under ExplorationType.RANDOM)
=====================  ===================================  ==============================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs.utils import ExplorationType, exploration_type

from mrq_lightning.hyperparameters import ACTING, NETWORK, NetworkHParams
from mrq_lightning.modules.networks import Encoder, Policy, TwinCritic

__all__ = ["MRQActor", "MRQNetworks", "make_acting_policy", "make_mrq_networks", "make_tensordict_modules"]


@dataclass
class MRQNetworks:
    """The three online networks of MR.Q."""

    encoder: Encoder
    critic: TwinCritic
    policy: Policy


def make_mrq_networks(
    obs_shape: Sequence[int],
    action_dim: int,
    *,
    discrete: bool = False,
    pixels: bool = False,
    zs_dim: int = NETWORK.zs_dim,
    za_dim: int = NETWORK.za_dim,
    zsa_dim: int = NETWORK.zsa_dim,
    hidden_dim: int = NETWORK.hidden_dim,
    num_bins: int = NETWORK.num_bins,
    gumbel_tau: float = NETWORK.gumbel_tau,
) -> MRQNetworks:
    """Build encoder, twin critic and policy with the paper's sizes by default (algorithm §3)."""
    NetworkHParams(zs_dim=zs_dim, za_dim=za_dim, zsa_dim=zsa_dim, hidden_dim=hidden_dim, num_bins=num_bins,
                   gumbel_tau=gumbel_tau)  # fmt: skip  (validates every value)
    return MRQNetworks(
        encoder=Encoder(obs_shape, action_dim, pixels, zs_dim, za_dim, zsa_dim, hidden_dim, num_bins),
        critic=TwinCritic(zsa_dim, hidden_dim),
        policy=Policy(action_dim, discrete, zs_dim, hidden_dim, gumbel_tau),
    )


class MRQActor(nn.Module):
    """Acting rule of algorithm §10 on top of the online encoder and policy (no gradient).

    The behaviour follows TorchRL's exploration type, so collectors and ``set_exploration_type`` just work:

    * ``RANDOM`` (collector default) or unset: exploration. Continuous ``clip(tanh(u) + N(0, sigma^2), -1, 1)``;
      discrete ``one_hot(argmax(GumbelSoftmax(u) + N(0, (sigma/2)^2)))``.
    * ``DETERMINISTIC``: MR.Q's evaluation rule. Continuous ``tanh(u)``; discrete ``one_hot(argmax(GumbelSoftmax(u)))``
      which is a *sample* from softmax(u), as in the official code (algorithm §16 Q10).
    * ``MODE`` / ``MEAN`` / ``MEDIAN``: greedy. Discrete ``one_hot(argmax(u))``; continuous as DETERMINISTIC.

    Actions are in the agent's normalised space ([-1, 1], or one-hot); presets rescale to the env's bounds.
    """

    def __init__(self, encoder: Encoder, policy: Policy, exploration_noise: float = ACTING.exploration_noise) -> None:
        super().__init__()
        self.encoder = encoder
        self.policy = policy
        self.exploration_noise = exploration_noise * (0.5 if policy.discrete else 1.0)

    @torch.no_grad()
    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        mode = exploration_type()
        explore = mode is None or mode == ExplorationType.RANDOM
        zs = self.encoder.encode_state(observation)
        pre_activation = self.policy.mlp(zs)
        if self.policy.discrete:
            if mode in (ExplorationType.MODE, ExplorationType.MEAN, ExplorationType.MEDIAN):
                scores = pre_activation
            else:
                scores = F.gumbel_softmax(pre_activation, tau=self.policy.gumbel_tau, hard=False)
                if explore:
                    scores = scores + torch.randn_like(scores) * self.exploration_noise
            return F.one_hot(scores.argmax(-1), scores.shape[-1]).to(torch.float32)
        action = torch.tanh(pre_activation)
        if explore:
            action = (action + torch.randn_like(action) * self.exploration_noise).clamp(-1.0, 1.0)
        return action.float()


def make_acting_policy(networks: MRQNetworks, exploration_noise: float = ACTING.exploration_noise) -> TensorDictModule:
    """The acting rule of algorithm §10 as a TensorDictModule: ``"observation"`` -> ``"action"`` (explores under
    TorchRL's default exploration type, evaluates under ``DETERMINISTIC``); what collectors and evaluation use."""
    return TensorDictModule(MRQActor(networks.encoder, networks.policy, exploration_noise), ["observation"], ["action"])


def make_tensordict_modules(
    networks: MRQNetworks, exploration_noise: float = ACTING.exploration_noise
) -> dict[str, TensorDictModule]:
    """Wrap the networks as TensorDictModules following the key table in this module's docstring."""
    enc = networks.encoder
    return {
        "state_encoder": TensorDictModule(enc.state_encoder, ["observation"], ["state_embedding"]),
        "state_action_encoder": TensorDictModule(
            enc.state_action_encoder, ["state_embedding", "action"], ["state_action_embedding"]
        ),
        "mdp_head": TensorDictModule(
            enc.mdp_head,
            ["state_action_embedding"],
            ["pred_terminal", "pred_next_state_embedding", "pred_reward_logits"],
        ),
        "critic": TensorDictModule(networks.critic, ["state_action_embedding"], ["state_action_value"]),
        "policy": TensorDictModule(networks.policy, ["state_embedding"], ["action", "pre_activation"]),
        "acting_policy": make_acting_policy(networks, exploration_noise),
    }
