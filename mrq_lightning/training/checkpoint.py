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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
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
from mrq_lightning.atomic_io import atomic_torch_save, fsync_directory
from mrq_lightning.errors import CheckpointError, ConfigurationError, MRQUserError
from mrq_lightning.training.resume import CKPT_FORMAT, RESUME_FREE_HPARAMS
from mrq_lightning.training.signals import STOP_SIGNALS, SignalLatch, request_requeue, signal_name, slurm_job_id

log = logging.getLogger(__name__)

__all__ = ["CKPT_FORMAT", "AtomicCheckpointIO", "MRQCheckpoint", "atomic_torch_save", "env_step_name"]

RUN_FILE = "mrq_run.json"
SIDECAR_SUFFIX = ".replay"
LAST = "last.ckpt"
_STEP_RE = re.compile(r"^env_step=(\d+)\.ckpt$")


def env_step_name(step: int) -> str:
    return f"env_step={step:07d}"


def _atomic_link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link to ``src`` (a copy where links are unsupported), replacing ``dst`` atomically."""
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    os.replace(tmp, dst)
    fsync_directory(dst.parent)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def check_writable_directory(path, option: str) -> None:
    """Refuse at configuration time a directory that cannot be created or written (not hours later, at a save).
    Creates it (and a probe file) to find out, then removes whatever it created."""
    directory = Path(path).expanduser().absolute()
    missing = []
    existing = directory
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".mrq_write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigurationError(
            f"{option} {path} is not a writable directory ({err.strerror or err}). Fix: choose a directory you can "
            "write to."
        ) from err
    finally:
        for created in missing:  # deepest first
            try:
                created.rmdir()
            except OSError:
                pass


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _slurm_requeue_signals(trainer) -> tuple[int, ...]:
    """The signal SLURM's auto-requeue is bound to (Lightning's ``SLURMEnvironment``), when running under it."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = third_party.trainer_cluster_environment(trainer)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
        return (int(environment.requeue_signal),)
    return ()


