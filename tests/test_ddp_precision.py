"""Distributed data parallel (2 CPU processes, gloo) and bf16-mixed smoke fits through the real CLI and the config
overlays; 16-mixed is refused with a clear message."""

from __future__ import annotations

import hashlib
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CONFIGS, SMOKE, assert_same, cli_env, load_checkpoint, run_ok, tensorboard_scalars

BASE = ["fit", *SMOKE, "--data.total_steps", "200"]
DDP = ["--config", str(CONFIGS / "overlays" / "ddp.yaml"), "--trainer.accelerator", "cpu"]
RUN_DIR = Path("logs") / "mrq" / "version_0"

_cli, _scalar_values = run_ok, tensorboard_scalars


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    proc = _cli([*BASE, *DDP], cwd)
    return cwd, proc


def sha256_of(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every entry (name, dtype, shape, bytes) in name order, computed here from the saved tensors."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@pytest.mark.slow
def test_ddp_two_cpu_ranks_keep_identical_parameters(ddp_run):
    cwd, proc = ddp_run
    output = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in output and "MR.Q DDP: 2 ranks" in output
    assert "global batch 2 x 32 = 64" in output
    ckpt_dir = cwd / RUN_DIR / "checkpoints"
    checkpoint = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    # 100 random steps then 100 RL updates per rank (4 encoder bursts of 25 steps, each step all-reduced).
    assert checkpoint["mrq"]["world_size"] == 2 and checkpoint["mrq"]["rl_updates"] == 100
    sidecar = ckpt_dir / checkpoint["MRQDataModule"]["sidecar"]
    ranks = [torch.load(sidecar / f"rank{r}" / "state.pt", weights_only=True) for r in (0, 1)]
    buffers = [torch.load(sidecar / f"rank{r}" / "buffer" / "state.pt", weights_only=True) for r in (0, 1)]
    # Same weights, targets and reward scales on both ranks: each rank recorded the SHA-256 of its own state_dict
    # when saving; rank 0's saved weights hash to that value here, and rank 1 recorded the same one.
    assert len(checkpoint["state_dict"]) > 50
    assert sha256_of(checkpoint["state_dict"]) == ranks[0]["state_digest"] == ranks[1]["state_digest"]
    assert ranks[0]["env_steps"] == ranks[1]["env_steps"] == 200
    # ... from different experience: own env seeds, own buffers, own RNG streams.
    assert not torch.equal(buffers[0]["storage"]["tensors"]["frames"], buffers[1]["storage"]["tensors"]["frames"])
    assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
    # r̄ = mean over ranks of each rank's mean |r| (algorithm §9). Syncs at RL updates 1, 26, 51, 76 = env steps 101,
    # 126, 151, 176 (no DMC episode ends before 500, so slot j holds env step j + 1): the last two syncs set r̄, r̄'.
    rewards = [b["storage"]["tensors"]["reward"].double() for b in buffers]
    expected = {at: sum(r[:at].abs().mean() for r in rewards).item() / 2 for at in (151, 176)}
    assert checkpoint["state_dict"]["loss_module.reward_scale"].item() == pytest.approx(expected[176], rel=1e-6)
    assert checkpoint["state_dict"]["loss_module.target_reward_scale"].item() == pytest.approx(expected[151], rel=1e-6)
    assert abs(rewards[0][:176].abs().mean() - rewards[1][:176].abs().mean()) > 1e-4  # the ranks' means differ
    # Rank 0 writes TensorBoard: env steps per rank on the x-axis, global env steps logged beside them.
    scalars = _scalar_values(cwd / RUN_DIR)
    assert [step for step, _ in scalars["eval/return"]] == [0, 200]
    assert all(value == 2 * step for step, value in scalars["train/global_env_steps"])


@pytest.mark.slow
def test_ddp_resume_is_exact_on_every_rank(ddp_run, tmp_path):
    """150 env steps per rank, then resumed to 200, equals 200 in one run: weights, optimizer states and, on each
    rank, the replay buffer, simulator, collector observation and RNG streams."""
    _cli([*BASE[:-2], "--data.total_steps", "150", *DDP], tmp_path)
    resumed = _cli([*BASE, *DDP, "--ckpt_path", "last"], tmp_path)
    assert "resumes at env step 150" in resumed.stdout + resumed.stderr
    name = RUN_DIR / "checkpoints" / "env_step=0000200.ckpt"
    for rank in (0, 1):
        straight, again = load_checkpoint(ddp_run[0] / name, rank), load_checkpoint(tmp_path / name, rank)
        assert_same(straight[0]["state_dict"], again[0]["state_dict"], "state_dict")
        assert_same(straight[0]["optimizer_states"], again[0]["optimizer_states"], "optimizer_states")
        assert_same(straight[2], again[2], f"rank {rank} replay buffer")
        # The first invocation evaluated at its budget end (150) too: only rank 0's eval env differs.
        skip = {"eval_env_states"}
        assert_same({k: v for k, v in straight[1].items() if k not in skip},
                    {k: v for k, v in again[1].items() if k not in skip}, f"rank {rank} state")  # fmt: skip


@pytest.mark.slow
def test_ddp_sigterm_to_rank_zero_stops_every_rank_at_one_env_step(ddp_run, tmp_path):
    """SIGTERM to the launching process (rank 0) only: both ranks save their sidecars at the same env step and exit
    (143); the resumed run equals the uninterrupted one on every rank."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrq_lightning", *BASE, *DDP, "--checkpoint.every_n_env_steps", "100"],
        cwd=tmp_path, env=cli_env(threads=1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    first = tmp_path / RUN_DIR / "checkpoints" / "env_step=0000100.ckpt"
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=600)[0]  # returns once every rank has closed the pipe
    assert proc.returncode == 143, out[-3000:]
    saved = torch.load(tmp_path / RUN_DIR / "checkpoints" / "last.ckpt", weights_only=True)["mrq"]["env_steps"]
    assert 100 < saved < 200, out[-3000:]
    for rank in (0, 1):
        state = load_checkpoint(tmp_path / RUN_DIR / "checkpoints" / "last.ckpt", rank)[1]
        assert state["env_steps"] == saved
    resumed = _cli([*BASE, *DDP, "--ckpt_path", "last"], tmp_path)
    assert f"resumes at env step {saved}" in resumed.stdout + resumed.stderr
    name = RUN_DIR / "checkpoints" / "env_step=0000200.ckpt"
    for rank in (0, 1):
        straight, again = load_checkpoint(ddp_run[0] / name, rank), load_checkpoint(tmp_path / name, rank)
        assert_same(straight[0]["state_dict"], again[0]["state_dict"], "state_dict")
        assert_same(straight[2], again[2], f"rank {rank} replay buffer")


@pytest.mark.slow
def test_ddp_checkpoint_needs_the_same_number_of_ranks(ddp_run, tmp_path, monkeypatch, capsys):
    from mrq_lightning.training.cli import main

    ckpt = ddp_run[0] / RUN_DIR / "checkpoints" / "last.ckpt"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([*BASE[:-2], "--data.total_steps", "300", "--ckpt_path", str(ckpt)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt} was written by 2 rank(s), this run has 1" in err and "--trainer.devices 2" in err


@pytest.mark.slow
def test_bf16_mixed_smoke_fit(tmp_path):
    proc = _cli([*BASE, "--config", str(CONFIGS / "overlays" / "bf16.yaml")], tmp_path)
    assert "bfloat16 Automatic Mixed Precision" in proc.stdout + proc.stderr
    scalars = _scalar_values(tmp_path / RUN_DIR)
    for tag in ("loss/encoder", "loss/value", "loss/policy", "train/q_mean", "eval/return"):
        assert scalars[tag] and all(math.isfinite(v) for _, v in scalars[tag]), tag
    # Weights and optimizer states stay fp32 under autocast.
    checkpoint = torch.load(tmp_path / RUN_DIR / "checkpoints" / "last.ckpt", weights_only=True)
    assert {v.dtype for k, v in checkpoint["state_dict"].items() if v.is_floating_point()} == {torch.float32}


def test_16_mixed_is_refused_with_a_clear_message():
    from mrq_lightning.errors import MRQUserError
    from mrq_lightning.training import MRQ

    module = MRQ()
    module._trainer = SimpleNamespace(precision="16-mixed")
    with pytest.raises(MRQUserError, match="use 32-true \\(default\\) or bf16-mixed"):
        module.setup("fit")


@pytest.mark.slow
def test_ddp_with_the_slot_warmup_starts_learning_on_every_rank_at_once(tmp_path):
    """Under official_quirks learning starts at a replay slot count (algorithm §16 Q9). With terminating episodes of
    different lengths the ranks' buffers cross it at different env steps; all ranks must still start together
    (once every rank's buffer is past it), or their collectives would pair up wrongly and hang."""
    _cli(["fit", "--config", str(CONFIGS / "gym.yaml"), "--config", str(CONFIGS / "smoke.yaml"),
          "--config", str(CONFIGS / "overlays" / "ddp.yaml"), "--trainer.accelerator", "cpu",
          "--data.env", "Gym-CartPole-v1", "--data.official_quirks", "true", "--data.total_steps", "200",
          "--progress_bar.refresh_rate", "0"], tmp_path)  # fmt: skip
    ckpt_dir = tmp_path / RUN_DIR / "checkpoints"
    checkpoint = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    sidecar = ckpt_dir / checkpoint["MRQDataModule"]["sidecar"]
    ranks = [torch.load(sidecar / f"rank{r}" / "state.pt", weights_only=True) for r in (0, 1)]
    buffers = [torch.load(sidecar / f"rank{r}" / "buffer" / "state.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["state_digest"] == ranks[1]["state_digest"]
    # Random CartPole episodes end every ~20 steps, each adding a final-observation slot: the 100 slots are
    # passed before env step 100 on both ranks, so there are more than the 100 updates the env-step rule gives.
    episode_ends = [int((~b["storage"]["tensors"]["is_transition"]).sum()) for b in buffers]
    assert all(ends > 2 for ends in episode_ends) and episode_ends[0] != episode_ends[1]
    assert 100 < checkpoint["mrq"]["rl_updates"] < 110
