"""``python -m mrq_lightning sweep``: every (env, seed) of a benchmark protocol as an ordinary ``fit`` run on Ray.

Ray tasks, one per run attempt, each starting a ``fit`` subprocess (``sweep_runs.py``): a run is then exactly the
command a user would type, with its own process, checkpoints, signals and exit code, and Ray only places it (local
Ray started by the driver, or an existing cluster with ``--ray_address``; ``--cpus_per_run`` and fractional
``--gpus_per_run`` are the task's resources). Ray Tune would add a trial layer that MR.Q's runs do not need (no
search space, no early stopping); plain tasks keep the driver to one loop.

The driver submits at most as many runs as the cluster's resources hold (or ``--max_concurrent``), retries a failed
run up to ``--max_retries`` times (each retry resumes from the run's newest checkpoint; a fit that refused its
configuration, exit code 2, is not retried), reports runs that still fail without stopping the others, and prints a
summary every ``--status_every`` seconds and whenever a run ends. SIGTERM or SIGINT to the driver stops the running
runs: each task passes SIGTERM to its fit, which saves a checkpoint at its current env step; the driver waits for
the checkpoints (a second signal stops waiting) and exits with 128 + signal. Running the same sweep again skips the
finished runs and resumes the others. One driver per sweep directory (a lock file in ``--root``).

The driver keeps every run's state itself (from the tasks' exit codes); the run directories' status files are for
the user and for the next sweep, and TensorBoard files are read only for the summary's latest returns.
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mrq_lightning.errors import MRQUserError
from mrq_lightning.experiments.scalars import CachedCurves
from mrq_lightning.experiments.sweep_runs import (
    FAILED, FINISHED, INTERRUPTED, PENDING, RUNNING, USER_ERROR_EXIT_CODE, Run, execute_run, write_status,
)  # fmt: skip

LOCK_FILE = ".sweep.lock"


@dataclass
class SweepOptions:
    ray_address: str | None = None  # None: start a local Ray instance inside the driver
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_concurrent: int | None = None  # None: as many as the cluster's resources hold
    max_retries: int = 2
    status_every: float = 60.0
    stop_grace: float = 600.0  # seconds the stopped runs get to write their checkpoints
    cwd: str = field(default_factory=os.getcwd)

    @property
    def threads(self) -> int:
        return max(1, math.floor(self.cpus_per_run))


class _StopRequest:
    """SIGTERM / SIGINT recorded for the driver loop; a second one ends the wait for the runs' checkpoints."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.impatient = False
        self._previous = {sig: signal.signal(sig, self._record) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _record(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            os.write(2, f"sweep: signal {signum}: stopping the running runs (each saves a checkpoint)\n".encode())
        else:
            self.impatient = True
            os.write(2, b"sweep: second signal: not waiting for the runs' checkpoints (they go on saving)\n")

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _say(out: Callable[[str], None]) -> Callable[[str], None]:
    return out if out is not print else lambda text: print(text, flush=True)


def _start_ray(options: SweepOptions):
    try:
        import ray
    except ImportError:
        raise MRQUserError('sweep needs Ray: pip install -e ".[experiments]"') from None
    if ray.is_initialized():
        return ray
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    try:
        if options.ray_address:
            ray.init(address=options.ray_address, **kwargs)
        else:
            # The CPUs this process may use (cgroup / SLURM / taskset), not every core of the host. The workers are
            # the driver's children, so its environment (MUJOCO_GL, the venv) reaches them.
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            ray.init(num_cpus=cpus, object_store_memory=80 * 1024**2, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"--ray_address {options.ray_address}" if options.ray_address else "a local Ray instance"
        raise MRQUserError(f"could not start or reach {where}: {str(err).splitlines()[0]}") from None
    return ray


def _capacity(ray, options: SweepOptions) -> int:
    """How many runs fit at once; refuses resources that no run could get (the task would wait forever)."""
    resources = ray.cluster_resources()
    slots = [int(resources.get("CPU", 0) // options.cpus_per_run)]
    if options.gpus_per_run > 0:
        slots.append(int(resources.get("GPU", 0) // options.gpus_per_run))
    if min(slots) < 1:
        raise MRQUserError(
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs: a run with "
            f"--cpus_per_run {options.cpus_per_run:g} --gpus_per_run {options.gpus_per_run:g} can never start"
        )
    return min(min(slots), options.max_concurrent) if options.max_concurrent else min(slots)


class _Summary:
    """The live summary line: counts from the driver's states, latest returns from the runs' TensorBoard files."""

    def __init__(self, runs: list[Run], states: dict[Run, str], started: float) -> None:
        self.runs, self.states, self.started = runs, states, started
        self.curves = CachedCurves()

    def line(self) -> str:
        counts = {name: sum(1 for s in self.states.values() if s == name) for name in (FINISHED, RUNNING, FAILED)}
        waiting = len(self.runs) - sum(counts.values())
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self.started))
        text = (f"sweep {elapsed} | {len(self.runs)} runs: {counts[FINISHED]} finished, {counts[RUNNING]} running, "
                f"{waiting} pending, {counts[FAILED]} failed")  # fmt: skip
        latest = []
        for run in self.runs:
            if self.states[run] in (RUNNING, FINISHED):
                curve = self.curves.get(run.directory)
                if curve:
                    step = max(curve)
                    latest.append(f"{run.label} {curve[step]:.1f} @ {step}")
        return text + (" | eval/return: " + ", ".join(latest) if latest else "")


class _SweepLock:
    """One driver per sweep directory: two drivers would start two fits in the same run directory."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.file = open(root / LOCK_FILE, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise MRQUserError(f"--root {root} is in use by another sweep ({holder}); wait for it or stop it") from None
        self.file.truncate(0)
        self.file.write(f"host {os.uname().nodename}, pid {os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        self.file.close()


def run_sweep(runs: list[Run], fit_args: list[str], digest: str, options: SweepOptions, root: Path,
              out: Callable[[str], None] = print) -> int:  # fmt: skip
    """Run every unfinished run; returns the driver's exit code (0 all finished, 1 some failed, 128 + n stopped)."""
    out = _say(out)
    lock = _SweepLock(root)
    try:
        return _drive(runs, fit_args, digest, options, out)
    finally:
        lock.release()


def _drive(runs: list[Run], fit_args: list[str], digest: str, options: SweepOptions, out: Callable[[str], None]) -> int:
    states = {run: FINISHED if run.is_finished(digest) else PENDING for run in runs}
    summary = _Summary(runs, states, time.monotonic())
    todo = [run for run in runs if states[run] == PENDING]
    if len(todo) < len(runs):
        out(f"sweep: {len(runs) - len(todo)} of {len(runs)} runs already finished, skipped: "
            + ", ".join(run.label for run in runs if states[run] == FINISHED))  # fmt: skip
    if not todo:
        out(summary.line())
        return 0
    for run in todo:
        run.clear_stop()  # a stop request left by an earlier, stopped sweep
        if run.status():  # a "running" left by a killed driver would read as a live fit
            write_status(run, state=PENDING)
    ray = _start_ray(options)
    stop = _StopRequest()  # after ray.init, which installs its own SIGTERM handler in the driver
    try:
        task = ray.remote(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_retries=0)(execute_run)
        capacity = _capacity(ray, options)
        out(f"sweep: {len(todo)} run{'s' if len(todo) != 1 else ''} to do, {capacity} at a time ({options.cpus_per_run:g} CPU, "
            f"{options.gpus_per_run:g} GPU each), {options.max_retries} retries per run")  # fmt: skip
        attempts = dict.fromkeys(todo, 0)
        pending, in_flight, last_summary = list(todo), {}, time.monotonic()
        while (pending or in_flight) and stop.signum is None:
            while pending and len(in_flight) < capacity:
                run = pending.pop(0)
                ref = task.remote(run, fit_args, digest, options.threads, options.cwd, options.gpus_per_run == 0)
                in_flight[ref] = run
                states[run] = RUNNING
                out(f"sweep: started {run.label} ({run.directory})")
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in done:
                run = in_flight.pop(ref)
                code, why = _result(ray, ref)
                attempts[run] += 1
                if code == 0:
                    states[run] = FINISHED
                    out(f"sweep: finished {run.label}")
                elif attempts[run] <= options.max_retries and code != USER_ERROR_EXIT_CODE:
                    states[run] = PENDING
                    out(f"sweep: {run.label} {why} (attempt {attempts[run]}); retrying from its last checkpoint: "
                        f"{run.last_log_line()}")  # fmt: skip
                    pending.insert(0, run)
                else:
                    states[run] = FAILED
                    out(f"sweep: {run.label} FAILED after {attempts[run]} attempt{'s' if attempts[run] > 1 else ''} "
                        f"({why}): {run.last_log_line()}")  # fmt: skip
            if done or time.monotonic() - last_summary >= options.status_every:
                out(summary.line())
                last_summary = time.monotonic()
        if stop.signum is not None:
            _stop_runs(ray, in_flight, stop, options, out)
            for run in in_flight.values():
                states[run] = PENDING
            out(summary.line())
            return 128 + stop.signum
        failed = [run for run in runs if states[run] == FAILED]
        if failed:
            out("sweep: failed runs (see their fit.log): " + ", ".join(run.label for run in failed))
        return 1 if failed else 0
    finally:
        stop.restore()
        if not options.ray_address:
            ray.shutdown()


def _result(ray, ref) -> tuple[int | None, str]:
    """The task's exit code and how to say it; ``None`` when the task itself failed (worker lost, bad node)."""
    try:
        code = ray.get(ref)
    except Exception as err:  # the worker died (node lost, out of memory) or the task raised
        return None, f"Ray task failed: {str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}"
    return code, f"exited with {code}" + (" (fit refused its configuration)" if code == USER_ERROR_EXIT_CODE else "")


def _stop_runs(ray, in_flight: dict, stop: _StopRequest, options: SweepOptions, out: Callable[[str], None]) -> None:
    """Ask every running task to stop (each sends SIGTERM to its fit) and wait until their checkpoints are written;
    tasks that have not started are cancelled."""
    for ref, run in in_flight.items():
        run.request_stop()
        ray.cancel(ref)  # only takes effect for a task that has not started: a running one is blocked in wait()
    deadline = time.monotonic() + options.stop_grace
    waiting = dict(in_flight)
    while waiting and time.monotonic() < deadline and not stop.impatient:
        # Done: the task has returned (or was cancelled before it started) and its fit is no longer running. A
        # cancelled task's reference can be ready while its fit is still saving, hence both.
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0.5)
        waiting = {ref: run for ref, run in waiting.items() if ref not in ready or run.status().get("state") == RUNNING}
    for ref, run in in_flight.items():
        state = run.status().get("state") if ref not in waiting else RUNNING
        said = {INTERRUPTED: "stopped with a checkpoint", FINISHED: "finished", RUNNING: "still saving"}
        out(f"sweep: {run.label} {said.get(state, 'not started')}")
    if waiting:
        print(f"sweep: {len(waiting)} runs were still saving when the driver stopped", file=sys.stderr, flush=True)
