"""Other loggers than TensorBoard: a ``CSVLogger`` (``--trainer.logger lightning.pytorch.loggers.CSVLogger``) gets the
same scalars at the same env steps, and a resumed run continues its ``metrics.csv`` (Lightning's CSV writer would
delete it when it reopens the run directory)."""

from __future__ import annotations

import csv
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
