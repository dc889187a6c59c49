"""Policy evaluation on a TorchRL environment (algorithm §14). Framework-free: no Lightning import."""

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
    ``DETERMINISTIC`` is MR.Q's evaluation rule (stochastic Gumbel sample for discrete actions, algorithm §16 Q10),
    ``MODE`` is greedy.

    The episodes draw from a copy of the torch RNG (CPU, and the policy's CUDA device): the caller's random stream
    is left as it was, so training does not depend on when, or whether, it evaluates.
    """
    parameters = policy.parameters() if hasattr(policy, "parameters") else ()
    cuda = next((p.device for p in parameters if p.device.type == "cuda"), None)
    returns = []
    with torch.random.fork_rng(devices=[cuda] if cuda is not None else []), set_exploration_type(exploration):
        for _ in range(episodes):
            rollout = env.rollout(max_steps, policy, break_when_any_done=True, auto_cast_to_device=True)
            returns.append(float(rollout.get(("next", "reward")).sum()))
    return returns
