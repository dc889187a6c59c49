"""The preset factories (algorithm §13): :func:`make_gymnasium_env` and :func:`make_env`.

Names are parsed by :mod:`.names` (forms ``Gym-<id>``, ``Dmc-[visual-]<domain>-<task>``, ``Atari-<Game>-v5``);
the static description is :class:`.info.EnvInfo`. The suite modules (and with them the simulators) are
imported lazily here, only for the suite a name asks for; they never import this module back.

Every suite is a small ``gymnasium.Env`` that already emits the agent state (float32 vector, or uint8 frame
stack for pixels), so one TorchRL code path (``GymWrapper``) serves all of them. ``make_gymnasium_env`` gives
that gymnasium-level env for hand-written step loops (≈10× less per-step overhead than TorchRL).

Seeding (algorithm §14). Each suite seeds itself at construction exactly as the official code does (Gym/Atari:
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

from typing import Any

from .info import EnvInfo
from .names import parse_env_name

__all__ = ["make_env", "make_gymnasium_env"]


def make_gymnasium_env(
    name: str,
    seed: int,
    *,
    evaluation: bool = False,
    official_quirks: bool = False,
    render: bool = False,
    **suite_kwargs: Any,
) -> tuple[Any, EnvInfo]:
    """Build the gymnasium-level preset (no TorchRL): returns ``(gymnasium.Env, EnvInfo)``.

    ``suite_kwargs`` go to the suite class (e.g. ``max_frames=400`` for Atari, ``max_steps`` for DMC).
    ``render=True`` builds a ``Gym-*`` env with ``render_mode="rgb_array"`` for videos (DMC and Atari always
    render on request); every suite's ``render_views()`` returns the frames a video shows.
    """
    if _is_custom(name):  # the class_path form (envs/custom.py)
        from .custom import make_custom_env

        return make_custom_env(_spec(name), seed, render=render, torchrl=False)
    parsed = parse_env_name(name)
    if parsed.suite == "gym":
        from . import gym_suite

        env = gym_suite.GymSuiteEnv(parsed.target[0], seed, render=render, **suite_kwargs)
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
    render: bool = False,
    **suite_kwargs: Any,
) -> tuple[Any, EnvInfo]:
    """Build a preset as a TorchRL env: returns ``(torchrl.envs.EnvBase, EnvInfo)``.

    Keys (docs/architecture.md, "Environment contract"): ``"observation"`` (float32 vector or uint8 frame
    stack), ``"action"`` (float32 in [-1, 1], or int64 one-hot), ``("next", "reward")`` float32 ``[1]``,
    ``("next", "terminated" | "truncated" | "done")`` bool ``[1]``.

    ``evaluation`` only matters for Atari (ε = 0.001 random actions); ``official_quirks=True`` applies that ε
    to the training env as well (quirk Q1). Use seed + 100 for the evaluation env (algorithm §14).
    """
    from torchrl.envs import GymWrapper

    if _is_custom(name):  # the class_path form (envs/custom.py)
        from .custom import make_custom_env

        return make_custom_env(_spec(name), seed, render=render, device=device)
    env, info = make_gymnasium_env(
        name, seed, evaluation=evaluation, official_quirks=official_quirks, render=render, **suite_kwargs
    )
    return GymWrapper(env, device=device), info


def _spec(env):
    """A :class:`~.custom.CustomEnvSpec` from one, or from the ``class_path`` mapping of a config."""
    from .custom import CustomEnvSpec, custom_env_spec

    return env if isinstance(env, CustomEnvSpec) else custom_env_spec(env)


def _is_custom(env) -> bool:
    from .custom import CustomEnvSpec

    return isinstance(env, (dict, CustomEnvSpec))
