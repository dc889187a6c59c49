"""MuJoCo's GL backend: default ``MUJOCO_GL=egl`` (headless) and a one-line error for a value MuJoCo rejects.

MuJoCo reads ``MUJOCO_GL`` once, when it is first imported (by dm_control, gymnasium's MuJoCo envs, or a library
probing for them), and raises a bare ``RuntimeError`` on an unknown value. This module imports nothing heavy, so
the CLI can check before anything imports MuJoCo.
"""

from __future__ import annotations

import os

from mrq_lightning.errors import EnvironmentSetupError

__all__ = ["MUJOCO_GL_BACKENDS", "check_mujoco_gl"]

# What both MuJoCo and dm_control accept (dm_control/_render/constants.py, compared case-sensitively there):
# a backend, a synonym of glfw, or a synonym of "no rendering" (fine for proprioceptive tasks).
MUJOCO_GL_BACKENDS = ("egl", "osmesa", "glfw", "on", "enable", "enabled", "true", "1", "",
                      "off", "disable", "disabled", "false", "0")  # fmt: skip


def check_mujoco_gl() -> str:
    """Default ``MUJOCO_GL`` to ``egl`` (an explicit value wins) and refuse one MuJoCo does not know."""
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    if backend not in MUJOCO_GL_BACKENDS:
        raise EnvironmentSetupError(
            f"MUJOCO_GL={backend!r} is not a MuJoCo rendering backend. Fix: MUJOCO_GL=egl (headless), osmesa "
            "(software rendering), glfw (with a display) or disable (no rendering), in lower case, or unset it (egl)."
        )
    return backend
