"""Environment names (algorithm §13): the valid forms, :func:`parse_env_name` and the error they raise.

Names follow the official MR.Q forms:

* ``Gym-<gymnasium id>``          e.g. ``Gym-HalfCheetah-v4``, ``Gym-CartPole-v1``
* ``Dmc-<domain>-<task>``         e.g. ``Dmc-cartpole-balance``, ``Dmc-ball_in_cup-catch``
* ``Dmc-visual-<domain>-<task>``  e.g. ``Dmc-visual-walker-walk``
* ``Atari-<Game>-v5``             e.g. ``Atari-Pong-v5``

Syntax only: this module imports no simulator, no suite and not the registry (the suites import
:func:`invalid_env_name` from here to report unknown domains, tasks and games).
"""

from __future__ import annotations

import difflib
from typing import Any, NamedTuple

from mrq_lightning.errors import EnvironmentNameError

__all__ = ["VALID_FORMS", "ParsedName", "invalid_env_name", "parse_env_name"]

VALID_FORMS = (
    "Gym-<gymnasium id>          (e.g. Gym-HalfCheetah-v4, Gym-CartPole-v1)",
    "Dmc-<domain>-<task>         (e.g. Dmc-cartpole-balance, Dmc-ball_in_cup-catch)",
    "Dmc-visual-<domain>-<task>  (e.g. Dmc-visual-walker-walk)",
    "Atari-<Game>-v5             (e.g. Atari-Pong-v5)",
)


class ParsedName(NamedTuple):
    suite: str  # "gym" | "dmc" | "atari"
    target: tuple  # gym: (gymnasium_id,); dmc: (domain, task); atari: (game,)
    pixels: bool


def invalid_env_name(name: Any, why: str) -> EnvironmentNameError:
    """The error for a bad environment name: says ``why`` and lists the valid forms (the caller raises it)."""
    forms = "\n  ".join(VALID_FORMS)
    return EnvironmentNameError(f"Invalid environment name {name!r}: {why}.\nValid forms:\n  {forms}")


def parse_env_name(name: str) -> ParsedName:
    """Split an official-style name into its suite and target; syntax only (no simulator imports)."""
    if not isinstance(name, str) or not name:
        raise invalid_env_name(name, "expected a non-empty string")
    prefix, sep, rest = name.partition("-")
    if not sep or not rest:
        raise invalid_env_name(name, "missing '-' after the suite prefix")
    if prefix == "Gym":
        return ParsedName("gym", (rest,), False)
    if prefix == "Dmc":
        pixels = False
        if rest.startswith("visual-"):
            pixels, rest = True, rest[len("visual-"):]
        parts = rest.split("-")
        if len(parts) != 2 or not all(parts):
            raise invalid_env_name(name, "DMC names are Dmc-[visual-]<domain>-<task> (underscores inside names, "
                                         "e.g. Dmc-ball_in_cup-catch, Dmc-cartpole-balance_sparse)")
        return ParsedName("dmc", (parts[0], parts[1]), pixels)
    if prefix == "Atari":
        game, sep, version = rest.rpartition("-")
        if not sep or not game or version != "v5" or "-" in game or "/" in game:
            raise invalid_env_name(name, "Atari names are Atari-<Game>-v5 (ALE v5 only), e.g. Atari-Pong-v5")
        return ParsedName("atari", (game,), True)
    close = difflib.get_close_matches(prefix, ["Gym", "Dmc", "Atari"], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise invalid_env_name(name, f"unknown suite prefix {prefix!r}{hint}")
