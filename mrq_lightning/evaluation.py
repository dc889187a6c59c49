"""Policy evaluation on a TorchRL environment (spec §14). Framework-free: no Lightning import."""

from __future__ import annotations

import torch
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

__all__ = ["evaluate_policy"]


@torch.no_grad()
def evaluate_policy(
    env: EnvBase,
    policy,
    episodes: int = 10,
    exploration: ExplorationType = ExplorationType.DETERMINISTIC,
    max_steps: int = 1_000_000,
) -> list[float]:
    """Run ``episodes`` full episodes and return their undiscounted returns.

    ``exploration`` selects the acting rule of :class:`~mrq_lightning.modules.builders.MRQActor`:
    ``DETERMINISTIC`` is MR.Q's evaluation rule (stochastic Gumbel sample for discrete actions, spec §16 Q10),
    ``MODE`` is greedy.
    """
    returns = []
    with set_exploration_type(exploration):
        for _ in range(episodes):
            rollout = env.rollout(max_steps, policy, break_when_any_done=True, auto_cast_to_device=True)
            returns.append(float(rollout.get(("next", "reward")).sum()))
    return returns
