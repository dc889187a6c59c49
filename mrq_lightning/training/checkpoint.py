"""Checkpoints by environment step, atomic writes, replay-buffer sidecars and ``--ckpt_path last`` resolution.

Layout (default: under the logger's run directory, so one directory per run)::

    <save_dir>/<name>/version_<k>/
        events.out.tfevents.*             TensorBoard (resumed runs append here; x-axis = env steps)
        config.yaml                       the resolved CLI config
        checkpoints/
            mrq_run.json                  {"env", "seed", "world_size"}: what ``--ckpt_path last`` matches on
            env_step=0400000.ckpt         Lightning checkpoint (rank 0): networks, targets, optimizers, reward
                                          scales, counters, hyperparameters, datamodule config
            env_step=0400000.replay/      its sidecar, one directory per rank:
                rank0/buffer/             MRQReplayBuffer.dumps (meta.json, state.pt)
                rank0/state.pt            per-rank state: env simulator + RNG states, collector observation,
                                          episode bookkeeping, RNG states (python, numpy, torch, CUDA)
                rank1/...
            last.ckpt                     hard link to (or copy of) the newest env_step checkpoint

Write order (crash safe): every rank writes its sidecar (buffer first, then ``state.pt``, each atomically), barrier,
rank 0 writes the ``.ckpt`` to a temporary file, fsyncs it and renames it into place, then replaces ``last.ckpt``
the same way, and only then deletes checkpoints beyond ``keep_last``. A crash at any point leaves every ``*.ckpt``
complete and beside a complete sidecar; leftovers (hidden ``.*.tmp*`` files, sidecars without a ``.ckpt``) are
removed by the next save.

When: every ``every_n_env_steps`` env steps, every ``every_n_minutes`` of wall-clock time (whichever comes first;
on CPU a 100k-step cadence can mean days), when the budget is reached, and when a stop signal arrives
(``training/signals.py``: the checkpoint is written at the current env step, then the process exits with
``128 + signal``). Under DDP the ranks agree on every save (a signal or a timer on any rank saves on all ranks).

Resume (``--ckpt_path last``): the newest ``last.ckpt`` among the runs under ``<save_dir>/<name>/`` whose
``mrq_run.json`` records the same configuration (env, seed, model hyperparameters, data settings, precision and
number of ranks; the budget and evaluation settings may differ); runs of the same env and seed with another
configuration are listed with their differences and skipped. The resumed run continues in that run directory (same
TensorBoard version, events past the checkpoint's env step are purged). A fresh ``fit`` always gets a new version
directory, so it never touches an earlier run's checkpoints. Under SLURM a requeued job (same job id) resumes its
own run without ``--ckpt_path``.

This module decides when and what to save; the file mechanics are in ``checkpoint_io.py`` and the matching of a
saved run's configuration in ``runs.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from mrq_lightning import third_party
from mrq_lightning.errors import CheckpointError, ConfigurationError, MRQUserError
from mrq_lightning.hyperparameters import is_finite_number, is_int
from mrq_lightning.training.checkpoint_io import (
    LAST,
    RUN_FILE,
    SIDECAR_SUFFIX,
    AtomicCheckpointIO,
    atomic_link_or_copy,
    check_writable_directory,
    env_step_name,
    human_bytes,
    missing_checkpoint_error,
    state_digest,
    step_checkpoints,
    tree_bytes,
    version_of,
)
from mrq_lightning.training.resume import CKPT_FORMAT, keep_csv_history
from mrq_lightning.training.runs import newest_matching, read_run_file, run_config
from mrq_lightning.training.signals import (
    STOP_SIGNALS,
    SignalLatch,
    request_requeue,
    signal_name,
    slurm_job_id,
    slurm_requeue_signal,
)

log = logging.getLogger(__name__)

__all__ = ["MRQCheckpoint", "check_writable_directory", "missing_checkpoint_error"]

def _agree_across_ranks(trainer, by_time: bool, signum: int | None) -> tuple[bool, int | None]:
    """DDP: every rank saves and stops together (the timer or a signal on any rank counts for all)."""
    import torch.distributed as dist

    flags = torch.tensor([int(by_time), int(signum or 0)], dtype=torch.int64, device=trainer.strategy.root_device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    by_time_all, signum_all = flags.tolist()
    return bool(by_time_all), (int(signum_all) or None)


class MRQCheckpoint(ModelCheckpoint):
    """Checkpoint every ``every_n_env_steps`` environment steps and at the end of ``fit`` (see the module docstring).

    Lightning's ``global_step`` is not advanced by MR.Q (its updater steps the optimizers); this callback only looks at
    ``MRQ.env_steps``. File names carry the env step (``env_step=0400000.ckpt``) and ``last.ckpt`` always points at
    the newest one.

    Args:
        dirpath: checkpoint directory. Default: ``<save_dir>/<name>/<version>/checkpoints`` of the first logger (a new
            version per fresh run), else ``<default_root_dir>/checkpoints``. An explicit directory that already
            holds checkpoints is refused by a fresh (non-resume) fit, so an old run is never overwritten.
        every_n_env_steps: cadence in env steps (per rank); 0 = none.
        every_n_minutes: cadence in wall-clock minutes since the last save (or the start); 0 = none. Whichever
            cadence comes first saves.
        keep_last: number of ``env_step=*`` checkpoints (with their replay sidecars) to keep; -1 keeps all. The
            sidecar holds the whole replay buffer (about 7 GB for Atari), so the default keeps one.
        save_at_end: also checkpoint when the env-step budget is reached.
        save_on_signal: on SIGTERM / SIGINT / SIGUSR1 (and SLURM's requeue signal), checkpoint at the current env
            step and stop with exit code ``128 + signal`` (``training/signals.py``).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_env_steps: int = 100_000,
        every_n_minutes: float = 30.0,
        keep_last: int = 1,
        save_at_end: bool = True,
        save_on_signal: bool = True,
    ) -> None:
        bad = [
            f"checkpoint.{name}={value!r} must be {rule}"
            for name, value, ok, rule in (
                ("every_n_env_steps", every_n_env_steps, is_int(every_n_env_steps) and every_n_env_steps >= 0,
                 "an integer >= 0 (0 = no step cadence)"),
                ("every_n_minutes", every_n_minutes, is_finite_number(every_n_minutes) and every_n_minutes >= 0,
                 "a number >= 0 (0 = no time cadence)"),
                ("keep_last", keep_last, is_int(keep_last) and (keep_last >= 1 or keep_last == -1),
                 "an integer >= 1, or -1 to keep all"),
            )
            if not ok
        ]  # fmt: skip
        if bad:
            raise ConfigurationError("; ".join(bad))
        if dirpath is not None:
            check_writable_directory(dirpath, "--checkpoint.dirpath")
        # save_top_k=0: Lightning's top-k machinery (and its "directory not empty" warning) is not used.
        super().__init__(
            dirpath=dirpath, save_top_k=0, every_n_train_steps=0, every_n_epochs=0, save_on_train_epoch_end=False
        )
        self._user_dirpath = dirpath
        self.every_n_env_steps = int(every_n_env_steps)
        self.every_n_minutes = float(every_n_minutes)
        self.keep_last = int(keep_last)
        self.save_at_end = bool(save_at_end)
        self.save_on_signal = bool(save_on_signal)
        self._last_saved_step = -1
        self._last_save_time = time.monotonic()
        self.last_save_seconds = 0.0
        self.last_save_bytes = 0
        self.signals: SignalLatch | None = None
        self.stopped_by_signal: int | None = None  # the signal that stopped the fit (the CLI exits 128 + it)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        io = trainer.strategy.checkpoint_io
        if type(io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(io, AtomicCheckpointIO):
            rank_zero_warn(f"checkpoint IO {type(io).__name__} is not MR.Q's atomic writer; crash safety is its own")

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_saved_step = pl_module.env_steps if trainer.ckpt_path else -1
        self._last_save_time = time.monotonic()
        cadence = [f"every {self.every_n_env_steps} env steps"] if self.every_n_env_steps else []
        cadence += [f"every {self.every_n_minutes:g} min"] if self.every_n_minutes else []
        rank_zero_info(
            f"MR.Q run directory: {trainer.log_dir}; checkpoints in {self.dirpath} ("
            + (" or ".join(cadence) or "at the end only") + (", and on SIGTERM/SIGINT/SIGUSR1)" if self.save_on_signal else ")")
        )
        if self.save_on_signal:
            # Installed last, over Lightning's own SIGTERM handler (which would end the fit with exit code 0).
            requeue = slurm_requeue_signal(trainer)
            self.signals = SignalLatch(STOP_SIGNALS + ((requeue,) if requeue else ()), rank=trainer.global_rank)
            if trainer.received_sigterm:  # arrived between Lightning's handler registration and now
                self.signals.trip(signal.SIGTERM)
                # Handled here from now on; left set, Lightning would also end the loop with exit code 0.
                third_party.clear_lightning_sigterm(trainer)
            self.signals.install()
        directory = Path(self.dirpath)
        if not trainer.ckpt_path and any(step_checkpoints(directory)):
            # Only reachable with a fixed directory (explicit dirpath or no logger): logger versions are fresh.
            raise MRQUserError(
                f"checkpoint directory {directory} already holds checkpoints of another run, and this fit does not "
                "resume it. Fix: add --ckpt_path last to resume it, or choose another --checkpoint.dirpath."
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.stopped_by_signal is not None:
            return  # saved and stopping (the fit loop ends after this step)
        step = pl_module.env_steps
        by_time = self.every_n_minutes > 0 and time.monotonic() - self._last_save_time >= 60 * self.every_n_minutes
        signum = self.signals.received if self.signals is not None else None
        if trainer.world_size > 1:
            by_time, signum = _agree_across_ranks(trainer, by_time, signum)
        by_steps = self.every_n_env_steps > 0 and step % self.every_n_env_steps == 0
        at_end = self.save_at_end and step >= trainer.datamodule.total_steps
        if step != self._last_saved_step and (by_steps or by_time or at_end or signum):
            self.save(trainer, pl_module)
        if signum:
            self._stop_for_signal(trainer, pl_module, signum)

    def _stop_for_signal(self, trainer, pl_module, signum: int) -> None:
        self.stopped_by_signal = signum
        trainer.should_stop = True
        requeued = False
        if signum == slurm_requeue_signal(trainer) and trainer.is_global_zero:
            job = slurm_job_id()
            requeued = job is not None and request_requeue(job)
        rank_zero_info(
            f"MR.Q stopped by {signal_name(signum)} at env step {pl_module.env_steps}: checkpoint {self.last_model_path}"
            + (" (SLURM requeue requested: the requeued job resumes it)" if requeued else
               ". Resume: the same command with --ckpt_path last")
        )  # fmt: skip

    # ModelCheckpoint's epoch / validation / exception / train-end triggers are replaced by the env-step ones.
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_validation_end(self, trainer, pl_module) -> None:
        pass

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore_signal_handlers()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_signal_handlers()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_signal_handlers()

    def _restore_signal_handlers(self) -> None:
        if self.signals is not None:
            self.signals.restore()
            if self.stopped_by_signal is None and self.signals.received is not None:
                self.stopped_by_signal = self.signals.received  # arrived during the final save: still exit 128 + n

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": self.dirpath, "last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # nothing to carry over: file names and cadence derive from env steps

    # ------------------------------------------------------------------ saving
    def save(self, trainer, pl_module) -> Path:
        """Write the checkpoint of the current env step (all ranks must call this). A failed write (a full disk, a
        lost mount) removes its partial files and stops with a :class:`CheckpointError` naming the last good one."""
        try:
            return self._save(trainer, pl_module)
        except OSError as err:
            directory = Path(self.dirpath)
            name = env_step_name(pl_module.env_steps)
            if not (directory / f"{name}.ckpt").is_file():
                shutil.rmtree(directory / f"{name}{SIDECAR_SUFFIX}", ignore_errors=True)
            for leftover in directory.glob(f".{name}*"):
                leftover.unlink(missing_ok=True) if leftover.is_file() else shutil.rmtree(leftover, ignore_errors=True)
            last = directory / LAST
            raise CheckpointError(
                f"could not write the checkpoint at env step {pl_module.env_steps} in {directory} "
                f"({err.strerror or err}). The last complete checkpoint is "
                + (f"{last} (env step {self._last_saved_step})" if last.is_file() and self._last_saved_step >= 0 else "none")
                + ". Fix: free disk space (or choose --checkpoint.dirpath elsewhere) and resume with --ckpt_path last."
            ) from err

    def _save(self, trainer, pl_module) -> Path:
        t0 = time.perf_counter()
        strategy = trainer.strategy
        directory = Path(self.dirpath)
        step = pl_module.env_steps
        name = env_step_name(step)
        ckpt = directory / f"{name}.ckpt"
        sidecar = directory / f"{name}{SIDECAR_SUFFIX}"
        datamodule = trainer.datamodule

        digest = state_digest(pl_module)
        datamodule.save_rank_state(sidecar / f"rank{trainer.global_rank}", extra={"state_digest": digest})
        self._check_ranks_agree(trainer, digest)
        strategy.barrier("mrq_checkpoint_sidecars")

        if trainer.is_global_zero:
            self._write_run_file(directory, trainer)
            for logger in trainer.loggers:
                logger.save()  # flush TensorBoard: what was logged up to this checkpoint survives a crash
        datamodule.checkpoint_sidecar = sidecar.name
        try:
            trainer.save_checkpoint(ckpt, weights_only=False)  # rank 0 writes (AtomicCheckpointIO), then a barrier
        finally:
            datamodule.checkpoint_sidecar = None  # another save (e.g. a user's) must not claim this sidecar
        if trainer.is_global_zero:
            atomic_link_or_copy(ckpt, directory / LAST)
            self._prune(directory, keep=ckpt)
        strategy.barrier("mrq_checkpoint_done")
        self._last_saved_step = step
        self._last_save_time = time.monotonic()
        self.last_model_path = str(ckpt)
        self.best_model_path = str(ckpt)
        self.last_save_seconds = time.perf_counter() - t0
        if trainer.is_global_zero:
            self.last_save_bytes = tree_bytes(ckpt) + tree_bytes(sidecar)
            rank_zero_info(
                f"MR.Q checkpoint at env step {step}: {ckpt} ({human_bytes(self.last_save_bytes)} with the replay "
                f"sidecar, {self.last_save_seconds:.1f} s)"
            )
        return ckpt

    @staticmethod
    def _check_ranks_agree(trainer, digest: str) -> None:
        if trainer.world_size <= 1:
            return
        import torch.distributed as dist

        mine = torch.tensor([int(digest[:15], 16)], dtype=torch.int64, device=trainer.strategy.root_device)
        gathered = [torch.zeros_like(mine) for _ in range(trainer.world_size)]
        dist.all_gather(gathered, mine)
        every = [int(t.item()) for t in gathered]
        if len(set(every)) != 1:
            rank_zero_warn(
                f"DDP ranks hold different parameters at env step {trainer.lightning_module.env_steps} "
                f"(digest prefixes {every}); gradients are not being averaged as expected."
            )

    def _write_run_file(self, directory: Path, trainer) -> None:
        path = directory / RUN_FILE
        info = {"format": CKPT_FORMAT, **run_config(trainer), "slurm_job_id": slurm_job_id()}
        if path.is_file():
            try:
                if json.loads(path.read_text()) == info:
                    return
            except (OSError, ValueError):
                pass
        tmp = directory / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, path)

    def _prune(self, directory: Path, keep: Path) -> None:
        """Drop checkpoints beyond ``keep_last`` (ckpt first, then its sidecar) and crash leftovers."""
        checkpoints = [p for _, p in step_checkpoints(directory) if p != keep]
        older_kept = len(checkpoints) if self.keep_last == -1 else self.keep_last - 1
        doomed = checkpoints[: max(len(checkpoints) - older_kept, 0)]
        for path in doomed:
            path.unlink(missing_ok=True)
        keep_sidecars = {p.name[: -len(".ckpt")] + SIDECAR_SUFFIX for _, p in step_checkpoints(directory)}
        for entry in directory.iterdir():
            if entry.name.endswith(SIDECAR_SUFFIX) and entry.is_dir() and entry.name not in keep_sidecars:
                shutil.rmtree(entry, ignore_errors=True)  # pruned, or orphaned by a crash before its .ckpt
            elif entry.name.startswith(".") and ".tmp" in entry.name:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        for sidecar in directory.glob(f"*{SIDECAR_SUFFIX}/rank*"):
            for entry in sidecar.glob(".*"):  # replay-buffer dumps' own temporaries
                if ".tmp-" in entry.name or ".old-" in entry.name:
                    shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------ resume resolution
    def _candidate_dirs(self, trainer) -> list[Path]:
        if self._user_dirpath is not None:
            return [Path(self._user_dirpath)]
        if trainer.loggers:
            logger = trainer.loggers[0]
            root = getattr(logger, "root_dir", None)
            version = third_party.logger_pinned_version(logger)
            if root is not None:
                if version is not None:  # the user fixed the version
                    version = version if isinstance(version, str) else f"version_{version}"
                    return [Path(root) / version / "checkpoints"]
                root = Path(root)
                return sorted(p / "checkpoints" for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        return [Path(trainer.default_root_dir) / "checkpoints"]

    def _saved_runs(self, trainer) -> list[tuple[Path, dict | None]]:
        """(``last.ckpt``, its run file or ``None``) of every run this callback can resume."""
        return [(d / LAST, read_run_file(d / RUN_FILE)) for d in self._candidate_dirs(trainer) if (d / LAST).is_file()]

    def find_last(self, trainer) -> Path | None:
        """The newest ``last.ckpt`` of a run with this configuration (see the module docstring), or ``None``."""
        datamodule = trainer.datamodule
        best, skipped = newest_matching(run_config(trainer), self._saved_runs(trainer))
        if best is None:
            rank_zero_warn(
                f"--ckpt_path last: no earlier run of {datamodule.env_name} with seed {datamodule.seed} and this "
                "configuration found" + (f" (skipped: {', '.join(skipped)})" if skipped else "") + "; starting a fresh run."
            )
            return None
        steps = step_checkpoints(best.parent)
        rank_zero_info(
            f"--ckpt_path last: run {best.parent.parent}" + (f", env step {steps[-1][0]}" if steps else "")
            + (f" (skipped runs of other configurations: {', '.join(skipped)})" if skipped else "")
        )
        return best

    def find_requeued(self, trainer, job_id: str, module, datamodule) -> Path | None:
        """SLURM: the ``last.ckpt`` of this configuration's run that job ``job_id`` saved before being requeued
        (called before ``fit``: ``module`` and ``datamodule`` are the ones it will train)."""
        runs = [(last, info) for last, info in self._saved_runs(trainer) if info and info.get("slurm_job_id") == job_id]
        best, skipped = newest_matching(run_config(trainer, module, datamodule), runs)
        if skipped:
            rank_zero_warn(f"SLURM job {job_id} was requeued, but its runs have another configuration: {', '.join(skipped)}")
        if best is not None:
            rank_zero_info(f"SLURM job {job_id} was requeued: resuming run {best.parent.parent}")
        return best

    def continue_run_of(self, trainer, ckpt_path: str | os.PathLike) -> None:
        """Log into the run directory of ``ckpt_path`` when it lies in this logger's tree (fit and test)."""
        if self._user_dirpath is not None or not trainer.loggers:
            return
        logger = trainer.loggers[0]
        root = getattr(logger, "root_dir", None)
        if root is None or third_party.logger_pinned_version(logger) is not None:
            return
        run_dir = Path(ckpt_path).absolute().parent.parent
        if Path(ckpt_path).absolute().parent.name == "checkpoints" and run_dir.parent == Path(root).absolute():
            third_party.pin_logger_version(logger, version_of(run_dir))
            keep_csv_history(logger, run_dir)
            rank_zero_info(f"Logging into the checkpoint's run directory {run_dir}")

    def _find_last_checkpoints(self, trainer) -> set[str]:
        # A private Lightning hook (lightning 2.6.6; listed in third_party.py): called for ckpt_path="last", before
        # the logger picks its version directory.
        last = self.find_last(trainer)
        if last is None:
            return set()
        if trainer.state.fn in ("fit", "test"):  # test logs into the run it evaluates
            self.continue_run_of(trainer, last)
        return {str(last)}
