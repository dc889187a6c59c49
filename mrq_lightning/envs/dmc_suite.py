"""``Dmc-<domain>-<task>`` and ``Dmc-visual-<domain>-<task>`` presets (algorithm §13.2, §13.3).

Both are small ``gymnasium.Env`` classes over a dm_control suite env (TorchRL's ``DMControlEnv`` is not
used: it cannot render at 84×84 (``render_kwargs`` TypeError), its pixel wrapper renders on every physics
sub-step, and it refuses ``action_scale.Wrapper``).

* ``suite.load(domain, task, task_kwargs={'random': seed})``. Actions are exposed in [-1, 1]; envs whose
  bounds differ (quadruped: [-1, 1.1] / [-0.8, 0.8]) get dm_control's ``action_scale.Wrapper(-1, 1)``, the
  others (already ±1) are stepped directly, which is the same map. max_action = 1.
* Action repeat 2: the action (float32) is applied twice and the two rewards are summed.
* Never terminated. Truncated after exactly ``max_steps`` = 500 agent steps (1000 physics steps, which is also
  where every suite task's own time limit ends; that ``last()`` is honoured too).
* Proprio observation: every entry of the observation dict flattened, in dict order, concatenated, float32.
* Visual observation: ``physics.render(84, 84, camera_id)`` once per agent step (after both sub-steps), camera 2
  for quadruped and 0 otherwise, HWC uint8 -> 3×84×84; the state is the last 3 frames, oldest first, 9×84×84
  uint8; at reset the first frame fills all 3 slots.
* ``MUJOCO_GL`` defaults to ``egl`` (set before dm_control is imported); a missing GL backend raises a
  ``RuntimeError`` that names the fix.
* A seeded ``reset(seed=s)`` (e.g. ``EnvBase.set_seed``) rebuilds the dm_control env with ``random=s``,
  i.e. exactly the env a construction with ``seed=s`` gives; plain resets are unseeded.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from mrq_lightning.errors import EnvironmentSetupError
from mrq_lightning.third_party import dmc_step_counters, set_dmc_step_counters

from .info import EnvInfo
from .names import invalid_env_name
from .state import MUTABLE_MODEL_FIELDS, mujoco_state, numpy_rng_state, set_mujoco_state, set_numpy_rng_state

__all__ = ["DMC_TASKS", "DMCEnv", "DMCVisualEnv", "check_task", "camera_for"]

#: The 28 tasks of the paper (algorithm §13.2), as (domain, task).
DMC_TASKS: tuple[tuple[str, str], ...] = tuple(
    tuple(n.split("-"))
    for n in (
        "acrobot-swingup ball_in_cup-catch cartpole-balance cartpole-balance_sparse cartpole-swingup "
        "cartpole-swingup_sparse cheetah-run dog-stand dog-walk dog-trot dog-run finger-spin finger-turn_easy "
        "finger-turn_hard fish-swim hopper-stand hopper-hop humanoid-stand humanoid-walk humanoid-run "
        "pendulum-swingup quadruped-walk quadruped-run reacher-easy reacher-hard walker-stand walker-walk "
        "walker-run"
    ).split()
)

ACTION_REPEAT = 2
MAX_AGENT_STEPS = 500
HISTORY = 3
IMAGE_SIZE = 84
VIDEO_SIZE = (240, 320)  # (height, width) of the camera view in evaluation videos

_GL_FIX = (
    "Headless MuJoCo rendering needs an OpenGL backend chosen before dm_control/mujoco is first imported: "
    "set MUJOCO_GL=egl (needs libEGL, e.g. `apt-get install libegl1 libgl1-mesa-dri`; on NVIDIA machines the "
    "driver provides it), or MUJOCO_GL=osmesa after `apt-get install libosmesa6` (software rendering)."
)


def _import_suite():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from dm_control import suite
    except ModuleNotFoundError as err:
        raise ImportError("Dmc-* environments need dm_control: pip install dm_control") from err
    except Exception as err:  # GL backend selection happens at import time
        raise EnvironmentSetupError(
            f"importing dm_control failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} "
            f"({type(err).__name__}: {err}). {_GL_FIX}"
        ) from err
    return suite


def camera_for(domain: str) -> int:
    """MR.Q's camera choice: 2 for quadruped, 0 for every other domain."""
    return 2 if domain == "quadruped" else 0


def check_task(domain: str, task: str, name: str | None = None) -> None:
    """Raise ``ValueError`` (with the valid domains or tasks) unless dm_control knows ``domain``/``task``."""
    suite = _import_suite()
    if (domain, task) in suite.ALL_TASKS:
        return
    paper = ", ".join(f"{d}-{t}" for d, t in DMC_TASKS)
    domains = sorted({d for d, _ in suite.ALL_TASKS})
    if domain not in domains:
        why = f"unknown DMC domain {domain!r}; valid domains: {', '.join(domains)}; the paper's 28 tasks: {paper}"
    else:
        tasks = sorted(t for d, t in suite.ALL_TASKS if d == domain)
        why = f"unknown task {task!r} for DMC domain {domain!r}; valid tasks: {', '.join(tasks)}"
    raise invalid_env_name(name if name is not None else f"Dmc-{domain}-{task}", why)


