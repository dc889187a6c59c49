"""Your own environment class or factory as ``data.env`` (algorithm §13.1): the ``class_path`` form.

In YAML (or ``--data.env '{"class_path": ..., "init_args": {...}}'``)::

    data:
      init_args:
        env:
          class_path: my_pkg.envs.MyEnv        # a gymnasium.Env class, or a function returning one
          init_args: {size: 8}                 # its keyword arguments
          max_episode_steps: 200               # optional: gymnasium TimeLimit (truncation, not termination)

``class_path`` may also name a function (or class) that returns a TorchRL ``EnvBase``; it is used as it is, so it
must already speak MR.Q's contract (docs/architecture.md, "Environment contract"): ``"observation"`` float32 (d,)
or uint8 (C, 84, 84), ``"action"`` one-hot or bounded in [-1, 1], ``reward``/``terminated``/``truncated``. It is
seeded with ``env.set_seed(seed)``; a TorchRL env has no state API, so a resumed run starts a new episode there.

A gymnasium class or factory gets exactly the handling of ``Gym-<id>`` (:class:`~.gym_suite.GymSuiteEnv`: vector or
image observations, action scaling, seeding, videos with ``render_mode="rgb_array"`` where the class takes it).
The run's name (logs, checkpoints, the resume check) is ``Custom-<class_path>`` with the init args.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from mrq_lightning.errors import EnvironmentNameError, EnvironmentSetupError

from .info import EnvInfo

__all__ = ["CustomEnvSpec", "custom_env_spec", "make_custom_env"]

_KEYS = ("class_path", "init_args", "max_episode_steps")
_CONTRACT = ('MR.Q needs "observation" float32 (d,) or uint8 (C, 84, 84), "action" one-hot or bounded in [-1, 1], '
             'and ("next", "reward" | "terminated" | "truncated")')  # fmt: skip


@dataclass(frozen=True)
class CustomEnvSpec:
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None

    @property
    def name(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.init_args.items()))
        limit = f", max_episode_steps={self.max_episode_steps}" if self.max_episode_steps else ""
        return f"Custom-{self.class_path}({args}{limit})" if args or limit else f"Custom-{self.class_path}"

    def target(self):
        module_name, _, attribute = self.class_path.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError) as err:
            raise EnvironmentNameError(
                f"data.env class_path {self.class_path!r} cannot be imported ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else err}). Fix: a dotted path module.Name of an installed "
                "package, or of a module in the current folder."
            ) from err


def custom_env_spec(env: dict[str, Any]) -> CustomEnvSpec:
    """Check the ``class_path`` form (keys, types, that the target imports and is callable) before any env starts."""
    unknown = sorted(set(env) - set(_KEYS))
    if unknown or not isinstance(env.get("class_path"), str) or "." not in env.get("class_path", ""):
        raise EnvironmentNameError(
            f"data.env as a mapping takes class_path (module.Name), init_args (a mapping) and max_episode_steps; got "
            f"{dict(env)!r}. Fix: e.g. {{class_path: my_pkg.envs.MyEnv, init_args: {{size: 8}}}}, or a name such as "
            "Gym-my_pkg.envs:MyEnv-v0."
        )
    init_args = env.get("init_args") or {}
    limit = env.get("max_episode_steps")
    if not isinstance(init_args, dict) or (limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                                                   or limit < 1)):  # fmt: skip
        raise EnvironmentNameError(
            f"data.env: init_args must be a mapping and max_episode_steps a positive integer; got init_args="
            f"{init_args!r}, max_episode_steps={limit!r}"
        )
    spec = CustomEnvSpec(env["class_path"], dict(init_args), limit)
    if not callable(spec.target()):
        raise EnvironmentNameError(f"data.env class_path {spec.class_path!r} is not a class or function")
    return spec


def _gymnasium_inner(spec: CustomEnvSpec, render: bool):
    """Build the user's gymnasium env (``render_mode="rgb_array"`` first when rendering, if the target takes it)."""
    import gymnasium as gym

    target = spec.target()
    env = None
    if render:
        try:
            env = target(**spec.init_args, render_mode="rgb_array")
        except TypeError:  # it takes no render_mode (another TypeError shows again just below)
            env = None
    if env is None:
        env = target(**spec.init_args)
    if isinstance(env, gym.Env) and spec.max_episode_steps:
        env = gym.wrappers.TimeLimit(env, max_episode_steps=spec.max_episode_steps)
    return env


