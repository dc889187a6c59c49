"""``Gym-<id>`` preset (algorithm §13.1): any gymnasium id with a Box observation space (vectors or images).

* ``gymnasium.make(id)`` with its registered defaults (the MuJoCo tasks keep their 1000-step ``TimeLimit``);
  no normalisation and no other gymnasium wrappers. Ids of your own package work as registered (import the package
  first) or in gymnasium's ``module:EnvId`` form, which imports ``module`` itself: ``Gym-my_pkg.envs:MyEnv-v0``.
* ``reset(seed=seed)`` once at construction, ``action_space.seed(seed)``; later resets are unseeded.
  A seeded ``reset(seed=s)`` (e.g. from ``EnvBase.set_seed``) re-seeds the same way and then resets
  unseeded, so it returns exactly the first observation of a fresh preset built with seed ``s``.
* Vector observations are flattened and cast to float32 (a fresh array per step: TorchRL wraps it without copying).
* Image observations (a uint8 Box spanning 0-255 of shape (H, W, C) or (C, H, W) with C in 1, 3, 4, or (H, W))
  are resized to 84x84
  (``cv2.INTER_AREA``, as for Atari), moved to channels-first, and the last 3 frames are stacked (as for DMC
  visual): the state is uint8 (3C, 84, 84), oldest frame first, and MR.Q's pixel encoder and augmentation apply.
* Other observation or action spaces (Dict, Tuple, MultiDiscrete, MultiBinary, unbounded Box actions) are refused
  with one line naming what is supported.
* Continuous actions: the agent acts in [-1, 1]. With symmetric uniform bounds (all MuJoCo tasks) the env
  receives ``a * max_action`` with ``max_action = high[0]`` exactly as the official code. Other Box bounds are
  mapped affinely ([-1, 1] -> [low, high], per dimension). ``EnvInfo.max_action`` is ``high[0]`` either way.
* Discrete actions pass through as an index; TorchRL exposes them as a one-hot ``action`` (``OneHot`` spec).

One thin wrapper class does all of this instead of chaining gymnasium's ``RescaleAction`` +
``DtypeObservation`` + ``FlattenObservation``: one Python layer per step instead of three.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from mrq_lightning.errors import EnvironmentNameError, EnvironmentSetupError

PIXEL_HISTORY = 3
IMAGE_SIZE = 84
VIDEO_SIZE = (240, 320)  # (height, width) asked of envs that render (evaluation videos)
SUPPORTED = ("observations: a Box of numbers (vector) or a uint8 0-255 Box image (H, W[, C]) or (C, H, W); "
             "actions: Discrete(n) or a bounded 1-D Box")  # fmt: skip

from .info import EnvInfo
from .state import gymnasium_state, set_gymnasium_state

__all__ = ["GymSuiteEnv"]


def _make_inner(env_id: str, render: bool = False) -> gym.Env:
    try:
        return _make_rendering(env_id) if render else gym.make(env_id)
    except gym.error.DependencyNotInstalled as err:  # the id exists; gymnasium's message names the package
        raise EnvironmentSetupError(f"Gym-{env_id}: {err}") from err
    except ImportError as err:  # the module of a `module:EnvId` id
        raise EnvironmentNameError(
            f"Gym-{env_id}: cannot import {env_id.partition(':')[0]!r} ({str(err).splitlines()[0]}). Install your package, or run "
            "from the folder that holds it (`python -m mrq_lightning` puts the current folder on the import path)."
        ) from err
    except gym.error.Error as err:  # NameNotFound / VersionNotFound / NamespaceNotFound
        names = _close_ids(env_id)
        hint = f" Close registered ids: {names}." if names else ""
        raise EnvironmentNameError(
            f"Gym-{env_id}: gymnasium cannot make {env_id!r} ({type(err).__name__}: {err}).{hint} "
            "MuJoCo tasks need `gymnasium[mujoco]`; ALE games are better used as Atari-<Game>-v5."
        ) from err


def _make_rendering(env_id: str) -> gym.Env:
    """The env with ``render_mode="rgb_array"`` (at VIDEO_SIZE where its constructor takes a size, as MuJoCo's do),
    or without rendering when its constructor refuses a render mode: videos then show the agent view only."""
    height, width = VIDEO_SIZE
    for kwargs in ({"render_mode": "rgb_array", "width": width, "height": height}, {"render_mode": "rgb_array"}):
        try:
            return gym.make(env_id, **kwargs)
        except TypeError:  # the constructor takes no such argument
            continue
    return gym.make(env_id)


def _close_ids(env_id: str) -> list[str]:
    import difflib

    return difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3)


class GymSuiteEnv(gym.Env):
    """A gymnasium env exposing float32 vector (or uint8 stacked-image) observations and [-1, 1] continuous actions."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        env_id: str,
        seed: int,
        *,
        render: bool = False,
        inner: gym.Env | None = None,
        max_episode_steps: int | None = None,
        **make_kwargs: Any,
    ) -> None:
        """``inner``: an env already built (the ``class_path`` form, envs/custom.py; ``env_id`` is then its name
        in messages) instead of ``gymnasium.make(env_id)``; ``max_episode_steps``: its time limit, when its spec
        has none."""
        if make_kwargs:
            raise TypeError(f"Gym-{env_id}: unexpected keyword arguments {sorted(make_kwargs)}")
        self.env_id = env_id
        self.label = f"Gym-{env_id}" if inner is None else env_id  # the name in messages
        self.env = inner if inner is not None else _make_inner(env_id, render)
        self._max_episode_steps = max_episode_steps
        try:
            self._set_observation_space(self.env.observation_space)
            self._set_action_space(self.env.action_space)
        except EnvironmentSetupError:
            self.env.close()
            raise
        self._seed(seed)

    def _refuse(self, what: str) -> EnvironmentSetupError:
        what = " ".join(what.split())  # large spaces print over several lines
        return EnvironmentSetupError(f"{self.label}: unsupported {what}. MR.Q supports {SUPPORTED}.")

    def _set_observation_space(self, space: spaces.Space) -> None:
        if not isinstance(space, spaces.Box):
            raise self._refuse(f"observation space {space}")
        self._frames: deque | None = None
        self._channels_first = False
        shape, ndim = space.shape, len(space.shape)
        # An image is a uint8 Box spanning 0-255 (gymnasium's own test), channels last or first; other uint8 Boxes
        # (a categorical grid, say) are numbers.
        image = space.dtype == np.uint8 and bool(np.all(space.low == 0)) and bool(np.all(space.high == 255))
        if image and ndim == 3 and shape[-1] not in (1, 3, 4) and shape[0] in (1, 3, 4):
            self._channels_first = True
        if image and (ndim == 2 or (ndim == 3 and (shape[-1] in (1, 3, 4) or self._channels_first))):
            channels = 1 if ndim == 2 else shape[0] if self._channels_first else shape[-1]
            self._frames = deque(maxlen=PIXEL_HISTORY)
            self.frame_channels = channels
            self.observation_space = spaces.Box(0, 255, (channels * PIXEL_HISTORY, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        else:
            obs_dim = int(np.prod(space.shape)) if space.shape else 1
            self.frame_channels = obs_dim
            self.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)

    def _set_action_space(self, act: spaces.Space) -> None:
        if isinstance(act, spaces.Discrete):
            if int(act.start) != 0:
                raise self._refuse(f"action space {act} (Discrete actions must start at 0)")
            self.discrete = True
            self.action_dim = int(act.n)
            self.max_action = 1.0
            self.action_space = spaces.Discrete(self.action_dim)
            self._scale = None
        elif isinstance(act, spaces.Box) and len(act.shape) == 1:
            low = np.asarray(act.low, dtype=np.float64)
            high = np.asarray(act.high, dtype=np.float64)
            if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
                raise self._refuse(f"action space {act} (unbounded)")
            self.discrete = False
            self.action_dim = int(act.shape[0])
            self.max_action = float(high[0])
            self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
            if np.all(low == -high) and np.all(high == high[0]):
                self._scale = ("mul", np.float32(high[0]), None)
            else:
                self._scale = ("affine", ((high - low) / 2.0).astype(act.dtype), ((high + low) / 2.0).astype(act.dtype))
        else:
            raise self._refuse(f"action space {act}")

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
        return self._obs(obs, first=True), info

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

    # ------------------------------------------------------------------ videos (README "Evaluation videos")
    @property
    def video_fps(self) -> float:
        return float(self.env.metadata.get("render_fps") or 30)

    def render_views(self) -> dict[str, np.ndarray]:
        """The agent's view (newest 84x84 frame) for image observations, and the env's own ``rgb_array`` render
        when it was built with ``render=True`` and can render. Empty when neither exists."""
        views = {}
        if self._frames:
            frame = self._frames[-1][: min(self.frame_channels, 3)].transpose(1, 2, 0)  # drop an alpha channel
            views["agent_view"] = np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame
        if self.env.render_mode == "rgb_array":
            image = self.env.render()
            if image is not None:
                views["render"] = np.array(image, dtype=np.uint8)  # a copy: a renderer may refill one buffer
        return views

    # ------------------------------------------------------------------ checkpoint/resume
    def get_state(self) -> dict | None:
        """Mid-episode state (MuJoCo or classic-control tasks; the frame stack of an image env), or ``None`` when
        this gymnasium env is not restorable (resume then starts a new episode: README, "Checkpoints and resume")."""
        state = gymnasium_state(self.env)
        if state is not None and self._frames is not None:
            state = {**state, "frames": torch.from_numpy(np.stack(self._frames)) if self._frames else None}
        return state

    def set_state(self, state: dict) -> None:
        set_gymnasium_state(self.env, state)
        if self._frames is not None:
            self._frames.clear()
            if state.get("frames") is not None:
                self._frames.extend(list(state["frames"].numpy().copy()))

    def _obs(self, obs, first: bool = False) -> np.ndarray:
        if self._frames is None:
            # astype always copies: every step hands TorchRL a fresh buffer.
            return np.asarray(obs).astype(np.float32).reshape(-1)
        frame = np.array(obs, dtype=np.uint8)  # a copy: an env may refill one buffer every step
        if self._channels_first:
            frame = frame.transpose(1, 2, 0)
        if frame.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
            frame = cv2.resize(frame, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
        frame = frame.reshape(IMAGE_SIZE, IMAGE_SIZE, -1).transpose(2, 0, 1)  # (C, 84, 84); cv2 drops C == 1
        if first:
            self._frames.extend([frame] * PIXEL_HISTORY)
        else:
            self._frames.append(frame)
        return np.concatenate(self._frames, axis=0)  # fresh contiguous (C * history, 84, 84), oldest first

    def env_info(self, name: str) -> EnvInfo:
        pixels = self._frames is not None
        return EnvInfo(
            name=name,
            obs_shape=tuple(self.observation_space.shape),
            action_dim=self.action_dim,
            discrete=self.discrete,
            pixels=pixels,
            history=PIXEL_HISTORY if pixels else 1,
            frame_channels=self.frame_channels,
            max_action=self.max_action,
            max_episode_steps=self.env.spec.max_episode_steps if self.env.spec is not None else self._max_episode_steps,
        )
