"""Save and restore a running environment mid-episode (exact checkpoint/resume).

Every preset's gymnasium-level class implements ``get_state() -> dict | None`` and ``set_state(state)``:

* Gym MuJoCo tasks: MuJoCo's full integration state (``mj_getState(mjSTATE_INTEGRATION)``: time, qpos, qvel, act,
  warm start, controls, applied forces, mocap, user data), the unwrapped env's ``np_random`` and the gymnasium
  wrappers' step counters (``TimeLimit``).
* Gym classic-control tasks (those keeping their state in ``unwrapped.state``): that state, ``np_random`` and the
  wrapper counters.
* DMC (proprio and visual): the MuJoCo integration state, the model fields that dm_control tasks change at reset
  (target positions and sizes, colours, lights, ...), the task's ``random`` stream, the suite env's step counter
  and our agent-step counter, and for visual tasks the frame history.
* Atari: ``ale.cloneState(include_rng=True)`` (emulator, sticky-action RNG, frame counters), our raw-frame max-pool
  queue, frame history and frame counter, and the ε-action RNG.

Any other gymnasium env returns ``None`` (not restorable): the trainer then starts a fresh episode and logs it.

States hold only tensors, numbers, strings, bytes, lists, tuples and dicts, so they load with
``torch.load(weights_only=True)``.

Other libraries' private attributes (gymnasium wrapper counters, the unwrapped env's generator, TorchRL's wrapped
env, dm_control's step counters) are reached only through :mod:`mrq_lightning.third_party`. This module imports no
suite and not the registry (the suites import it); MuJoCo and TorchRL are imported inside the functions that need
them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrq_lightning.third_party import (
    gymnasium_np_random,
    restore_gymnasium_wrappers,
    torchrl_wrapped_env,
    wrapper_elapsed_steps,
)

__all__ = [
    "MUTABLE_MODEL_FIELDS",
    "get_env_state",
    "gymnasium_state",
    "mujoco_state",
    "numpy_rng_state",
    "set_env_state",
    "set_gymnasium_state",
    "set_mujoco_state",
    "set_numpy_rng_state",
]

# MjModel fields that dm_control suite tasks modify in ``initialize_episode`` (reacher/fish/swimmer targets, finger
# target site, swimmer light, point_mass wrap, quadruped escape terrain, ...). Restored with the data so that a
# resumed episode sees the same targets.
MUTABLE_MODEL_FIELDS = (
    "body_pos", "body_quat", "body_mass", "geom_pos", "geom_quat", "geom_size", "geom_rgba", "site_pos", "site_quat",
    "site_size", "site_rgba", "light_pos", "light_dir", "dof_damping", "wrap_prm", "mat_rgba", "hfield_data",
)  # fmt: skip


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, copy=True))


# ------------------------------------------------------------------------------------------------ numpy RNGs
def numpy_rng_state(rng) -> dict[str, Any]:
    """State of a ``np.random.Generator`` or ``np.random.RandomState`` as a weights-only-loadable dict."""
    if isinstance(rng, np.random.Generator):
        return {"kind": "generator", "state": rng.bit_generator.state}
    if isinstance(rng, np.random.RandomState):
        name, keys, pos, has_gauss, cached = rng.get_state()
        return {"kind": "random_state", "state": (name, _tensor(keys), int(pos), int(has_gauss), float(cached))}
    raise TypeError(f"unsupported numpy RNG {type(rng).__name__}")


def set_numpy_rng_state(rng, state: dict[str, Any]) -> None:
    if state["kind"] == "generator":
        rng.bit_generator.state = state["state"]
    else:
        name, keys, pos, has_gauss, cached = state["state"]
        rng.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


# ------------------------------------------------------------------------------------------------ MuJoCo
def mujoco_state(model, data, *, model_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    size = mujoco.mj_stateSize(model, spec)
    state = np.empty(size, dtype=np.float64)
    mujoco.mj_getState(model, data, state, spec)
    fields = {name: _tensor(getattr(model, name)) for name in model_fields if getattr(model, name, None) is not None}
    return {"integration": torch.from_numpy(state), "model": fields}


def set_mujoco_state(model, data, state: dict[str, Any]) -> None:
    """Restore :func:`mujoco_state` output, then recompute the derived quantities (``mj_forward``)."""
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    values = state["integration"].numpy()
    if values.shape[0] != mujoco.mj_stateSize(model, spec):
        raise ValueError(
            f"MuJoCo state has {values.shape[0]} entries, this model expects {mujoco.mj_stateSize(model, spec)}"
        )
    for name, value in state.get("model", {}).items():
        target = getattr(model, name)
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"MuJoCo model field {name} has shape {tuple(value.shape)}, expected {target.shape}")
        target[...] = value.numpy()
    mujoco.mj_setState(model, data, np.ascontiguousarray(values), spec)
    mujoco.mj_forward(model, data)


# ------------------------------------------------------------------------------------------------ gymnasium
def gymnasium_state(env) -> dict[str, Any] | None:
    """State of a plain ``gymnasium.make`` env (MuJoCo or classic control), or ``None`` if not restorable."""
    unwrapped = env.unwrapped
    state: dict[str, Any] = {"class": type(unwrapped).__name__}
    if hasattr(unwrapped, "model") and hasattr(unwrapped, "data") and type(unwrapped.data).__name__ == "MjData":
        state["mujoco"] = mujoco_state(unwrapped.model, unwrapped.data)
    elif (type(unwrapped).__module__.startswith("gymnasium.envs.classic_control")  # a user env's `state` may be partial
          and isinstance(getattr(unwrapped, "state", None), (np.ndarray, tuple, list))):
        state["classic"] = _tensor(np.asarray(unwrapped.state))
        state["classic_type"] = type(unwrapped.state).__name__
        extra = getattr(unwrapped, "steps_beyond_terminated", None)
        state["steps_beyond_terminated"] = extra
    else:
        return None
    rng = gymnasium_np_random(unwrapped)  # not ``np_random``: that would seed a fresh generator when unset
    if rng is not None:
        state["np_random"] = numpy_rng_state(rng)
    state["elapsed_steps"] = wrapper_elapsed_steps(env)
    return state


def set_gymnasium_state(env, state: dict[str, Any]) -> None:
    unwrapped = env.unwrapped
    if state.get("class") != type(unwrapped).__name__:
        raise ValueError(f"env state is for {state.get('class')}, not {type(unwrapped).__name__}")
    if "mujoco" in state:
        set_mujoco_state(unwrapped.model, unwrapped.data, state["mujoco"])
    else:
        value = state["classic"].numpy().copy()
        unwrapped.state = tuple(value.tolist()) if state["classic_type"] == "tuple" else value
        if hasattr(unwrapped, "steps_beyond_terminated"):
            unwrapped.steps_beyond_terminated = state["steps_beyond_terminated"]
    if "np_random" in state:
        set_numpy_rng_state(unwrapped.np_random, state["np_random"])
    restore_gymnasium_wrappers(env, state["elapsed_steps"])  # TimeLimit counters; OrderEnforcing: mid-episode


# ------------------------------------------------------------------------------------------------ TorchRL envs
def _gymnasium_level(env):
    """The preset's gymnasium-level env behind a TorchRL wrapper (``GymWrapper``), or ``env`` itself."""
    from torchrl.envs import EnvBase

    if isinstance(env, EnvBase):
        return torchrl_wrapped_env(env)  # None for a TorchRL env that wraps no library env (envs/custom.py)
    return env


def get_env_state(env) -> dict[str, Any] | None:
    """Mid-episode state of a preset (TorchRL or gymnasium level); ``None`` when the suite cannot restore it."""
    target = _gymnasium_level(env)
    getter = getattr(target, "get_state", None)
    if getter is None:
        return None
    state = getter()
    return None if state is None else {"class": type(target).__name__, "state": state}


def set_env_state(env, state: dict[str, Any]) -> None:
    """Restore :func:`get_env_state` output. Raises ``ValueError`` if it belongs to another kind of env."""
    target = _gymnasium_level(env)
    if target is None or state.get("class") != type(target).__name__ or not hasattr(target, "set_state"):
        raise ValueError(f"env state was saved from {state.get('class')}, cannot restore it into {type(target).__name__}")
    target.set_state(state["state"])
