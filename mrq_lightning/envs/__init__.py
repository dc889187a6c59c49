"""Environment presets (algorithm §13): ``make_env(name, seed, ...) -> (torchrl EnvBase, EnvInfo)``.

Names: ``Gym-<gymnasium id>``, ``Dmc-<domain>-<task>``, ``Dmc-visual-<domain>-<task>``, ``Atari-<Game>-v5``.
Simulators are imported lazily, only for the suite a name asks for.

Modules: ``names`` (name forms, parsing, the name error), ``info`` (:class:`EnvInfo`), ``registry`` (the two
factories), one module per suite (``gym_suite``, ``dmc_suite``, ``atari_suite``) and ``state`` (mid-episode
save/restore). Imports go one way: registry -> suites -> names/info/state; nothing imports the registry back.
"""

from mrq_lightning.rendering import check_mujoco_gl as _check_mujoco_gl

# MuJoCo / dm_control pick their GL backend when first imported; default to headless EGL before anything
# in this package can import them (an explicit MUJOCO_GL from the user wins; an invalid one is refused).
_check_mujoco_gl()

from .info import EnvInfo  # noqa: E402
from .names import VALID_FORMS, ParsedName, parse_env_name  # noqa: E402
from .registry import make_env, make_gymnasium_env  # noqa: E402

__all__ = ["EnvInfo", "ParsedName", "VALID_FORMS", "make_env", "make_gymnasium_env", "parse_env_name"]
