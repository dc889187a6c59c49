"""Policy evaluation (algorithm §14). Framework-free: no Lightning import.

Two protocols, same acting rule:

* **parallel** (:func:`evaluate_in_parallel`, the default of the trainer): one env per episode, the episodes side
  by side, one policy forward per env step for all episodes still running. The envs are built with
  :func:`episode_seeds` (episode 0 with the evaluation seed itself). The loop steps the gymnasium-level presets
  inside TorchRL's ``GymWrapper`` directly, with the conversions ``GymWrapper`` applies (float32 tensors in, one-hot
  actions as indices out): 4-5x the env steps/s of TorchRL's ``rollout`` for 10 episodes (docs/benchmarks.md).
* **sequential** (:func:`evaluate_policy`): the official code's protocol, one env playing the episodes one after
  another through TorchRL's ``rollout``. The paper comparisons use it.

With a batch-invariant policy both give the same return for the same seeded episode (tests/test_evaluation.py);
with MR.Q's networks a batched matrix product may round differently from a single-row one, so episodes can drift
apart after many steps (docs/benchmarks.md, "Evaluation").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from gymnasium import spaces
from tensordict import TensorDict
from torchrl.envs import EnvBase, GymWrapper
from torchrl.envs.utils import ExplorationType, set_exploration_type

from mrq_lightning.third_party import torchrl_wrapped_env

__all__ = ["episode_seeds", "evaluate_in_parallel", "evaluate_policy", "gym_action", "play_in_parallel",
           "policy_device", "policy_rng_fork", "steps_directly"]

FrameSink = Callable[[dict[str, np.ndarray]], None]


@torch.no_grad()
def evaluate_policy(
    env: EnvBase,
    policy,
    episodes: int = 10,
    exploration: ExplorationType = ExplorationType.DETERMINISTIC,
    max_steps: int = 1_000_000,
) -> list[float]:
    """Run ``episodes`` full episodes one after another on ``env`` and return their undiscounted returns.

    ``exploration`` selects the acting rule of :class:`~mrq_lightning.modules.builders.MRQActor`:
    ``DETERMINISTIC`` is MR.Q's evaluation rule (stochastic Gumbel sample for discrete actions, algorithm §16 Q10),
    ``MODE`` is greedy.

    The episodes draw from a copy of the torch RNG (CPU, and the policy's CUDA device): the caller's random stream
    is left as it was, so training does not depend on when, or whether, it evaluates.
    """
    with policy_rng_fork(policy), set_exploration_type(exploration):
        return _rollout_returns(env, policy, episodes, max_steps)


def _rollout_returns(env: EnvBase, policy, episodes: int, max_steps: int) -> list[float]:
    """``episodes`` episodes through TorchRL's ``rollout`` (no RNG fork: the caller holds one)."""
    returns = []
    for _ in range(episodes):
        rollout = env.rollout(max_steps, policy, break_when_any_done=True, auto_cast_to_device=True)
        returns.append(float(rollout.get(("next", "reward")).sum()))
    return returns


def episode_seeds(eval_seed: int, episodes: int) -> list[int]:
    """Seeds of the parallel protocol's envs: episode 0 uses ``eval_seed`` itself (so it is the sequential
    protocol's first episode), episode ``i > 0`` a seed hashed from ``(eval_seed, i)`` by numpy's ``SeedSequence``
    (31 bits: a collision with a training seed ``seed + 1000 * rank`` or another run's evaluation seeds is
    unlikely, unlike with ``eval_seed + i``)."""
    derived = (int(np.random.SeedSequence([eval_seed, i]).generate_state(1)[0]) % 2**31 for i in range(1, episodes))
    return [eval_seed, *derived][:episodes]


def evaluate_in_parallel(
    envs: Sequence[EnvBase], policy, exploration: ExplorationType = ExplorationType.DETERMINISTIC, max_steps: int = 1_000_000
) -> list[float]:
    """One episode on each env of ``envs``, side by side; returns the undiscounted return of each.

    ``envs`` are MR.Q presets (``make_env``: TorchRL ``GymWrapper``s of gymnasium-level envs); every step the
    running episodes' observations are stacked, the policy acts on all of them at once, and each env steps. Returns
    are float32 sums, as :func:`evaluate_policy` computes them. A TorchRL env that wraps no gymnasium env (your own
    ``EnvBase``) plays its episode through TorchRL's ``rollout`` instead. The torch RNG is forked as in
    :func:`evaluate_policy`. (:func:`play_in_parallel` also passes each frame's views to a sink, for videos.)
    """
    return play_in_parallel(envs, policy, exploration, max_steps)[0]


@torch.no_grad()
def play_in_parallel(
    envs: Sequence[EnvBase],
    policy,
    exploration: ExplorationType = ExplorationType.DETERMINISTIC,
    max_steps: int = 1_000_000,
    sinks: Sequence[FrameSink] | None = None,
) -> tuple[list[float], list[bool]]:
    """:func:`evaluate_in_parallel`, also saying of each episode whether it ended (``False``: cut at ``max_steps``).
    ``sinks[i]``, when given, receives env ``i``'s ``render_views()`` after the reset and after every step."""
    device = policy_device(policy)
    # Stepped directly: the presets (make_env: a GymWrapper around one of our gymnasium-level suite envs, which all
    # describe themselves with env_info). Anything else (transformed envs, your own EnvBase) goes through rollout.
    inner = [torchrl_wrapped_env(env) if steps_directly(env) else None for env in envs]
    lean = [i for i, base in enumerate(inner) if base is not None]
    discrete = {i: isinstance(inner[i].action_space, spaces.Discrete) for i in lean}
    returns: list[float] = [0.0] * len(envs)
    ended = [True] * len(envs)  # a rollout of your own env stops at done or max_steps; counted as ended
    rewards: dict[int, list[float]] = {i: [] for i in lean}
    with policy_rng_fork(policy), set_exploration_type(exploration):
        observations = {i: inner[i].reset()[0] for i in lean}
        if sinks is not None:
            for i in lean:
                sinks[i](inner[i].render_views())
        running = list(lean)
        for _ in range(max_steps):
            if not running:
                break
            batch = torch.from_numpy(np.stack([observations[i] for i in running])).to(device)
            actions = policy(TensorDict({"observation": batch}, batch_size=[len(running)], device=device))["action"]
            actions = actions.to("cpu")
            still_running = []
            for row, i in enumerate(running):
                env = inner[i]
                observations[i], reward, terminated, truncated, _ = env.step(gym_action(actions[row], discrete[i]))
                rewards[i].append(reward)
                if sinks is not None:
                    sinks[i](env.render_views())
                if not (terminated or truncated):
                    still_running.append(i)
            running = still_running
        for i in running:
            ended[i] = False
        # Your own TorchRL envs: their episodes one after another, inside the same RNG fork (each draws on).
        for i in sorted(set(range(len(envs))) - set(lean)):
            returns[i] = _rollout_returns(envs[i], policy, 1, max_steps)[0]
    for i in lean:
        # GymWrapper stores each reward as float32 [1]; rollout's return is their float32 sum: the same here.
        returns[i] = float(torch.tensor(rewards[i], dtype=torch.float32).reshape(-1, 1).sum())
    return returns, ended


def gym_action(action: torch.Tensor, discrete: bool) -> np.ndarray:
    """``GymWrapper``'s conversion of one CPU action for the gymnasium env: a one-hot action becomes its index, a Box
    action its float32 array."""
    return action.argmax().numpy() if discrete else action.numpy()


def steps_directly(env: EnvBase) -> bool:
    """Whether ``env`` is a preset whose gymnasium-level env can be stepped directly with ``GymWrapper``'s
    conversions: ``make_env``'s plain ``GymWrapper`` (one frame per step, one-hot or Box actions) around one of our
    suite envs (they describe themselves with ``env_info``)."""
    from torchrl.data import Bounded, OneHot

    if type(env) is not GymWrapper or getattr(env, "wrapper_frame_skip", 1) != 1:
        return False
    return callable(getattr(torchrl_wrapped_env(env), "env_info", None)) and isinstance(env.action_spec, (OneHot, Bounded))


def policy_device(policy) -> torch.device:
    """The device of the policy's first parameter (CPU for a parameter-free policy)."""
    parameters = policy.parameters() if hasattr(policy, "parameters") else ()
    return next((p.device for p in parameters), torch.device("cpu"))


def policy_rng_fork(policy):
    """A copy of the torch RNG (CPU, and the policy's CUDA device) for evaluation episodes: the caller's random
    stream is restored afterwards, so training does not depend on when, or whether, episodes are played."""
    device = policy_device(policy)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
