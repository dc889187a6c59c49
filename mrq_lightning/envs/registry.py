"""Environment names, :class:`EnvInfo` and the :func:`make_env` factory (spec §13).

Names follow the official MR.Q forms:

* ``Gym-<gymnasium id>``          e.g. ``Gym-HalfCheetah-v4``, ``Gym-CartPole-v1``
* ``Dmc-<domain>-<task>``         e.g. ``Dmc-cartpole-balance``, ``Dmc-ball_in_cup-catch``
* ``Dmc-visual-<domain>-<task>``  e.g. ``Dmc-visual-walker-walk``
* ``Atari-<Game>-v5``             e.g. ``Atari-Pong-v5``

Every suite is a small ``gymnasium.Env`` that already emits the agent state (float32 vector, or uint8 frame
stack for pixels), so one TorchRL code path (``GymWrapper``) serves all of them. ``make_gymnasium_env`` gives
that gymnasium-level env for hand-written step loops (≈10× less per-step overhead than TorchRL).

Seeding (spec §14). Each suite seeds itself at construction exactly as the official code does (Gym/Atari:
``reset(seed=seed)`` once plus ``action_space.seed(seed)``; DMC: ``suite.load(..., task_kwargs={'random': seed})``).
``GymWrapper`` does not reset at construction, and every later TorchRL ``reset()`` is unseeded, so the first
episode starts from an unseeded reset of an env seeded at construction, as in the official loop.
A seeded ``reset(seed=s)`` re-seeds everything as a construction with ``s`` would (Gym/Atari: emulator,
action space, ε stream; DMC: a fresh ``suite.load`` with ``random=s``) and then resets unseeded, so it
returns exactly the first observation a fresh ``make_env(name, s)`` returns. ``env.set_seed(s)`` (called by
``Collector.set_seed``) is TorchRL's ``reset(seed=s)`` under the hood: afterwards the env is in that first
episode, and the next ``reset()`` starts the second one. Prefer seeding through ``make_env(name, seed)``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, NamedTuple

from mrq_lightning.errors import EnvironmentNameError

__all__ = [
    "EnvInfo",
    "ParsedName",
    "VALID_FORMS",
    "parse_env_name",
    "make_gymnasium_env",
    "make_env",
]

VALID_FORMS = (
    "Gym-<gymnasium id>          (e.g. Gym-HalfCheetah-v4, Gym-CartPole-v1)",
    "Dmc-<domain>-<task>         (e.g. Dmc-cartpole-balance, Dmc-ball_in_cup-catch)",
    "Dmc-visual-<domain>-<task>  (e.g. Dmc-visual-walker-walk)",
    "Atari-<Game>-v5             (e.g. Atari-Pong-v5)",
)


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


class ParsedName(NamedTuple):
    suite: str  # "gym" | "dmc" | "atari"
    target: tuple  # gym: (gymnasium_id,); dmc: (domain, task); atari: (game,)
    pixels: bool


def _bad_name(name: Any, why: str) -> EnvironmentNameError:
    forms = "\n  ".join(VALID_FORMS)
    return EnvironmentNameError(f"Invalid environment name {name!r}: {why}.\nValid forms:\n  {forms}")


def parse_env_name(name: str) -> ParsedName:
    """Split an official-style name into its suite and target; syntax only (no simulator imports)."""
    if not isinstance(name, str) or not name:
        raise _bad_name(name, "expected a non-empty string")
    prefix, sep, rest = name.partition("-")
    if not sep or not rest:
        raise _bad_name(name, "missing '-' after the suite prefix")
    if prefix == "Gym":
        return ParsedName("gym", (rest,), False)
    if prefix == "Dmc":
        pixels = False
        if rest.startswith("visual-"):
            pixels, rest = True, rest[len("visual-"):]
        parts = rest.split("-")
        if len(parts) != 2 or not all(parts):
            raise _bad_name(name, "DMC names are Dmc-[visual-]<domain>-<task> (underscores inside names, "
                                  "e.g. Dmc-ball_in_cup-catch, Dmc-cartpole-balance_sparse)")
        return ParsedName("dmc", (parts[0], parts[1]), pixels)
    if prefix == "Atari":
        game, sep, version = rest.rpartition("-")
        if not sep or not game or version != "v5" or "-" in game or "/" in game:
            raise _bad_name(name, "Atari names are Atari-<Game>-v5 (ALE v5 only), e.g. Atari-Pong-v5")
        return ParsedName("atari", (game,), True)
    close = difflib.get_close_matches(prefix, ["Gym", "Dmc", "Atari"], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise _bad_name(name, f"unknown suite prefix {prefix!r}{hint}")


def make_gymnasium_env(
    name: str,
    seed: int,
    *,
    evaluation: bool = False,
    official_quirks: bool = False,
    **suite_kwargs: Any,
):
    """Build the gymnasium-level preset (no TorchRL): returns ``(gymnasium.Env, EnvInfo)``.

    ``suite_kwargs`` go to the suite class (e.g. ``max_frames=400`` for Atari, ``max_steps`` for DMC).
    """
    parsed = parse_env_name(name)
    if parsed.suite == "gym":
        from . import gym_suite

        env = gym_suite.GymSuiteEnv(parsed.target[0], seed, **suite_kwargs)
    elif parsed.suite == "dmc":
        from . import dmc_suite

        domain, task = parsed.target
        dmc_suite.check_task(domain, task, name)
        cls = dmc_suite.DMCVisualEnv if parsed.pixels else dmc_suite.DMCEnv
        env = cls(domain, task, seed, **suite_kwargs)
    else:
        from . import atari_suite

        # Quirk Q1: the official training env also applies ε (its eval flag is always truthy).
        eps = atari_suite.EVAL_EPSILON if (evaluation or official_quirks) else 0.0
        env = atari_suite.AtariEnv(parsed.target[0], seed, epsilon=eps, **suite_kwargs)
    return env, env.env_info(name)


def make_env(
    name: str,
    seed: int,
    *,
    evaluation: bool = False,
    official_quirks: bool = False,
    device: Any = "cpu",
    **suite_kwargs: Any,
):
    """Build a preset as a TorchRL env: returns ``(torchrl.envs.EnvBase, EnvInfo)``.

    Keys (docs/architecture.md, "Environment contract"): ``"observation"`` (float32 vector or uint8 frame
    stack), ``"action"`` (float32 in [-1, 1], or int64 one-hot), ``("next", "reward")`` float32 ``[1]``,
    ``("next", "terminated" | "truncated" | "done")`` bool ``[1]``.

    ``evaluation`` only matters for Atari (ε = 0.001 random actions); ``official_quirks=True`` applies that ε
    to the training env as well (quirk Q1). Use seed + 100 for the evaluation env (spec §14).
    """
    from torchrl.envs import GymWrapper

    env, info = make_gymnasium_env(
        name, seed, evaluation=evaluation, official_quirks=official_quirks, **suite_kwargs
    )
    return GymWrapper(env, device=device), info
