"""One run of a sweep: its stable directory, its ``fit`` command, its status file and the function that executes it
on a Ray worker (no Ray import here: the driver in ``sweep.py`` wraps :func:`execute_run` as a Ray task).

Layout of a sweep directory::

    <root>/<benchmark>/<env>/seed_<k>/
        sweep_run.json        status: state (pending | running | finished | interrupted | failed), attempts, exit
                              codes, the fit arguments the run was started with and their digest
        fit.log               the fit's output, appended by every attempt
        logs/mrq/version_0/   the ordinary fit run directory (TensorBoard events, config.yaml, checkpoints/)

Every attempt is ``python -m mrq_lightning fit <sweep options> --data.env ENV --seed_everything K
--trainer.default_root_dir <run dir> --ckpt_path last``: the first starts fresh, any later one (a retry, a re-run of
the sweep, a requeued cluster job) resumes the run from its newest checkpoint, bit-identically (README, "Stopping and
resuming").
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mrq_lightning.atomic_io import atomic_write_text
from mrq_lightning.experiments.paper import benchmark_of

STATUS_FILE = "sweep_run.json"
LOG_FILE = "fit.log"
# The driver's stop request to the worker (a file: it reaches a worker on another node through the shared sweep
# directory, and a worker that is blocked waiting for its fit sees it within a second).
STOP_FILE = "sweep_stop"
PENDING, RUNNING, FINISHED, INTERRUPTED, FAILED = "pending", "running", "finished", "interrupted", "failed"
# A fit stopped by one of these saved a checkpoint at its current env step first (README, "Stopping and resuming").
STOP_EXIT_CODES = {128 + signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGUSR1}
USER_ERROR_EXIT_CODE = 2  # fit refused its configuration (one line in fit.log): retrying cannot help
try:  # loaded here, not between fork and exec (dlopen in a forked child of a threaded worker can deadlock)
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not Linux
    _LIBC = None


def config_digest(fit_args: list[str]) -> str:
    """What makes two sweeps' runs the same: the fit options, with each ``--config`` file's contents instead of its
    path (moving the checkout keeps a finished run finished; editing a YAML does not)."""
    parts = []
    for i, arg in enumerate(fit_args):
        if i > 0 and fit_args[i - 1] == "--config":
            try:
                parts.append(Path(arg).read_text())
                continue
            except OSError:
                pass
        parts.append(arg)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Run:
    env: str
    seed: int
    directory: Path

    @property
    def label(self) -> str:
        return f"{self.env}/seed_{self.seed}"

    def fit_command(self, fit_args: list[str]) -> list[str]:
        return [
            sys.executable, "-m", "mrq_lightning", "fit", *fit_args, "--data.env", self.env,
            "--seed_everything", str(self.seed), "--trainer.default_root_dir", str(self.directory),
            "--ckpt_path", "last",
        ]  # fmt: skip

    def status(self) -> dict:
        """The run's status file, or ``{}`` before its first attempt (or when the file is unreadable)."""
        try:
            return json.loads((self.directory / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def is_finished(self, digest: str) -> bool:
        """Finished with the same fit options (:func:`config_digest`; a re-run with, say, a larger budget resumes the
        run)."""
        status = self.status()
        return status.get("state") == FINISHED and status.get("config_digest") == digest

    def request_stop(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / STOP_FILE).touch()

    def clear_stop(self) -> None:
        (self.directory / STOP_FILE).unlink(missing_ok=True)

    def stop_requested(self) -> bool:
        return (self.directory / STOP_FILE).exists()

    def last_log_line(self) -> str:
        """The last non-empty line of ``fit.log`` (a failed fit's one-line error), progress-bar redraws removed."""
        try:
            with open(self.directory / LOG_FILE, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                tail = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
        return lines[-1] if lines else ""


def plan_runs(root: Path, envs: list[str], seeds: list[int]) -> list[Run]:
    """Every (env, seed), env-major, each in ``<root>/<benchmark>/<env>/seed_<k>``."""
    return [Run(env, seed, root / benchmark_of(env) / env / f"seed_{seed}") for env in envs for seed in seeds]


def write_status(run: Run, **fields) -> dict:
    status = {**run.status(), "env": run.env, "seed": run.seed, **fields,
              "updated": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    atomic_write_text(run.directory / STATUS_FILE, json.dumps(status, indent=1) + "\n")
    return status


def _terminate_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Linux: if the Ray worker dies (driver killed, node lost), the fit gets SIGTERM and saves before exiting.
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def execute_run(run: Run, fit_args: list[str], digest: str, threads: int, cwd: str, hide_gpus: bool) -> int:
    """Run one attempt of ``run`` as a ``fit`` subprocess and return its exit code; the status file says how it
    ended. A stop request (the sweep was stopped: :meth:`Run.request_stop` or a Ray cancellation) is passed on as
    SIGTERM: the fit saves at its current env step and exits 143."""
    run.directory.mkdir(parents=True, exist_ok=True)
    status = run.status()
    write_status(run, state=RUNNING, attempts=status.get("attempts", 0) + 1, fit_args=fit_args, config_digest=digest,
                 host=os.uname().nodename)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("MUJOCO_GL", "egl")
    if hide_gpus:  # Ray gave this run no GPU; with accelerator: auto the fit would take GPU 0 uncounted
        env["CUDA_VISIBLE_DEVICES"] = ""
    with open(run.directory / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            run.fit_command(fit_args), cwd=cwd if os.path.isdir(cwd) else run.directory, env=env, stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_terminate_with_parent,
        )  # fmt: skip
        try:
            code = None
            while code is None:
                try:
                    code = process.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    if run.stop_requested():
                        process.send_signal(signal.SIGTERM)
                        code = _wait_through_interrupts(process)
        except BaseException:  # a Ray cancellation arrives as KeyboardInterrupt
            process.send_signal(signal.SIGTERM)
            code = _wait_through_interrupts(process)
    state = FINISHED if code == 0 else INTERRUPTED if code in STOP_EXIT_CODES else FAILED
    write_status(run, state=state, exit_codes=run.status().get("exit_codes", []) + [code])
    (run.directory / STOP_FILE).unlink(missing_ok=True)
    return code


def _wait_through_interrupts(process: subprocess.Popen) -> int:
    while True:
        try:
            return process.wait()
        except BaseException:  # a second cancellation: the fit is already saving
            continue
