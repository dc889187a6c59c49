"""Stop signals: SIGTERM, SIGINT and SIGUSR1 end a run with a checkpoint instead of losing it.

What schedulers send: ``docker stop``, Kubernetes and most batch systems send SIGTERM (then SIGKILL after a grace
period: 10 s for docker, 30 s for Kubernetes by default); SLURM sends SIGTERM at the time limit or on preemption,
and the signal chosen with ``#SBATCH --signal=USR1@90`` that long before; a terminal sends SIGINT on Ctrl-C.

:class:`SignalLatch` only *records* the first signal. Acting inside a signal handler would interrupt whatever the
main thread was doing (a half-finished update, a half-written file); instead the checkpoint callback reads the
latch after every env step, saves a complete checkpoint at that step, stops the fit and the process exits with
``128 + signal`` (143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1), so a scheduler sees an interrupted run, not a
successful one. A second signal while the save is running is recorded and ignored: the save completes (``kill -9``
still stops at once, and the atomic writes leave the previous checkpoint valid).

SLURM: :func:`slurm_job_id` and :func:`request_requeue` implement Lightning's auto-requeue protocol
(``SLURMEnvironment(auto_requeue=True)``, the default): on the requeue signal (SIGUSR1 unless configured
otherwise) the run saves, asks ``scontrol requeue <job>``, and exits; the requeued job finds that run by its job id
and resumes it without ``--ckpt_path`` (see ``MRQCheckpoint.find_requeued``).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterable

from lightning.fabric.plugins.environments import SLURMEnvironment

from mrq_lightning import third_party

log = logging.getLogger(__name__)

__all__ = ["STOP_SIGNALS", "SignalLatch", "request_requeue", "signal_name", "slurm_job_id", "slurm_requeue_signal"]

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalLatch:
    """Records the first of ``signals`` received while installed; ``exit_code`` is then ``128 + signal``."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS, rank: int = 0) -> None:
        self.signals = tuple(dict.fromkeys(int(s) for s in signals))
        self.rank = rank
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Replace the handlers of ``signals`` (main thread only: Python delivers signals there)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("stop signals are not handled: training does not run in the main thread")
            return
        for signum in self.signals:
            if signum not in self._previous:
                self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the handlers back as they were before :meth:`install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def trip(self, signum: int) -> None:
        """Record ``signum`` as if it had been received (first one wins)."""
        if self.received is None:
            self.received = int(signum)

    @property
    def exit_code(self) -> int | None:
        return None if self.received is None else 128 + self.received

    def _handle(self, signum: int, _frame) -> None:
        # Runs between two bytecodes of the main thread: record and return, nothing else.
        prefix = f"[rank {self.rank}] " if self.rank else ""
        if self.received is None:
            self.received = signum
            message = (
                f"{prefix}received {signal_name(signum)}: saving a checkpoint after the current env step, then "
                f"exiting with code {128 + signum}"
            )
        else:
            message = (
                f"{prefix}received {signal_name(signum)} again: still finishing the checkpoint (kill -9 stops at once; "
                "the last complete checkpoint stays valid)"
            )
        # os.write, not print: a handler that interrupts a buffered write to stderr (tqdm, logging) and prints
        # itself raises "reentrant call" in the main thread.
        try:
            os.write(2, (message + "\n").encode())
        except OSError:
            pass


def slurm_requeue_signal(trainer) -> int | None:
    """The signal Lightning's SLURM auto-requeue is bound to (``SLURMEnvironment(auto_requeue=True)``, SIGUSR1 by
    default) when this run is under it, else ``None``."""
    environment = third_party.trainer_cluster_environment(trainer)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
        return int(environment.requeue_signal)
    return None


def slurm_job_id(environ: os._Environ | dict | None = None) -> str | None:
    """The job id ``scontrol requeue`` needs (``<array job>_<task>`` for array jobs), or ``None`` outside SLURM."""
    environ = os.environ if environ is None else environ
    array_job, array_task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{array_task}" if array_job and array_task else environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def request_requeue(job_id: str) -> bool:
    """Ask SLURM to requeue ``job_id`` (``scontrol requeue``); ``True`` when scontrol accepted."""
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("could not requeue SLURM job %s (%s); resume it with --ckpt_path last", job_id, err)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (code %d): %s", job_id, result.returncode, result.stderr.strip())
        return False
    log.warning("requeued SLURM job %s: it resumes from this checkpoint when it starts again", job_id)
    return True
