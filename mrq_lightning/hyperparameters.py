"""MR.Q's hyperparameters, declared once (algorithm §2.1), grouped by the component that uses them.

Every component still takes explicit, typed keyword arguments; their defaults are read from the frozen instances
below (``NETWORK.hidden_dim``, ``UPDATE.batch_size`` ...), so a paper value is written in exactly one place:

=========================  ===========================================================================
group                      used by
=========================  ===========================================================================
:class:`NetworkHParams`    :func:`~mrq_lightning.modules.builders.make_mrq_networks` and the networks
:class:`LossHParams`       :class:`~mrq_lightning.objectives.mrq_loss.MRQLoss`
:class:`UpdateHParams`     :class:`~mrq_lightning.agent.MRQUpdater` (optimizers, schedule, clipping)
:class:`ActingHParams`     :class:`~mrq_lightning.modules.builders.MRQActor`
:class:`ReplayHParams`     :class:`~mrq_lightning.data.MRQReplayBuffer` and the warm-up rule
=========================  ===========================================================================

Constructing a group validates it: a value outside its range raises :class:`ConfigurationError` with one line
that names the option and what it accepts, before any environment starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from mrq_lightning.errors import ConfigurationError

__all__ = [
    "NetworkHParams",
    "LossHParams",
    "UpdateHParams",
    "ActingHParams",
    "ReplayHParams",
    "MODEL_GROUPS",
    "NETWORK",
    "LOSS",
    "UPDATE",
    "ACTING",
    "REPLAY",
    "pick",
    "replay_settings",
]

_G = TypeVar("_G")


def _require(ok: bool, name: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigurationError(f"MR.Q hyperparameter {name}={value!r} is invalid: it must be {accepted}")


def is_int(value: Any) -> bool:
    """An integer, not a bool (YAML's ``true`` must not pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return is_int(value) and value >= 1


class _Group:
    """Validation shared by the groups: ints are >= 1, floats finite and >= 0 unless a field says otherwise."""

    _positive: tuple[str, ...] = ()  # floats that must be > 0
    _at_most_one: tuple[str, ...] = ()  # floats in [0, 1]

    def __post_init__(self) -> None:
        for field in fields(self):  # type: ignore[arg-type]
            name, value = field.name, getattr(self, field.name)
            if field.type in ("int", int):
                _require(_positive_int(value), name, value, "an integer >= 1")
            elif field.type in ("float", float):
                if name in self._positive:
                    _require(is_finite_number(value) and value > 0, name, value, "a finite number > 0")
                else:
                    _require(is_finite_number(value) and value >= 0, name, value, "a finite number >= 0")
                if name in self._at_most_one:
                    _require(value <= 1, name, value, "in [0, 1]")


@dataclass(frozen=True)
class NetworkHParams(_Group):
    """Architecture (algorithm §3): embedding sizes, hidden width, reward bins, Gumbel-softmax temperature."""

    zs_dim: int = 512
    za_dim: int = 256
    zsa_dim: int = 512
    hidden_dim: int = 512
    num_bins: int = 65
    gumbel_tau: float = 10.0
    _positive = ("gumbel_tau",)

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.num_bins >= 2, "num_bins", self.num_bins, "an integer >= 2 (two-hot needs two bins)")


@dataclass(frozen=True)
class LossHParams(_Group):
    """Encoder, value and policy objectives (algorithm §5-§8). Discrete actions halve the two TD3 noises."""

    gamma: float = 0.99
    dynamics_weight: float = 1.0
    reward_weight: float = 0.1
    terminal_weight: float = 0.1
    target_policy_noise: float = 0.2
    target_noise_clip: float = 0.3
    pre_activation_weight: float = 1e-5
    lap_alpha: float = 0.4
    min_priority: float = 1.0
    _positive = ("lap_alpha", "min_priority")
    _at_most_one = ("gamma",)


@dataclass(frozen=True)
class UpdateHParams(_Group):
    """The update schedule and its optimizers (algorithm §3.9, §9): batches, horizons, AdamW, clipping."""

    batch_size: int = 256
    target_update_period: int = 250
    encoder_horizon: int = 5
    value_horizon: int = 3
    encoder_lr: float = 1e-4
    value_lr: float = 3e-4
    policy_lr: float = 3e-4
    weight_decay: float = 1e-4
    value_grad_clip: float = 20.0
    _positive = ("value_grad_clip", "encoder_lr", "value_lr", "policy_lr")


@dataclass(frozen=True)
class ActingHParams(_Group):
    """Exploration while training (algorithm §10); halved for discrete actions."""

    exploration_noise: float = 0.2


@dataclass(frozen=True)
class ReplayHParams(_Group):
    """Replay capacity, random warm-up (algorithm §2.1, §9) and pixel augmentation (algorithm §12)."""

    capacity: int = 1_000_000
    random_steps: int = 10_000
    pixel_augmentation: bool = True

    def __post_init__(self) -> None:
        _require(_positive_int(self.capacity), "capacity", self.capacity, "an integer >= 1")
        _require(isinstance(self.random_steps, int) and not isinstance(self.random_steps, bool)
                 and self.random_steps >= 0, "random_steps", self.random_steps, "an integer >= 0")  # fmt: skip
        _require(isinstance(self.pixel_augmentation, bool), "pixel_augmentation", self.pixel_augmentation,
                 "true or false")  # fmt: skip


NETWORK = NetworkHParams()
LOSS = LossHParams()
UPDATE = UpdateHParams()
ACTING = ActingHParams()
REPLAY = ReplayHParams()

# The groups the agent (``MRQ`` LightningModule, or a plain loop) is configured with.
MODEL_GROUPS = (NetworkHParams, LossHParams, UpdateHParams, ActingHParams)


def pick(group: type[_G], values: Any) -> _G:
    """Build ``group`` from the matching entries of a flat mapping (e.g. ``MRQ.hparams``); validates them."""
    return group(**{f.name: values[f.name] for f in fields(group) if f.name in values})  # type: ignore[arg-type]


def replay_settings(
    encoder_horizon: int = UPDATE.encoder_horizon,
    value_horizon: int = UPDATE.value_horizon,
    lap_alpha: float = LOSS.lap_alpha,
    min_priority: float = LOSS.min_priority,
) -> dict[str, Any]:
    """The replay-buffer arguments an MR.Q update needs (algorithm §8, §11): the window ``horizon`` (the longer
    of the encoder and value horizons), the LAP ``alpha`` and ``min_priority``."""
    return {"horizon": max(int(encoder_horizon), int(value_horizon)), "alpha": lap_alpha, "min_priority": min_priority}
