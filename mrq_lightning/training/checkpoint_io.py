"""Checkpoint files: names, crash-safe writes, readable errors, sizes, weight digests, writable directories.

The mechanics under :class:`~mrq_lightning.training.checkpoint.MRQCheckpoint` (which decides *when* and *what* to
save); see its module docstring for the layout and the write order.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mrq_lightning.atomic_io import atomic_torch_save, fsync_directory
from mrq_lightning.errors import CheckpointError, ConfigurationError
from mrq_lightning.training.resume import CKPT_FORMAT

__all__ = [
    "LAST", "RUN_FILE", "SIDECAR_SUFFIX", "AtomicCheckpointIO", "atomic_link_or_copy", "check_writable_directory",
    "env_step_name", "human_bytes", "missing_checkpoint_error", "state_digest", "step_checkpoints", "tree_bytes",
]  # fmt: skip

RUN_FILE = "mrq_run.json"
SIDECAR_SUFFIX = ".replay"
LAST = "last.ckpt"
STEP_RE = re.compile(r"^env_step=(\d+)\.ckpt$")


def env_step_name(step: int) -> str:
    return f"env_step={step:07d}"


def atomic_link_or_copy(src: Path, dst: Path) -> None:
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


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


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


def step_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(env step, path)`` of every ``env_step=*.ckpt`` in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_RE.match(p.name)) and p.is_file()]
    return sorted(found)


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes, bytes): equal digests = identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def version_of(run_dir: Path) -> int | str:
    match = re.fullmatch(r"version_(\d+)", run_dir.name)
    return int(match.group(1)) if match else run_dir.name
