"""Every private attribute of another library that this package reads or writes, behind one tiny accessor each.

Why a module of its own: a library may rename or drop a private attribute in any release without notice. Keeping
them all here means one file to re-check on an upgrade (each accessor names the attribute, why we need it and the
version it was read in) and one place to fix. Private attributes of our own classes stay where they are.

Checked against the versions installed when this was written (``pip show``): gymnasium 1.4.0, dm_control 1.0.50,
torchrl 0.14.1, tensordict 0.14.3, lightning 2.6.6, torch 2.13.0.

Three private *hooks* of Lightning are overridden where they must be, in our subclasses, with a comment each:
``ModelCheckpoint._find_last_checkpoints`` (``training/checkpoint.py``: resolves ``--ckpt_path last``) and
``LightningCLI._instantiate_trainer`` / ``_parse_ckpt_path`` (``training/cli.py``), read in lightning 2.6.6.

No Lightning import here, ever (the Lightning-free core imports this module), and no top-level import of a
simulator: the accessors only use ``getattr``/``setattr`` on objects the caller already has.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "logger_pinned_version",
    "open_tensorboard_file_writer",
    "pin_logger_version",
    "set_tensorboard_purge_step",
    "collector_carrier",
    "dmc_step_counters",
    "gymnasium_np_random",
    "gymnasium_wrapper_chain",
    "restore_gymnasium_wrappers",
    "set_collector_carrier",
    "set_dmc_step_counters",
    "torch_compiler_errors",
    "torchrl_wrapped_env",
    "unchecked_tensordict",
    "trainer_cluster_environment",
    "clear_lightning_sigterm",
    "wrapper_elapsed_steps",
]


# ------------------------------------------------------------------------------------------------ gymnasium 1.4.0
def gymnasium_wrapper_chain(env) -> Iterator[Any]:
    """``env``, ``env.env``, ... down to the unwrapped env, outermost first (public ``Wrapper.env`` only)."""
    while True:
        yield env
        inner = getattr(env, "env", None)
        if inner is None or inner is env:
            return
        env = inner


def gymnasium_np_random(unwrapped) -> np.random.Generator | None:
    """``Env._np_random`` of an unwrapped gymnasium env, or ``None`` when the env was never seeded.

    Why private: the public ``Env.np_random`` property creates and seeds a fresh generator when none exists yet, so
    merely saving the state through it would change the env. Read in gymnasium 1.4.0 ``gymnasium/core.py`` (class
    attribute ``Env._np_random = None``; ``Wrapper._np_random`` raises, hence *unwrapped* envs only). Writing goes
    through the public ``np_random`` setter.
    """
    return getattr(unwrapped, "_np_random", None)


def wrapper_elapsed_steps(env) -> list[int | None]:
    """``TimeLimit._elapsed_steps`` of every layer of ``env``'s wrapper chain (``None`` for other layers).

    Why private: ``TimeLimit`` has no public accessor or setter for its step counter, and a mid-episode restore must
    put it back or the restored episode would be truncated late. Read in gymnasium 1.4.0
    ``gymnasium/wrappers/common.py`` (``TimeLimit.__init__``/``step``/``reset``).
    """
    return [getattr(layer, "_elapsed_steps", None) for layer in gymnasium_wrapper_chain(env)]


def restore_gymnasium_wrappers(env, elapsed_steps: Sequence[int | None] = ()) -> None:
    """Put a restored, mid-episode env's wrapper chain back in the "stepping" state.

    * ``elapsed_steps[i]`` (from :func:`wrapper_elapsed_steps`, outermost first; missing or ``None`` entries are
      skipped) goes back into layer ``i``'s ``TimeLimit._elapsed_steps``.
    * Every ``OrderEnforcing`` layer gets ``_has_reset = True``: the restored env continues an episode without a
      ``reset()``, and ``OrderEnforcing.step`` raises ``ResetNeeded`` otherwise. Its public ``has_reset`` is a
      read-only property, hence the private write. Read in gymnasium 1.4.0 ``gymnasium/wrappers/common.py``.
    """
    for i, layer in enumerate(gymnasium_wrapper_chain(env)):
        steps = elapsed_steps[i] if i < len(elapsed_steps) else None
        if steps is not None and hasattr(layer, "_elapsed_steps"):
            layer._elapsed_steps = steps
        if hasattr(layer, "_has_reset"):
            layer._has_reset = True


# ------------------------------------------------------------------------------------------------ dm_control 1.0.50
def dmc_step_counters(env) -> tuple[int, bool]:
    """``(_step_count, _reset_next_step)`` of a ``dm_control.rl.control.Environment``.

    Why private: the suite env's time limit counts physics-control steps in ``_step_count`` and
    ``_reset_next_step`` makes the next ``step()`` a reset after a LAST step; neither has a public accessor, and a
    mid-episode restore must put both back (otherwise the time limit and auto-reset drift). Read in dm_control
    1.0.50 ``dm_control/rl/control.py`` (``Environment.__init__``/``reset``/``step``).
    """
    return int(env._step_count), bool(env._reset_next_step)


def set_dmc_step_counters(env, step_count: int, reset_next_step: bool) -> None:
    """Write back what :func:`dmc_step_counters` read (same attributes, same dm_control 1.0.50)."""
    env._step_count = int(step_count)
    env._reset_next_step = bool(reset_next_step)


# ------------------------------------------------------------------------------------------------ torchrl 0.14.1
def torchrl_wrapped_env(env) -> Any | None:
    """The library env a TorchRL ``_EnvWrapper`` (e.g. ``GymWrapper``) wraps (``_env``), or ``None`` for other envs.

    Why private: TorchRL exposes the wrapped env only through ``__getattr__`` forwarding, not as a public
    attribute, and we need the object itself (our suite env's ``get_state``/``set_state``). Read in torchrl 0.14.1
    ``torchrl/envs/common.py`` (``_EnvWrapper.__init__``: ``self._env = self._build_env(**kwargs)``).
    """
    return getattr(env, "_env", None)


def collector_carrier(collector) -> Any | None:
    """The tensordict a single-process TorchRL ``Collector`` carries between iterations (``_carrier``).

    It holds the env's current observation (the input of the next policy call), so a mid-episode checkpoint must
    save it alongside the env state. ``None`` after ``shutdown()`` (which deletes it). Why private: no public
    accessor. Read in torchrl 0.14.1 ``torchrl/collectors/_single.py`` (``Collector._make_carrier``, set from
    ``env.reset()`` at construction and replaced by each step's next-output in the rollout).
    """
    return getattr(collector, "_carrier", None)


def set_collector_carrier(collector, tensordict) -> None:
    """Replace the ``Collector._carrier`` tensordict (see :func:`collector_carrier`; torchrl 0.14.1).

    The collector reassigns the attribute itself every step, so swapping the object is what it expects; the
    caller gives a tensordict with the carrier's batch size and device.
    """
    collector._carrier = tensordict


# ------------------------------------------------------------------------------------------------ tensordict 0.14.3
def unchecked_tensordict(source: dict, batch_size: Sequence[int]) -> Any:
    """A ``TensorDict`` built without the constructor's per-entry checks (``TensorDict._new_unsafe``).

    Why private: the public constructor checks every entry's batch dims and device and converts nested dicts,
    about 55 us for a collector's one-step transition against 20 us unchecked, paid on every env step; the caller
    builds entries that already fit (nested entries as tensordicts). TorchRL's own env steps use the same method.
    Read in tensordict 0.14.3 ``tensordict/_td.py`` (``TensorDict._new_unsafe``). Falls back to the checked
    constructor where the method is gone.
    """
    from tensordict import TensorDict

    build = getattr(TensorDict, "_new_unsafe", TensorDict)
    return build(source, batch_size=torch.Size(batch_size))


# ------------------------------------------------------------------------------------------------ torch 2.13
def torch_compiler_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ``torch.compile`` raises when it cannot compile (Dynamo, Inductor, a missing or failing C++
    compiler), as opposed to errors of the compiled program itself.

    Why private: torch exposes no public base class for them. Read in torch 2.13 ``torch/_dynamo/exc.py``
    (``TorchDynamoException``, the base of ``BackendCompilerFailed``) and ``torch/_inductor/exc.py``
    (``InductorError``, ``InvalidCxxCompiler``, ``CppCompileError``).
    """
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InductorError, InvalidCxxCompiler

    return TorchDynamoException, InductorError, InvalidCxxCompiler, CppCompileError


# ------------------------------------------------------------------------------------ lightning 2.6.6 loggers
# Duck-typed: these take a Lightning logger object but never import Lightning (the core imports this module).
def logger_pinned_version(logger) -> int | str | None:
    """The version a Lightning logger was constructed with (``_version``), or ``None`` when it picks the next free
    ``version_<k>`` itself.

    Why private: the public ``version`` property *resolves* a free version (creating nothing, but fixing the value),
    which must not happen before ``--ckpt_path last`` has chosen the run to continue. Read in lightning 2.6.6
    ``lightning/fabric/loggers/tensorboard.py`` (``TensorBoardLogger.__init__``: ``self._version = version``;
    ``version`` property); CSVLogger keeps it alike.
    """
    return getattr(logger, "_version", None)


def pin_logger_version(logger, version: int | str) -> None:
    """Make a Lightning logger write into ``version`` (an existing run's directory, resumed by ``fit``).

    Why private: the version can only be given to the constructor, and LightningCLI builds the logger before the
    checkpoint to resume is known. Setting ``_version`` before the writer opens is what the constructor does
    (lightning 2.6.6, ``lightning/fabric/loggers/tensorboard.py``).
    """
    logger._version = version


def open_tensorboard_file_writer(logger) -> Any | None:
    """The event-file writer of a Lightning ``TensorBoardLogger`` if its ``SummaryWriter`` is already open, else
    ``None`` (opening it just to write an event would create the run directory early).

    Why private: ``logger._experiment`` is the only way to ask "is it open?" (the public ``experiment`` property
    opens it), and torch's ``SummaryWriter._get_file_writer()`` is the only way to write a raw event (the
    ``SessionLog.START`` that makes TensorBoard purge later events). Read in lightning 2.6.6
    ``lightning/fabric/loggers/tensorboard.py`` (``experiment``) and torch 2.13.0
    ``torch/utils/tensorboard/writer.py`` (``SummaryWriter._get_file_writer``).
    """
    writer = getattr(logger, "_experiment", None)
    return None if writer is None else writer._get_file_writer()


def set_tensorboard_purge_step(logger, step: int) -> None:
    """Have a not-yet-opened Lightning ``TensorBoardLogger`` open its ``SummaryWriter`` with ``purge_step=step``.

    Why private: the logger forwards its extra constructor kwargs (``_kwargs``) to ``SummaryWriter`` when it opens
    it, and has no public way to add one afterwards (lightning 2.6.6 ``lightning/fabric/loggers/tensorboard.py``).
    """
    logger._kwargs["purge_step"] = step


# ------------------------------------------------------------------------------------ lightning 2.6.6 trainer
def trainer_cluster_environment(trainer) -> Any | None:
    """The trainer's ``ClusterEnvironment`` (SLURM, torchelastic, ...), also for single-device strategies.

    Why private: only parallel strategies expose ``strategy.cluster_environment``; the trainer keeps the detected one
    (with the user's ``plugins``, e.g. ``SLURMEnvironment(auto_requeue=False)``) in
    ``Trainer._accelerator_connector.cluster_environment`` (lightning 2.6.6 ``trainer/connectors/accelerator_connector.py``).
    """
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None:
        environment = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    return environment


def clear_lightning_sigterm(trainer) -> None:
    """Forget a SIGTERM Lightning's own handler recorded (MR.Q's checkpoint callback has taken it over).

    Why private: ``Trainer.received_sigterm`` is a read-only property over
    ``Trainer._signal_connector.received_sigterm`` (lightning 2.6.6 ``trainer/connectors/signal_connector.py``);
    while it is set, the training loop raises ``SIGTERMException`` (a ``SystemExit`` with code 0) after the step.
    """
    connector = getattr(trainer, "_signal_connector", None)
    if connector is not None:
        connector.received_sigterm = False
