"""When MR.Q acts at random and when it starts learning (algorithm §9 steps 2 and 4, §16 Q9).

Default: the first ``random_steps`` environment steps act uniformly at random; learning starts after env step
``random_steps`` (the policy acts at env step ``random_steps + 1`` and its update follows it).

``official_quirks`` (Q9): the official code counts replay *slots*, final-observation slots included: it acts at
random while the buffer holds fewer than ``random_steps`` slots and trains once it holds more than
``random_steps``. With short episodes learning therefore starts earlier (every episode end adds one slot), and at
exactly ``random_steps`` slots the untrained policy acts once without an update.
"""

from __future__ import annotations

from dataclasses import dataclass

from mrq_lightning.hyperparameters import REPLAY

__all__ = ["Warmup"]


@dataclass(frozen=True)
class Warmup:
    """The random-phase and learning-start rule.

    Args:
        random_steps: length of the random phase (env steps; replay slots under ``official_quirks``).
        official_quirks: count replay slots as the official code does (Q9).
    """

    random_steps: int = REPLAY.random_steps
    official_quirks: bool = False

    def _progress(self, env_steps: int, buffer_slots: int) -> int:
        return buffer_slots if self.official_quirks else env_steps

    def acts_randomly(self, env_steps: int, buffer_slots: int) -> bool:
        """Whether the next action is uniform random, given the env steps taken and the slots filled so far."""
        return self._progress(env_steps, buffer_slots) < self.random_steps

    def learns(self, env_steps: int, buffer_slots: int) -> bool:
        """Whether to update after storing env step ``env_steps`` (``buffer_slots`` counted after storing it)."""
        return self._progress(env_steps, buffer_slots) > self.random_steps
