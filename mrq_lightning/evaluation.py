"""Policy evaluation on a TorchRL environment (algorithm §14). Framework-free: no Lightning import."""

from __future__ import annotations

import torch
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

__all__ = ["evaluate_policy", "policy_device", "policy_rng_fork"]


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
    returns = []
    with policy_rng_fork(policy), set_exploration_type(exploration):
        for _ in range(episodes):
            rollout = env.rollout(max_steps, policy, break_when_any_done=True, auto_cast_to_device=True)
            returns.append(float(rollout.get(("next", "reward")).sum()))
    return returns


def policy_device(policy) -> torch.device:
    """The device of the policy's first parameter (CPU for a parameter-free policy)."""
    parameters = policy.parameters() if hasattr(policy, "parameters") else ()
    return next((p.device for p in parameters), torch.device("cpu"))


def policy_rng_fork(policy):
    """A copy of the torch RNG (CPU, and the policy's CUDA device) for evaluation episodes: the caller's random
    stream is restored afterwards, so training does not depend on when, or whether, episodes are played."""
    device = policy_device(policy)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
