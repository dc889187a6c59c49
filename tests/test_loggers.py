"""Other loggers than TensorBoard: a ``CSVLogger`` (``--trainer.logger lightning.pytorch.loggers.CSVLogger``) and W&B
in offline mode get the same scalars at the same env steps as TensorBoard, and a resumed run continues them (a
``metrics.csv`` kept, although Lightning's CSV writer would delete it when it reopens the run directory; the same W&B
run id)."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOKE, run_ok, tensorboard_scalars

pytestmark = pytest.mark.slow

CSV = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", "logs"]
TIMING = ("perf/",)  # wall-clock rates differ between any two runs


def csv_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {env step: value}}`` from a CSVLogger's metrics.csv (one row per logging call)."""
    scalars: dict[str, dict[int, float]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.pop("step")))
            for tag, value in row.items():
                if value != "":
                    scalars.setdefault(tag, {})[step] = float(value)
    return scalars


def without_timing(scalars: dict) -> dict:
    return {tag: values for tag, values in scalars.items() if not tag.startswith(TIMING)}


def test_csv_logger_gets_the_tensorboard_scalars_and_resume_continues_them(smoke_run, tmp_path):
    """A CSV run split at env step 300 and resumed to 600 logs exactly what the straight TensorBoard smoke run logs
    (same seed and settings): the same tags, at the same env steps, with the same values (float32 in TensorBoard)."""
    run_ok(["fit", *SMOKE, *CSV, "--data.total_steps", "300"], tmp_path)  # split at an evaluation step
    first_part = csv_scalars(tmp_path / "logs" / "mrq" / "version_0")
    proc = run_ok(["fit", *SMOKE, *CSV, "--ckpt_path", "last"], tmp_path)
    assert "MR.Q resumes at env step 300" in proc.stderr
    assert not (tmp_path / "logs" / "mrq" / "version_1").exists()  # the same run directory, continued
    resumed = csv_scalars(tmp_path / "logs" / "mrq" / "version_0")
    up_to_300 = {tag: {s: v for s, v in values.items() if s <= 300} for tag, values in resumed.items()}
    assert {tag: values for tag, values in up_to_300.items() if values} == first_part  # rows up to the checkpoint kept
    as_float32 = {tag: {step: float(np.float32(v)) for step, v in values.items()} for tag, values in resumed.items()}
    board = tensorboard_scalars(smoke_run / "logs" / "mrq" / "version_0")
    assert without_timing(as_float32) == without_timing({tag: dict(points) for tag, points in board.items()})
    assert sorted(resumed["eval/return"]) == [0, 300, 600] and max(resumed["buffer/size"]) == 600


WANDB = ["--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.offline", "true",
         "--trainer.logger.save_dir", "wandb_runs", "--trainer.logger.project", "mrq", "--trainer.logger.id", "mrqtest1"]  # fmt: skip
VIDEOS = ["--video.every_n_evals", "2", "--video.max_steps", "60"]  # as the smoke run's


def _wandb_records(path: Path):
    """The records of an offline ``.wandb`` file: a 7-byte W&B header, then the LevelDB log format (32 KiB blocks of
    chunks with a 7-byte header: crc32c, length, kind = full / first / middle / last). Read by hand because wandb 0.31
    no longer ships a Python reader (its Go core writes and syncs these files)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, parts = path.read_bytes(), 32768, 7, []
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 2):
            parts = [payload]
        elif kind in (3, 4):
            parts.append(payload)
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def wandb_history(save_dir: Path) -> tuple[dict[str, dict[int, float]], dict[str, list[int]]]:
    """Scalars ``{tag: {env step: value}}`` and videos ``{tag: [env steps]}`` of every offline run under ``save_dir``,
    by W&B's x-axis metric (``trainer/global_step``, which MR.Q fills with the env step)."""
    scalars: dict[str, dict[int, float]] = {}
    videos: dict[str, list[int]] = {}
    for run_file in sorted(save_dir.rglob("run-*.wandb")):
        for record in _wandb_records(run_file):
            if record.WhichOneof("record_type") != "history":
                continue
            items = [([item.key] if item.key else list(item.nested_key), json.loads(item.value_json))
                     for item in record.history.item]
            step = int(next(value for path, value in items if path == ["trainer/global_step"]))
            for path, value in items:
                if path[-1] == "_type" and value == "videos":  # a logged list of videos: {_type, videos, ...}
                    videos.setdefault(path[0], []).append(step)
                elif len(path) == 1 and not path[0].startswith(("_", "trainer/")):  # not W&B's _step, _runtime ...
                    scalars.setdefault(path[0], {})[step] = float(value)
    return scalars, videos


def test_wandb_offline_gets_the_tensorboard_scalars_and_resume_continues_them(smoke_run, tmp_path):
    """The CSV test's protocol with W&B offline (videos on, as in the smoke run): split at 300 and resumed with the
    same run id, the two offline runs hold every scalar of the straight TensorBoard run at the same env steps."""
    run_ok(["fit", *SMOKE, *WANDB, *VIDEOS, "--data.total_steps", "300"], tmp_path)
    (checkpoint,) = (tmp_path / "wandb_runs").rglob("env_step=0000300.ckpt")
    proc = run_ok(["fit", *SMOKE, *WANDB, *VIDEOS, "--ckpt_path", str(checkpoint)], tmp_path)
    assert "MR.Q resumes at env step 300" in proc.stderr
    scalars, videos = wandb_history(tmp_path / "wandb_runs")
    as_float32 = {tag: {step: float(np.float32(v)) for step, v in values.items()} for tag, values in scalars.items()}
    board = tensorboard_scalars(smoke_run / "logs" / "mrq" / "version_0")
    assert without_timing(as_float32) == without_timing({tag: dict(points) for tag, points in board.items()})
    # A video after evaluations 0 and 2 of the straight run, and after the first part's last one (env step 300).
    assert videos == {"eval/video/camera": [0, 300, 600]}
    assert len(list((tmp_path / "wandb_runs").rglob("*.mp4"))) == 3
