""":class:`EnvInfo`, the static description every preset returns next to its env (algorithm §13).

A plain dataclass with no imports from the suites or the registry, so that both can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EnvInfo"]


@dataclass(frozen=True)
class EnvInfo:
    """Static description of a preset.

    ``obs_shape`` is the agent state (the frame stack for pixels). ``frame_channels`` is the leading size of
    one stored frame, so ``obs_shape[0] == history * frame_channels`` always holds (vector obs: history 1 and
    ``frame_channels = obs_dim``; DMC visual: 3 × 3; Atari: 4 × 1). ``action_dim`` is the continuous action
    size or the number of discrete actions (one-hot width). ``max_action`` is the env's original bound
    (``action_space.high[0]``); the agent-facing actions are always in [-1, 1]. ``max_episode_steps`` counts
    agent steps (after action repeat), ``None`` when the env has no limit.
    """

    name: str
    obs_shape: tuple
    action_dim: int
    discrete: bool
    pixels: bool
    history: int
    frame_channels: int
    max_action: float
    max_episode_steps: int | None
