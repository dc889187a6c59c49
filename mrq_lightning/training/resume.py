"""Resume mechanics in one place: RNG states, the per-rank sidecar state, checkpoint section checks, TensorBoard.

A checkpoint is a Lightning ``.ckpt`` (rank 0) plus one sidecar directory per rank (see ``checkpoint.py`` for the
layout and write order). This module holds what both halves need to agree on, as functions with explicit
arguments:

* :func:`capture_rng` / :func:`restore_rng`: the process-global random streams (python, numpy, torch CPU and the
  rank's CUDA device);
* :func:`write_rank_state` / :func:`read_rank_state`: a rank's replay buffer and rank-local state;
* :func:`check_module_section` / :func:`check_data_section`: refuse a checkpoint that cannot resume this run, with
  a :class:`CheckpointError` naming the file and the fix;
* :func:`purge_tensorboard_from`: hide what a crashed run logged after its checkpoint (from the next env step);
* :func:`keep_csv_history` / :func:`restore_csv_history`: the same for a ``CSVLogger``, whose writer deletes the
  run's ``metrics.csv`` when it opens a directory that has one (lightning 2.6).
"""

from __future__ import annotations

import csv
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrq_lightning import third_party
from mrq_lightning.atomic_io import atomic_torch_save
from mrq_lightning.errors import CheckpointError

__all__ = [
    "BUFFER_DIR",
    "CKPT_FORMAT",
    "RANK_STATE_FILE",
    "RANK_STATE_FORMAT",
    "RESUME_FREE_HPARAMS",
    "capture_rng",
    "check_data_section",
    "check_module_section",
    "keep_csv_history",
    "purge_tensorboard_from",
    "read_rank_state",
    "restore_csv_history",
    "restore_rng",
    "write_rank_state",
]

CKPT_FORMAT = "mrq_lightning.ckpt/1"
RANK_STATE_FORMAT = "mrq_lightning.rank_state/1"
RANK_STATE_FILE = "state.pt"
BUFFER_DIR = "buffer"
# Model hyperparameters that may differ between a checkpoint and the run resuming it.
RESUME_FREE_HPARAMS = frozenset({"log_every_n_env_steps", "compile"})
_FRESH = "drop --ckpt_path to start a fresh run"
_FIX = "Fix: resume with the configuration of the original run, or drop --ckpt_path to start a fresh run."


# ------------------------------------------------------------------------------------------------ RNG states
def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """Global RNG states, loadable with ``torch.load(weights_only=True)``: python, numpy's legacy global stream,
    torch CPU and, on a GPU, the CUDA generator of ``device`` only.

    (``torchrl.checkpoint.GlobalRNGState`` is not used: it saves and restores the generator of *every* CUDA device,
    so under DDP each rank would touch, and create a context on, every GPU of the node.)
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": "random_state", "state": (name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss),
                                                    float(cached))},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`capture_rng` output."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]["state"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# ------------------------------------------------------------------------------------------------ rank state
def write_rank_state(rank_dir: str | Path, buffer, state: dict[str, Any]) -> None:
    """Write a rank's replay buffer, then its state (each atomically): a complete ``state.pt`` implies the buffer."""
    rank_dir = Path(rank_dir)
    buffer.dumps(rank_dir / BUFFER_DIR)
    atomic_torch_save({"format": RANK_STATE_FORMAT, **state}, rank_dir / RANK_STATE_FILE)


def read_rank_state(rank_dir: Path, buffer, *, ckpt: Path | None, env_steps: int, env_name: str) -> dict[str, Any]:
    """Validate and load a rank's sidecar: the replay buffer goes into ``buffer``; the state dict is returned."""
    state_file = rank_dir / RANK_STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(
            f"checkpoint {ckpt}: its replay sidecar {rank_dir} is missing or incomplete (no {RANK_STATE_FILE}). "
            f"Resuming needs the directory {rank_dir.parent.name} beside the .ckpt. Fix: copy it next to the "
            "checkpoint, resume from another checkpoint, or start a fresh run without --ckpt_path."
        )
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means a corrupt file
        raise CheckpointError(f"checkpoint {ckpt}: rank state {state_file} is corrupt ({err}). {_FIX}") from err
    if (
        not isinstance(state, dict)
        or state.get("format") != RANK_STATE_FORMAT
        or state.get("env_steps") != env_steps
        or state.get("env") != env_name
    ):
        found = state.get("env_steps") if isinstance(state, dict) else "?"
        raise CheckpointError(
            f"checkpoint {ckpt}: rank state {state_file} does not belong to it (env steps {found} vs {env_steps}). "
            f"{_FIX}"
        )
    try:
        buffer.loads(rank_dir / BUFFER_DIR)
    except (CheckpointError, FileNotFoundError) as err:
        raise CheckpointError(f"checkpoint {ckpt}: cannot restore the replay buffer: {err}. {_FIX}") from err
    expected = state["buffer"]
    if len(buffer) != expected["size"] or int(buffer.write_count) != expected["write_count"]:
        raise CheckpointError(
            f"checkpoint {ckpt}: replay buffer in {rank_dir} holds {len(buffer)} slots / {buffer.write_count} "
            f"writes, the rank state expects {expected['size']} / {expected['write_count']}. {_FIX}"
        )
    return state