def make_custom_env(spec: CustomEnvSpec, seed: int, *, render: bool = False, device: Any = "cpu", torchrl: bool = True):
    """``(env, EnvInfo)`` for the ``class_path`` form; see the module docstring. The env is a TorchRL ``EnvBase``, or
    with ``torchrl=False`` the gymnasium-level :class:`~.gym_suite.GymSuiteEnv` (refused for a TorchRL target)."""
    import gymnasium as gym
    from torchrl.envs import EnvBase, GymWrapper

    from .gym_suite import GymSuiteEnv

    built = _gymnasium_inner(spec, render)
    if isinstance(built, gym.Env):
        env = GymSuiteEnv(spec.name, seed, inner=built, max_episode_steps=spec.max_episode_steps)
        return (GymWrapper(env, device=device) if torchrl else env), env.env_info(spec.name)
    if isinstance(built, EnvBase):
        try:
            if not torchrl:
                raise EnvironmentSetupError(f"{spec.name} is a TorchRL env: build it with make_env, not make_gymnasium_env")
            info = _torchrl_env_info(spec, built)
        except EnvironmentSetupError:
            built.close()
            raise
        if spec.max_episode_steps:
            from torchrl.envs import StepCounter, TransformedEnv

            built = TransformedEnv(built, StepCounter(max_steps=spec.max_episode_steps))  # sets truncated
        built.set_seed(seed)
        return built.to(device), info
    raise EnvironmentSetupError(
        f"data.env class_path {spec.class_path!r} returned a {type(built).__name__}, not a gymnasium.Env or a TorchRL "
        "EnvBase. Fix: point class_path at a gymnasium.Env class or a function returning one of the two."
    )


def _torchrl_env_info(spec: CustomEnvSpec, env) -> EnvInfo:
    """Check a TorchRL env against MR.Q's contract and describe it (one line naming what is missing)."""
    import torch
    from torchrl.data import Bounded, OneHot

    def refuse(what: str) -> EnvironmentSetupError:
        return EnvironmentSetupError(f"{spec.name}: {what}. {_CONTRACT} (TorchRL transforms can adapt the env).")

    observation = env.observation_spec.get("observation", None)
    action = env.full_action_spec.get("action", None)
    done_keys = set(env.full_done_spec.keys())
    if observation is None or action is None or not {"terminated", "truncated"} <= done_keys or env.batch_size:
        raise refuse(f"observation keys {list(env.observation_spec.keys())}, action keys "
                     f"{list(env.full_action_spec.keys())}, done keys {sorted(done_keys)}, batch size "
                     f"{tuple(env.batch_size)} (a single, unbatched env)")  # fmt: skip
    shape = tuple(observation.shape)
    pixels = observation.dtype == torch.uint8 and len(shape) == 3 and shape[1:] == (84, 84)
    if not pixels and not (observation.dtype == torch.float32 and len(shape) == 1):
        raise refuse(f"observation {observation.dtype} {shape}")
    if isinstance(action, OneHot):
        discrete, action_dim = True, int(action.shape[-1])
    elif isinstance(action, Bounded) and len(action.shape) == 1 and bool((action.space.low == -1).all()) and bool(
        (action.space.high == 1).all()
    ):
        discrete, action_dim = False, int(action.shape[0])
    else:
        bounds = f" in [{action.space.low.min().item():g}, {action.space.high.max().item():g}]" if isinstance(
            action, Bounded) else ""  # fmt: skip
        raise refuse(f"action spec {type(action).__name__} {tuple(action.shape)}{bounds}")
    return EnvInfo(
        name=spec.name, obs_shape=shape, action_dim=action_dim, discrete=discrete, pixels=pixels, history=1,
        frame_channels=shape[0], max_action=1.0, max_episode_steps=spec.max_episode_steps,
    )  # fmt: skip