def _agree_across_ranks(trainer, by_time: bool, signum: int | None) -> tuple[bool, int | None]:
    """DDP: every rank saves and stops together (the timer or a signal on any rank counts for all)."""
    import torch.distributed as dist

    flags = torch.tensor([int(by_time), int(signum or 0)], dtype=torch.int64, device=trainer.strategy.root_device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    by_time_all, signum_all = flags.tolist()
    return bool(by_time_all), (int(signum_all) or None)


def missing_checkpoint_error(path) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} does not exist. Fix: pass an existing .ckpt file, or --ckpt_path last to resume the "
        "newest run of this configuration."
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with crash-safe writes and :class:`CheckpointError` on unreadable files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise missing_checkpoint_error(path)
        kwargs = {} if map_location is None else {"map_location": map_location}
        try:
            checkpoint = super().load_checkpoint(path, weights_only=weights_only, **kwargs)
        except Exception as err:  # truncated zip, garbage, unpickling refusal ...
            raise CheckpointError(
                f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({type(err).__name__}: {err}). "
                "Fix: resume from another checkpoint (e.g. an earlier env_step=*.ckpt in the same directory) "
                "or start a fresh run without --ckpt_path."
            ) from err
        state = checkpoint.get("mrq") if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT or "pytorch-lightning_version" not in checkpoint:
            raise CheckpointError(
                f"checkpoint {path} was not written by mrq_lightning's trainer (no {CKPT_FORMAT!r} section). Fix: pass "
                "a checkpoint saved by `python -m mrq_lightning fit` (e.g. --ckpt_path last), or drop --ckpt_path to "
                "start a fresh run."
            )
        return checkpoint


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes, bytes): equal digests = identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _version_of(run_dir: Path) -> int | str:
    match = re.fullmatch(r"version_(\d+)", run_dir.name)
    return int(match.group(1)) if match else run_dir.name


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
                ("every_n_env_steps", every_n_env_steps, _is_int(every_n_env_steps) and every_n_env_steps >= 0,
                 "an integer >= 0 (0 = no step cadence)"),
                ("every_n_minutes", every_n_minutes, _is_number(every_n_minutes) and every_n_minutes >= 0,
                 "a number >= 0 (0 = no time cadence)"),
                ("keep_last", keep_last, _is_int(keep_last) and (keep_last >= 1 or keep_last == -1),
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
        if self.save_on_signal:
            # Installed last, over Lightning's own SIGTERM handler (which would end the fit with exit code 0).
            self.signals = SignalLatch(STOP_SIGNALS + _slurm_requeue_signals(trainer), rank=trainer.global_rank)
            if trainer.received_sigterm:  # arrived between Lightning's handler registration and now
                self.signals.trip(signal.SIGTERM)
            self.signals.install()
        directory = Path(self.dirpath)
        if not trainer.ckpt_path and any(self._step_checkpoints(directory)):
            # Only reachable with a fixed directory (explicit dirpath or no logger): logger versions are fresh.
            raise MRQUserError(
                f"checkpoint directory {directory} already holds checkpoints of another run, and this fit does not "
                "resume it. Fix: add --ckpt_path last to resume it, or choose another --checkpoint.dirpath."
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
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
        if signum in _slurm_requeue_signals(trainer) and trainer.is_global_zero:
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
    @staticmethod
    def _step_checkpoints(directory: Path) -> list[tuple[int, Path]]:
        if not directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_file()]
        return sorted(found)

    def save(self, trainer, pl_module) -> Path:
        """Write the checkpoint of the current env step (all ranks must call this)."""
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
            _atomic_link_or_copy(ckpt, directory / LAST)
            self._prune(directory, keep=ckpt)
        strategy.barrier("mrq_checkpoint_done")
        self._last_saved_step = step
        self._last_save_time = time.monotonic()
        self.last_model_path = str(ckpt)
        self.best_model_path = str(ckpt)
        self.last_save_seconds = time.perf_counter() - t0
        if trainer.is_global_zero:
            self.last_save_bytes = _tree_bytes(ckpt) + _tree_bytes(sidecar)
            rank_zero_info(
                f"MR.Q checkpoint at env step {step}: {ckpt} ({_human_bytes(self.last_save_bytes)} with the replay "
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

    @staticmethod
    def run_config(trainer, module=None, datamodule=None) -> dict[str, Any]:
        """What a run must share with a checkpoint to resume it (written to ``mrq_run.json``, compared by
        ``--ckpt_path last``): env, seed, model hyperparameters, data settings, precision and number of ranks.
        ``module`` / ``datamodule``: before ``fit`` attaches them, the ones it will train."""
        module = module or trainer.lightning_module
        datamodule = datamodule or trainer.datamodule
        model = {k: v for k, v in sorted(module.hparams.items()) if k not in RESUME_FREE_HPARAMS and not k.startswith("_")}
        return {"env": datamodule.env_name, "seed": datamodule.seed, "world_size": trainer.world_size,
                "precision": str(trainer.precision), "model": model, "data": datamodule.resume_config()}  # fmt: skip

    def _write_run_file(self, directory: Path, trainer) -> None:
        path = directory / RUN_FILE
        info = json.loads(json.dumps({"format": CKPT_FORMAT, **self.run_config(trainer), "slurm_job_id": slurm_job_id()}))
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
        checkpoints = [p for _, p in self._step_checkpoints(directory) if p != keep]
        older_kept = len(checkpoints) if self.keep_last == -1 else self.keep_last - 1
        doomed = checkpoints[: max(len(checkpoints) - older_kept, 0)]
        for path in doomed:
            path.unlink(missing_ok=True)
        keep_sidecars = {p.name[: -len(".ckpt")] + SIDECAR_SUFFIX for _, p in self._step_checkpoints(directory)}
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
        runs = []
        for directory in self._candidate_dirs(trainer):
            if (directory / LAST).is_file():
                try:
                    info = json.loads((directory / RUN_FILE).read_text())
                except (OSError, ValueError):
                    info = None
                runs.append((directory / LAST, info if isinstance(info, dict) else None))
        return runs

    def _config_differences(self, mine: dict, info: dict | None) -> list[str]:
        """How a saved run's configuration differs from ``mine`` (empty: it can be resumed)."""
        if info is None:
            return []  # no run file (written before the first checkpoint of a run): the checkpoint checks itself
        mine = json.loads(json.dumps(mine))
        diffs = []
        for key, value in mine.items():
            saved = info.get(key, value)  # a run file of an older version compares on what it has
            if isinstance(value, dict) and isinstance(saved, dict):
                diffs += [f"{key}.{k}: {saved.get(k)!r} there, {v!r} here" for k, v in value.items() if saved.get(k, v) != v]
            elif saved != value:
                diffs.append(f"{key}: {saved!r} there, {value!r} here")
        return diffs

    def _newest_matching(self, mine: dict, runs) -> tuple[Path | None, list[str]]:
        best, skipped = None, []
        for last, info in runs:
            diffs = self._config_differences(mine, info)
            if diffs:
                skipped.append(f"{last.parent.parent.name} ({'; '.join(diffs[:3])}{' ...' if len(diffs) > 3 else ''})")
            elif best is None or last.stat().st_mtime > best.stat().st_mtime:
                best = last
        return best, skipped

    def find_last(self, trainer) -> Path | None:
        """The newest ``last.ckpt`` of a run with this configuration (see the module docstring), or ``None``."""
        datamodule = trainer.datamodule
        best, skipped = self._newest_matching(self.run_config(trainer), self._saved_runs(trainer))
        if best is None:
            rank_zero_warn(
                f"--ckpt_path last: no earlier run of {datamodule.env_name} with seed {datamodule.seed} and this "
                "configuration found" + (f" (skipped: {', '.join(skipped)})" if skipped else "") + "; starting a fresh run."
            )
            return None
        steps = self._step_checkpoints(best.parent)
        rank_zero_info(
            f"--ckpt_path last: resuming run {best.parent.parent}"
            + (f" from env step {steps[-1][0]}" if steps else "")
            + (f" (skipped runs of other configurations: {', '.join(skipped)})" if skipped else "")
        )
        return best

    def find_requeued(self, trainer, job_id: str, module, datamodule) -> Path | None:
        """SLURM: the ``last.ckpt`` of this configuration's run that job ``job_id`` saved before being requeued
        (called before ``fit``: ``module`` and ``datamodule`` are the ones it will train)."""
        runs = [(last, info) for last, info in self._saved_runs(trainer) if info and info.get("slurm_job_id") == job_id]
        best, skipped = self._newest_matching(self.run_config(trainer, module, datamodule), runs)
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
            third_party.pin_logger_version(logger, _version_of(run_dir))
            rank_zero_info(f"Resuming run directory {run_dir}")

    def _find_last_checkpoints(self, trainer) -> set[str]:
        # A private Lightning hook (lightning 2.6.6; listed in third_party.py): called for ckpt_path="last", before
        # the logger picks its version directory.
        last = self.find_last(trainer)
        if last is None:
            return set()
        if trainer.state.fn in ("fit", "test"):  # test logs into the run it evaluates
            self.continue_run_of(trainer, last)
        return {str(last)}