# ------------------------------------------------------------------------------------------------ .ckpt sections
def check_module_section(
    checkpoint: Mapping[str, Any],
    *,
    path: Any,
    env_name: str,
    hparams: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    fitting: bool,
    data_section: str,
) -> dict[str, Any]:
    """Refuse a checkpoint that was not written by this trainer, for this env, with these shapes (and, to resume
    training, with these hyperparameters and a datamodule section). Returns its ``mrq`` section."""
    section = checkpoint.get("mrq")
    if not isinstance(section, dict) or section.get("format") != CKPT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} was not written by mrq_lightning's trainer (no {CKPT_FORMAT!r} section). Fix: pass "
            f"a checkpoint saved by `python -m mrq_lightning fit` (e.g. --ckpt_path last), or {_FRESH}."
        )
    if section["env"] != env_name:
        raise CheckpointError(
            f"checkpoint {path} was trained on {section['env']}, this run is configured for {env_name}. "
            f"Fix: pass --data.env {section['env']} with the original config to resume it, or {_FRESH}."
        )
    if fitting and data_section not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} has no {data_section} state (replay sidecar, env state); it cannot resume "
            f"training. Fix: resume from a checkpoint written by `fit`, or {_FRESH}."
        )
    saved_hp = checkpoint.get("hyper_parameters", {})
    diffs = [f"model.{k}: checkpoint {saved_hp.get(k)!r}, now {v!r}" for k, v in hparams.items()
             if k not in RESUME_FREE_HPARAMS and k in saved_hp and saved_hp[k] != v]  # fmt: skip
    saved_sd = checkpoint.get("state_dict", {})
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, now {tuple(state_dict[k].shape) if k in state_dict else 'absent'}"
              for k, v in saved_sd.items() if k not in state_dict or tuple(state_dict[k].shape) != tuple(v.shape)]  # fmt: skip
    shapes += [f"{k}: missing from the checkpoint" for k in state_dict if k not in saved_sd]
    if shapes or (fitting and diffs):
        details = "; ".join((diffs + shapes)[:8]) + (" ..." if len(diffs + shapes) > 8 else "")
        raise CheckpointError(
            f"checkpoint {path} was written with a different model configuration ({details}). Fix: use the same "
            f"--config files and overrides as the run that wrote it, or {_FRESH}."
        )
    return section


def check_data_section(section: Mapping[str, Any], *, path: Any, config: Mapping[str, Any], world_size: int) -> str:
    """Refuse a checkpoint whose data config or number of ranks differ from this run; returns its sidecar name."""
    saved = section.get("config", {})
    mismatch = [f"data.{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in config.items() if saved.get(k) != v]
    if mismatch:
        raise CheckpointError(f"checkpoint {path} does not match this run's data config ({'; '.join(mismatch)}). {_FIX}")
    if section.get("world_size") != world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by {section.get('world_size')} rank(s), this run has {world_size}: every "
            f"rank restores its own env, RNG and replay buffer. Fix: resume with --trainer.devices "
            f"{section.get('world_size')} (same strategy and node count)."
        )
    if not section.get("sidecar"):
        raise CheckpointError(f"checkpoint {path} names no replay sidecar; it cannot resume training. {_FIX}")
    return str(section["sidecar"])


# ------------------------------------------------------------------------------------------------ TensorBoard
def purge_tensorboard_from(logger, step: int) -> None:
    """Hide the events a crashed run wrote at env steps >= ``step``; the resumed run writes them again.

    TensorBoard drops every event read so far with a step >= ``step`` when it meets a ``SessionLog.START`` event at
    ``step`` (what ``SummaryWriter(purge_step=...)`` writes). Lightning opens the writer before the checkpoint is
    restored (its setup hook touches ``logger.experiment``), so the event usually goes into the open file.
    """
    writer = third_party.open_tensorboard_file_writer(logger)
    if writer is None:
        third_party.set_tensorboard_purge_step(logger, step)
        return
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    writer.add_event(Event(step=step, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START)))


# ------------------------------------------------------------------------------------------------ CSV logger
_CSV_HISTORY: dict[str, tuple[list[str], list[dict]]] = {}  # metrics.csv path -> (header, rows), until restored
CSV_BACKUP_SUFFIX = ".resume"  # metrics.csv.resume: the history on disk until it is written back


def keep_csv_history(logger, run_dir: Path) -> None:
    """Read a resumed run's ``metrics.csv`` before Lightning's CSV writer opens the directory and deletes it, and
    keep a copy beside it until :func:`restore_csv_history` has written it back (a resume that fails in between,
    or is interrupted, loses nothing: the next one reads the copy)."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    path = Path(run_dir) / "metrics.csv"
    backup = path.with_name(path.name + CSV_BACKUP_SUFFIX)
    if not isinstance(logger, CSVLogger) or rank_zero_only.rank != 0:
        return
    if path.is_file():
        shutil.copyfile(path, backup)
    if backup.is_file():
        with open(backup, newline="") as f:
            reader = csv.DictReader(f)
            _CSV_HISTORY[str(path.absolute())] = (list(reader.fieldnames or []), list(reader))


def restore_csv_history(logger, step: int | None) -> None:
    """Write back the rows :func:`keep_csv_history` read, those up to env step ``step`` (all for ``None``): the
    resumed run appends after them, as TensorBoard continues after its purge step."""
    from lightning.pytorch.loggers import CSVLogger

    if not isinstance(logger, CSVLogger):
        return
    writer = logger.experiment  # opening it is what deleted the file (a no-op stand-in on ranks other than 0)
    if not isinstance(getattr(writer, "metrics_file_path", None), str):
        return
    path = Path(writer.metrics_file_path).absolute()
    kept = _CSV_HISTORY.pop(str(path), None)
    if kept is None:
        return
    header, rows = kept
    rows = [row for row in rows if step is None or not row.get("step") or int(float(row["step"])) <= step]
    keys = sorted(set(writer.metrics_keys) | set(header))  # Lightning appends under its sorted keys
    with open(path, "w", newline="") as f:
        csv_writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        csv_writer.writeheader()
        csv_writer.writerows(rows)
    writer.metrics_keys = keys
    path.with_name(path.name + CSV_BACKUP_SUFFIX).unlink(missing_ok=True)
