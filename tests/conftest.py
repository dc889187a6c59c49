"""Shared test helpers: the CLI runner, the TensorBoard reader and the repository paths.

Tiers (markers in pyproject.toml):

* fast, for development: ``pytest -m "not slow and not envs"`` (under 2 minutes on 2 CPU cores);
* ``envs``: tests that build real simulators (MuJoCo, dm_control, ALE);
* ``slow``: end-to-end runs through the real CLI (subprocesses).

CI runs everything: ``pytest -q -p no:cacheprovider``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lightning  # noqa: F401  (see below)
import pytest

# `import lightning` attaches a StreamHandler to sys.stderr as it is at that moment. Imported first inside a test
# that captures stderr, the handler would keep writing to that capture after it is closed ("Logging error" in later
# tests); imported here, during collection, it holds the real stderr.

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# A fresh interpreter importing torch, TorchRL and a simulator takes ~5 s on an idle 2-core machine and several
# times that under load; subprocesses that only import get this much before they count as hung.
COLD_IMPORT_TIMEOUT = 300
SMOKE = ["--config", str(CONFIGS / "dmc.yaml"), "--config", str(CONFIGS / "smoke.yaml"),
         "--data.env", "Dmc-cartpole-balance", "--progress_bar.refresh_rate", "0"]  # fmt: skip


# Under pytest-xdist (CI and the README's test command run three workers on two cores) every worker and every
# subprocess uses one torch thread: two 2-thread jobs on 2 cores slow each other down ~10x. Run alone, tests that
# train through the CLI use both cores.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
CLI_THREADS = 1 if WORKER else 2
if WORKER:
    import torch

    torch.set_num_threads(1)


# The longest files, longest first (their summed test times in one suite run, 2026-12-01: 458, 370, 202, 149, 146,
# 132, 115, 110, 72, 29, 23, 22 s). Each xdist worker takes one file at a time, in this order (pyproject's
# --no-loadscope-reorder); the sweep file is one chain of 5-7 minutes, so it must start first.
LONGEST_FILES = ("test_sweep.py", "test_resume.py", "test_ddp_precision.py", "test_resume_kinds.py", "test_training.py",
                 "test_own_envs.py", "test_pixels_cli.py", "test_notebooks.py", "test_loggers.py", "test_compile.py",
                 "test_hyperparameters.py", "test_example.py")  # fmt: skip


def pytest_collection_modifyitems(config, items) -> None:
    """Run the longest files first (order within a file kept)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))


def cli_env(threads: int = 1, **extra: str) -> dict[str, str]:
    """Environment for a subprocess: headless MuJoCo, ``threads`` torch threads (two 2-thread jobs on 2 cores
    slow each other down ~10x), plus ``extra``."""
    return {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "OMP_NUM_THREADS": str(threads), **extra}


def run_cli(args: list[str], cwd: Path, *, timeout: int = 600, threads: int = 1) -> subprocess.CompletedProcess:
    """``python -m mrq_lightning <args>`` in ``cwd``; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "mrq_lightning", *args], cwd=cwd, env=cli_env(threads), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def run_ok(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """:func:`run_cli` that must exit 0 (the assertion shows the end of stderr)."""
    proc = run_cli(args, cwd, **kwargs)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def tensorboard_scalars(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run directory (all event files, purged as TensorBoard shows them) or of one event file:
    ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_videos(path: str | Path) -> dict[str, list[tuple[int, bytes]]]:
    """Every video (an animated GIF in an image summary, as TensorBoard's add_video writes them) of a run directory:
    ``{tag: [(step, gif bytes), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [(e.step, e.encoded_image_string) for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def scalar_steps(path: str | Path) -> dict[str, list[int]]:
    """The steps of every scalar tag (see :func:`tensorboard_scalars`)."""
    return {tag: [step for step, _ in values] for tag, values in tensorboard_scalars(path).items()}


def load_checkpoint(ckpt: Path, rank: int = 0) -> tuple[dict, dict, dict]:
    """A ``.ckpt``, the rank state and the replay-buffer state of its sidecar for ``rank``; every file must load."""
    import torch

    checkpoint = torch.load(ckpt, weights_only=True)
    sidecar = Path(ckpt).parent / checkpoint["MRQDataModule"]["sidecar"] / f"rank{rank}"
    rank_state = torch.load(sidecar / "state.pt", weights_only=True)
    buffer = torch.load(sidecar / "buffer" / "state.pt", weights_only=True)
    assert checkpoint["mrq"]["env_steps"] == rank_state["env_steps"] == checkpoint["MRQDataModule"]["env_steps"]
    assert buffer["storage"]["size"] == rank_state["buffer"]["size"]
    return checkpoint, rank_state, buffer


def assert_same(a, b, path: str = "") -> None:
    """Nested dicts / lists / tensors equal bit for bit (dtype and shape included); the message names the path."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"tensors differ at {path}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"keys differ at {path}: {set(a) ^ set(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# The smoke overlay on DMC cartpole-balance: 600 env steps, 100 random, seed 0 (tests/test_training.py, test_example.py).
SMOKE_FIT_THREADS = 1  # one thread: bit-exact comparisons across processes never depend on threaded GEMM splits


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The directory of one ``fit --config configs/dmc.yaml --config configs/smoke.yaml`` run on Dmc-cartpole-balance
    (logs under ``logs/mrq/version_0``), shared by every test that inspects it.

    Evaluation videos are on (every 2nd evaluation: env steps 0 and 600, 60 env steps each, also as mp4 in ``videos/``): the tests comparing
    this run with runs without videos (test_example.py, test_loggers.py) also show that videos change nothing."""
    args = ["fit", "--config", str(CONFIGS / "dmc.yaml"), "--config", str(CONFIGS / "smoke.yaml"),
            "--data.env", "Dmc-cartpole-balance", "--video.every_n_evals", "2", "--video.max_steps", "60",
            "--video.save_dir", "videos"]  # fmt: skip
    return shared_run("smoke", lambda cwd: run_ok(args, cwd, threads=SMOKE_FIT_THREADS), tmp_path_factory)


def shared_run(name: str, make: Callable[[Path], object], tmp_path_factory) -> Path:
    """A directory made once per test session by ``make(directory)``, for every xdist worker.

    A session fixture runs once per worker, and three test files on three workers would each train the same run:
    the first worker makes it under the lock, the others wait and reuse it (read-only; tests copy what they
    change). A failed ``make`` leaves no marker, so each waiting worker retries and reports the failure itself."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent if WORKER else tmp_path_factory.getbasetemp()
    directory, made = shared / name, shared / f"{name}.made"
    with FileLock(str(shared / f"{name}.lock")):
        if not made.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            make(directory)
            made.touch()
    return directory


def gif_summary(gif: bytes, fps: float) -> tuple[int, tuple[int, int]]:
    """``(frames, (width, height))`` of an animated GIF written at ``fps`` by ``gif_bytes``. Pillow merges a frame
    identical to the one before it into that frame (adding up their delays), so frames are counted by duration: the
    delays are whole 10 ms, rounded cumulatively, so the total is within 10 ms of frames / fps."""
    from PIL import Image

    image = Image.open(io.BytesIO(gif))
    total_ms = 0
    for index in range(image.n_frames):
        image.seek(index)
        total_ms += image.info["duration"]
    frames = round(total_ms * fps / 1000)
    assert abs(total_ms - frames * 1000 / fps) <= 10
    return frames, image.size