class DMCEnv(gym.Env):
    """dm_control task with action repeat, [-1, 1] actions and a flat float32 observation."""

    metadata: dict[str, Any] = {"render_modes": []}
    pixels = False

    def __init__(
        self,
        domain: str,
        task: str,
        seed: int,
        *,
        action_repeat: int = ACTION_REPEAT,
        max_steps: int = MAX_AGENT_STEPS,
    ) -> None:
        self.domain, self.task = domain, task
        self.action_repeat = int(action_repeat)
        self.max_steps = int(max_steps)
        self._t = 0
        self._load(seed)
        self.action_dim = int(self._raw.action_spec().shape[0])
        self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)
        self.action_space.seed(seed)
        self.observation_space = self._make_observation_space()

    def _load(self, seed: int) -> None:
        suite = _import_suite()
        raw = suite.load(self.domain, self.task, task_kwargs={"random": seed})
        spec = raw.action_spec()
        if np.all(spec.minimum == -1.0) and np.all(spec.maximum == 1.0):
            env = raw
        else:
            from dm_control.suite.wrappers import action_scale

            env = action_scale.Wrapper(raw, minimum=-1.0, maximum=1.0)
        self._raw, self._env = raw, env

    @property
    def physics(self):
        return self._raw.physics

    def _make_observation_space(self) -> spaces.Box:
        dim = sum(int(np.prod(s.shape)) if s.shape else 1 for s in self._raw.observation_spec().values())
        return spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    def _observe(self, time_step, first: bool) -> np.ndarray:
        return np.concatenate([np.ravel(v) for v in time_step.observation.values()]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._load(seed)
            self.action_space.seed(seed)
        self._t = 0
        return self._observe(self._env.reset(), True), {}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        reward = 0.0
        for _ in range(self.action_repeat):
            time_step = self._env.step(action)
            reward += time_step.reward or 0.0  # None only on a FIRST step (stepping past the end auto-resets)
            if time_step.last():
                break
        self._t += 1
        truncated = self._t >= self.max_steps or time_step.last()
        return self._observe(time_step, False), float(reward), False, bool(truncated), {}

    def close(self) -> None:
        self._env.close()

    # ------------------------------------------------------------------ videos (README "Evaluation videos")
    @property
    def video_fps(self) -> float:
        """Agent steps per second of simulated time (control timestep x action repeat)."""
        return 1.0 / (self._raw.control_timestep() * self.action_repeat)

    def render_views(self) -> dict[str, np.ndarray]:
        """What a video shows now: the task's camera at VIDEO_SIZE, (H, W, 3) uint8. Rendering reads the physics
        state and changes nothing, so an episode plays out the same with or without it."""
        height, width = VIDEO_SIZE
        return {"camera": self._raw.physics.render(height=height, width=width, camera_id=camera_for(self.domain))}

    # ------------------------------------------------------------------ checkpoint/resume
    def get_state(self) -> dict:
        """Physics (integration state + task-modified model fields), task RNG and step counters."""
        physics = self._raw.physics
        step_count, reset_next_step = dmc_step_counters(self._raw)
        return {
            "mujoco": mujoco_state(physics.model.ptr, physics.data.ptr, model_fields=MUTABLE_MODEL_FIELDS),
            "task_random": numpy_rng_state(self._raw.task.random),
            "t": self._t,
            "step_count": step_count,
            "reset_next_step": reset_next_step,
        }

    def set_state(self, state: dict) -> None:
        physics = self._raw.physics
        set_mujoco_state(physics.model.ptr, physics.data.ptr, state["mujoco"])
        set_numpy_rng_state(self._raw.task.random, state["task_random"])
        self._t = int(state["t"])
        set_dmc_step_counters(self._raw, state["step_count"], state["reset_next_step"])

    def env_info(self, name: str) -> EnvInfo:
        shape = tuple(self.observation_space.shape)
        history = getattr(self, "history", 1)
        return EnvInfo(
            name=name,
            obs_shape=shape,
            action_dim=self.action_dim,
            discrete=False,
            pixels=self.pixels,
            history=history,
            frame_channels=shape[0] // history,
            max_action=1.0,
            max_episode_steps=self.max_steps,
        )


class DMCVisualEnv(DMCEnv):
    """Same task, but the state is the last ``history`` 84×84 RGB renders (uint8, C*history × H × W)."""

    pixels = True

    def __init__(
        self,
        domain: str,
        task: str,
        seed: int,
        *,
        history: int = HISTORY,
        image_size: int = IMAGE_SIZE,
        camera_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.history = int(history)
        self.image_size = int(image_size)
        self.camera_id = camera_for(domain) if camera_id is None else int(camera_id)
        self._frames: deque = deque(maxlen=self.history)
        super().__init__(domain, task, seed, **kwargs)
        self._render()  # fail at construction, with the fix, when no GL backend works

    def _make_observation_space(self) -> spaces.Box:
        s = self.image_size
        return spaces.Box(0, 255, (3 * self.history, s, s), np.uint8)

    def _render(self) -> np.ndarray:
        try:
            img = self._raw.physics.render(height=self.image_size, width=self.image_size, camera_id=self.camera_id)
        except Exception as err:
            raise EnvironmentSetupError(
                f"Dmc-visual rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} "
                f"({type(err).__name__}: {err}). {_GL_FIX}"
            ) from err
        return img.transpose(2, 0, 1)

    def get_state(self) -> dict:
        state = super().get_state()
        state["frames"] = torch.from_numpy(np.stack(self._frames)) if self._frames else None
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._frames.clear()
        if state["frames"] is not None:
            self._frames.extend(list(state["frames"].numpy().copy()))

    def render_views(self) -> dict[str, np.ndarray]:
        """The agent's own view (its newest 84x84 frame) beside the larger camera view."""
        return {"agent_view": self._frames[-1].transpose(1, 2, 0), **super().render_views()}

    def _observe(self, time_step, first: bool) -> np.ndarray:
        frame = self._render()
        if first:
            self._frames.extend([frame] * self.history)
        else:
            self._frames.append(frame)
        return np.concatenate(self._frames, axis=0)  # fresh contiguous (3*history, H, W) uint8, oldest first
