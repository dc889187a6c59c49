"""Replay-buffer persistence: the on-disk checkpoint format of :class:`~mrq_lightning.data.MRQReplayBuffer`.

A checkpoint is a directory holding ``meta.json`` (format and config, readable without torch) and ``state.pt``
(the buffer's ``state_dict``), written atomically. :meth:`MRQReplayBuffer.dumps` / :meth:`MRQReplayBuffer.loads`
delegate here. Nothing from the buffer module is imported: the buffer is used through ``state_dict``,
``load_state_dict``, ``config_mismatch`` and ``device``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
import torch

from mrq_lightning.atomic_io import fsync_directory
from mrq_lightning.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "ReplayBufferCheckpointError", "read_buffer_dir", "write_buffer_dir"]

CHECKPOINT_FORMAT = "mrq_lightning.replay/1"
_META_FILE = "meta.json"
_STATE_FILE = "state.pt"


class ReplayBufferCheckpointError(CheckpointError):
    """A replay-buffer checkpoint directory is corrupt or does not match the buffer it is loaded into."""


def write_buffer_dir(buffer, path: str | os.PathLike) -> None:
    """Write ``buffer`` to directory ``path`` atomically (see :meth:`MRQReplayBuffer.dumps`)."""
    path = Path(path).absolute()
    if path.exists():
        if not path.is_dir():
            raise ReplayBufferCheckpointError(f"cannot write replay buffer to {path}: it is not a directory")
        if any(path.iterdir()) and not (path / _META_FILE).is_file():
            raise ReplayBufferCheckpointError(
                f"refusing to replace {path}: it is a non-empty directory without {_META_FILE}, "
                "not a replay buffer checkpoint"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)
        state = buffer.state_dict()
        with open(tmp / _STATE_FILE, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        meta = {"format": CHECKPOINT_FORMAT, "config": state["config"], "size": state["storage"]["size"]}
        with open(tmp / _META_FILE, "w") as handle:
            json.dump(meta, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(path.parent)


def read_buffer_dir(buffer, path: str | os.PathLike) -> None:
    """Load a directory written by :func:`write_buffer_dir` into ``buffer`` (see :meth:`MRQReplayBuffer.loads`)."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"replay buffer checkpoint {path} does not exist")
    if not path.is_dir():
        raise ReplayBufferCheckpointError(f"replay buffer checkpoint {path} is not a directory")
    try:
        with open(path / _META_FILE) as handle:
            meta = json.load(handle)
    except (OSError, ValueError) as err:
        raise ReplayBufferCheckpointError(
            f"replay buffer checkpoint {path} is corrupt or incomplete: cannot read {_META_FILE} ({err})"
        ) from err
    found = meta.get("format") if isinstance(meta, dict) else meta
    if found != CHECKPOINT_FORMAT or not isinstance(meta, dict):
        raise ReplayBufferCheckpointError(
            f"replay buffer checkpoint {path}: unknown format {found!r} (expected {CHECKPOINT_FORMAT!r})"
        )
    mismatch = buffer.config_mismatch(meta.get("config"))
    if mismatch:
        raise ReplayBufferCheckpointError(f"replay buffer checkpoint {path} does not match this buffer: {mismatch}")
    try:
        # mmap on CPU: tensors are paged in while being copied into the ring, not held twice in memory.
        state = torch.load(
            path / _STATE_FILE, map_location=buffer.device, weights_only=True, mmap=buffer.device.type == "cpu"
        )
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ReplayBufferCheckpointError(
            f"replay buffer checkpoint {path} is corrupt or incomplete: cannot load {_STATE_FILE} ({err})"
        ) from err
    try:
        buffer.load_state_dict(state)
    except ValueError as err:
        raise ReplayBufferCheckpointError(f"replay buffer checkpoint {path} is invalid: {err}") from err
