"""``python -m mrq_lightning sweep``: every (env, seed) of a benchmark protocol as an ordinary ``fit`` run on Ray.

Ray tasks, one per run attempt, each starting a ``fit`` subprocess (``sweep_runs.py``): a run is then exactly the
command a user would type, with its own process, checkpoints, signals and exit code, and Ray only places it (local
Ray started by the driver, or an existing cluster with ``--ray_address``; ``--cpus_per_run`` and fractional
``--gpus_per_run`` are the task's resources). Ray Tune would add a trial layer that MR.Q's runs do not need (no
search space, no early stopping); plain tasks keep the driver to one loop.

The driver submits at most as many runs as the cluster's resources hold (or ``--max_concurrent``), retries a failed
run up to ``--max_retries`` times (each retry resumes from the run's newest checkpoint), reports runs that still fail
without stopping the others, and prints a summary every ``--status_every`` seconds and whenever a run ends. SIGTERM or
SIGINT to the driver cancels the running tasks: each passes SIGTERM to its fit, which saves a checkpoint at its
current env step; the driver then exits with 128 + signal. Running the same sweep again skips the finished runs and
resumes the interrupted ones.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mrq_lightning.experiments.scalars import run_curve
from mrq_lightning.experiments.sweep_runs import FAILED, FINISHED, INTERRUPTED, RUNNING, Run, execute_run


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
    """SIGTERM / SIGINT recorded for the driver loop (which cancels the runs once, in order)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {sig: signal.signal(sig, self._record) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _record(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            os.write(2, f"sweep: signal {signum}: stopping the running runs (each saves a checkpoint)\n".encode())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _start_ray(options: SweepOptions):
    import ray

    if ray.is_initialized():
        return ray
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=True)
    if options.ray_address:
        ray.init(address=options.ray_address, **kwargs)
    else:
        # The driver's environment (MUJOCO_GL, PYTHONPATH, the venv) reaches the workers: they are its children.
        ray.init(num_cpus=os.cpu_count(), object_store_memory=80 * 1024**2, **kwargs)
    return ray


def _capacity(ray, options: SweepOptions) -> int:
    resources = ray.cluster_resources()
    slots = [int(resources.get("CPU", 0) // options.cpus_per_run)] if options.cpus_per_run > 0 else []
    if options.gpus_per_run > 0:
        slots.append(int(resources.get("GPU", 0) // options.gpus_per_run))
    capacity = max(1, min(slots)) if slots else 1
    return min(capacity, options.max_concurrent) if options.max_concurrent else capacity


def summary_line(runs: list[Run], started: float, *, with_returns: bool = True) -> str:
    """``sweep 0:12:30 | 4 runs: 1 finished, 2 running, 1 pending, 0 failed | env/seed_0 845.2 @ 25000, ...``."""
    states = {run: run.status().get("state") for run in runs}
    counts = {name: sum(1 for s in states.values() if s == name) for name in (FINISHED, RUNNING, INTERRUPTED, FAILED)}
    pending = len(runs) - sum(counts.values())
    elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - started))
    text = (f"sweep {elapsed} | {len(runs)} runs: {counts[FINISHED]} finished, {counts[RUNNING]} running, "
            f"{pending + counts[INTERRUPTED]} pending, {counts[FAILED]} failed")  # fmt: skip
    if with_returns:
        latest = []
        for run in runs:
            if states[run] in (RUNNING, FINISHED):
                curve = run_curve(run.directory)
                if curve:
                    step = max(curve)
                    latest.append(f"{run.label} {curve[step]:.1f} @ {step}")
        if latest:
            text += " | eval/return: " + ", ".join(latest)
    return text


def run_sweep(runs: list[Run], fit_args: list[str], options: SweepOptions, out: Callable[[str], None] = print) -> int:
    """Run every unfinished run; returns the driver's exit code (0 all finished, 1 some failed, 128 + n stopped)."""
    started = time.monotonic()
    todo = [run for run in runs if not run.is_finished(fit_args)]
    if len(todo) < len(runs):
        out(f"sweep: {len(runs) - len(todo)} of {len(runs)} runs already finished, skipped: "
            + ", ".join(run.label for run in runs if run not in todo))  # fmt: skip
    if not todo:
        out(summary_line(runs, started))
        return 0
    ray = _start_ray(options)
    stop = _StopRequest()  # after ray.init, which installs its own SIGTERM handler in the driver
    try:
        task = ray.remote(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_retries=0)(execute_run)
        capacity = _capacity(ray, options)
        out(f"sweep: {len(todo)} runs to do, {capacity} at a time ({options.cpus_per_run:g} CPU, "
            f"{options.gpus_per_run:g} GPU each), {options.max_retries} retries per run")  # fmt: skip
        failures = dict.fromkeys(todo, 0)
        pending, in_flight, last_summary = list(todo), {}, 0.0
        while (pending or in_flight) and stop.signum is None:
            while pending and len(in_flight) < capacity:
                run = pending.pop(0)
                in_flight[task.remote(run, fit_args, options.threads, options.cwd)] = run
                out(f"sweep: started {run.label} ({run.directory})")
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            for ref in done:
                run = in_flight.pop(ref)
                code = _result(ray, ref)
                if code == 0:
                    out(f"sweep: finished {run.label}")
                    continue
                failures[run] += 1
                if failures[run] <= options.max_retries:
                    out(f"sweep: {run.label} exited with {code} (attempt {failures[run]}); retrying from its last "
                        f"checkpoint: {run.last_log_line()}")  # fmt: skip
                    pending.insert(0, run)
                else:
                    out(f"sweep: {run.label} FAILED after {failures[run]} attempts (exit {code}): {run.last_log_line()}")
            if done or time.monotonic() - last_summary >= options.status_every:
                out(summary_line(runs, started))
                last_summary = time.monotonic()
        if stop.signum is not None:
            _stop_runs(ray, in_flight, options, out)
            out(summary_line(runs, started))
            return 128 + stop.signum
        failed = [run for run in runs if run.status().get("state") != FINISHED]
        if failed:
            out("sweep: failed runs (see their fit.log): " + ", ".join(run.label for run in failed))
        return 1 if failed else 0
    finally:
        stop.restore()
        if not options.ray_address:
            ray.shutdown()


def _result(ray, ref) -> int | None:
    try:
        return ray.get(ref)
    except Exception:  # the worker died (node lost, out of memory): the run counts as failed
        return None


def _stop_runs(ray, in_flight: dict, options: SweepOptions, out: Callable[[str], None]) -> None:
    """Ask every running task to stop (each sends SIGTERM to its fit) and wait until their checkpoints are written.
    Tasks not started yet are cancelled."""
    for ref, run in in_flight.items():
        run.request_stop()
        if run.status().get("state") != RUNNING:
            ray.cancel(ref)
    deadline = time.monotonic() + options.stop_grace
    waiting = dict(in_flight)
    while waiting and time.monotonic() < deadline:
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0.5)  # ended or cancelled tasks
        waiting = {ref: run for ref, run in waiting.items() if ref not in ready and run.status().get("state") == RUNNING}
    for run in in_flight.values():
        state = run.status().get("state")
        out(f"sweep: {run.label} {'stopped with a checkpoint' if state == INTERRUPTED else state}")
    if waiting:
        print(f"sweep: {len(waiting)} runs did not stop within {options.stop_grace:g} s", file=sys.stderr)
