"""Crash-safe file writes shared by the replay buffer and the Lightning checkpoints (no Lightning import)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["fsync_directory", "atomic_torch_save", "atomic_write_text"]


def fsync_directory(path: str | os.PathLike) -> None:
    """Best-effort fsync of a directory so that a rename inside it survives a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a hidden temporary file in the same directory, fsync, then rename into place.

    Readers see either the previous file or the complete new one, never a partial write.
    """
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) the same crash-safe way as :func:`atomic_torch_save`."""
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(path.parent)
