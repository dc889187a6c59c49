"""``Gym-<id>`` preset (algorithm §13.1): any gymnasium id with a Box (vector) observation space.

* ``gymnasium.make(id)`` with its registered defaults (the MuJoCo tasks keep their 1000-step ``TimeLimit``);
  no normalisation and no other gymnasium wrappers.
* ``reset(seed=seed)`` once at construction, ``action_space.seed(seed)``; later resets are unseeded.
  A seeded ``reset(seed=s)`` (e.g. from ``EnvBase.set_seed``) re-seeds the same way and then resets
  unseeded, so it returns exactly the first observation of a fresh preset built with seed ``s``.
* Observations are flattened and cast to float32 (a fresh array per step: TorchRL wraps it without copying).
* Continuous actions: the agent acts in [-1, 1]. With symmetric uniform bounds (all MuJoCo tasks) the env
  receives ``a * max_action`` with ``max_action = high[0]`` exactly as the official code. Other Box bounds are
  mapped affinely ([-1, 1] -> [low, high], per dimension). ``EnvInfo.max_action`` is ``high[0]`` either way.
* Discrete actions pass through as an index; TorchRL exposes them as a one-hot ``action`` (``OneHot`` spec).

One thin wrapper class does all of this instead of chaining gymnasium's ``RescaleAction`` +
``DtypeObservation`` + ``FlattenObservation``: one Python layer per step instead of three.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mrq_lightning.errors import EnvironmentNameError, EnvironmentSetupError

from .info import EnvInfo
from .state import gymnasium_state, set_gymnasium_state

__all__ = ["GymSuiteEnv"]


def _make_inner(env_id: str) -> gym.Env:
    try:
        return gym.make(env_id)
    except gym.error.DependencyNotInstalled as err:  # the id exists; gymnasium's message names the package
        raise EnvironmentSetupError(f"Gym-{env_id}: {err}") from err
    except gym.error.Error as err:  # NameNotFound / VersionNotFound / NamespaceNotFound
        names = _close_ids(env_id)
        hint = f" Close registered ids: {names}." if names else ""
        raise EnvironmentNameError(
            f"Gym-{env_id}: gymnasium cannot make {env_id!r} ({type(err).__name__}: {err}).{hint} "
            "MuJoCo tasks need `gymnasium[mujoco]`; ALE games are better used as Atari-<Game>-v5."
        ) from err


def _close_ids(env_id: str) -> list[str]:
    import difflib

    return difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3)


class GymSuiteEnv(gym.Env):
    """A gymnasium env exposing float32 vector observations and [-1, 1] continuous actions."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env_id: str, seed: int, **make_kwargs: Any) -> None:
        if make_kwargs:
            raise TypeError(f"Gym-{env_id}: unexpected keyword arguments {sorted(make_kwargs)}")
        self.env_id = env_id
        self.env = _make_inner(env_id)
        inner_obs = self.env.observation_space
        if not isinstance(inner_obs, spaces.Box):
            self.env.close()
            raise ValueError(
                f"Gym-{env_id}: only Box (vector) observation spaces are supported, got {inner_obs}"
            )
        obs_dim = int(np.prod(inner_obs.shape)) if inner_obs.shape else 1
        self.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)

        act = self.env.action_space
        if isinstance(act, spaces.Discrete):
            if int(act.start) != 0:
                raise ValueError(f"Gym-{env_id}: Discrete action spaces must start at 0, got start={act.start}")
            self.discrete = True
            self.action_dim = int(act.n)
            self.max_action = 1.0
            self.action_space = spaces.Discrete(self.action_dim)
            self._scale = None
        elif isinstance(act, spaces.Box) and len(act.shape) == 1:
            low = np.asarray(act.low, dtype=np.float64)
            high = np.asarray(act.high, dtype=np.float64)
            if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
                raise ValueError(f"Gym-{env_id}: unbounded action space {act}")
            self.discrete = False
            self.action_dim = int(act.shape[0])
            self.max_action = float(high[0])
            self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
            if np.all(low == -high) and np.all(high == high[0]):
                self._scale = ("mul", np.float32(high[0]), None)
            else:
                self._scale = ("affine", ((high - low) / 2.0).astype(act.dtype), ((high + low) / 2.0).astype(act.dtype))
        else:
            self.env.close()
            raise ValueError(
                f"Gym-{env_id}: action space must be Discrete or a 1-D Box, got {act}"
            )
        self._seed(seed)

    # ------------------------------------------------------------------ gymnasium API
    def _seed(self, seed: int) -> None:
        self.action_space.seed(seed)
        self.env.action_space.seed(seed)
        self.env.reset(seed=seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        # reset(seed=s) == the first reset of a fresh preset built with seed s (seeded reset, then unseeded).
        if seed is not None:
            self._seed(seed)
        obs, info = self.env.reset(options=options)
        return self._obs(obs), info

    def step(self, action):
        scale = self._scale
        if scale is not None:
            action = np.asarray(action)
            if scale[0] == "mul":
                action = action * scale[1]
            else:
                action = action * scale[1] + scale[2]
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._obs(obs), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------------------ checkpoint/resume
    def get_state(self) -> dict | None:
        """Mid-episode state (MuJoCo or classic-control tasks), or ``None`` when this gymnasium env is not restorable."""
        return gymnasium_state(self.env)

    def set_state(self, state: dict) -> None:
        set_gymnasium_state(self.env, state)

    @staticmethod
    def _obs(obs) -> np.ndarray:
        # astype always copies: every step hands TorchRL a fresh buffer.
        return np.asarray(obs).astype(np.float32).reshape(-1)

    def env_info(self, name: str) -> EnvInfo:
        obs_dim = self.observation_space.shape[0]
        return EnvInfo(
            name=name,
            obs_shape=(obs_dim,),
            action_dim=self.action_dim,
            discrete=self.discrete,
            pixels=False,
            history=1,
            frame_channels=obs_dim,
            max_action=self.max_action,
            max_episode_steps=self.env.spec.max_episode_steps if self.env.spec is not None else None,
        )
