"""Pixel presets end to end through the real CLI: Atari (discrete, 4 gray frames) and DMC-visual (3 RGB frames),
with evaluation videos in TensorBoard.

The smoke overlay is shortened further here (200 env steps, evaluations at 0 and 200) to keep CI time low: the
conv encoder is full size, and DMC-visual renders with MuJoCo's software renderer (~25 ms a frame on CPU).
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from conftest import CLI_THREADS, CONFIGS, gif_summary, run_ok, tensorboard_scalars, tensorboard_videos

SHORT = ["--data.total_steps", "200", "--data.random_steps", "100", "--data.eval_every", "200",
         "--model.batch_size", "16", "--model.target_update_period", "20", "--progress_bar.refresh_rate", "1000"]  # fmt: skip


VIDEOS = ["--video.every_n_evals", "1", "--video.max_steps", "30"]  # a 31-frame video after each evaluation


def _fit(preset: str, env: str, cwd: Path) -> tuple[dict, dict]:
    """Scalars and videos (TensorBoard) of a short smoke fit with a video after each evaluation."""
    run_ok(["fit", "--config", str(CONFIGS / preset), "--config", str(CONFIGS / "smoke.yaml"), "--data.env", env,
            *SHORT, *VIDEOS], cwd, timeout=900, threads=CLI_THREADS)  # fmt: skip
    (log_dir,) = glob.glob(str(cwd / "logs" / "mrq" / "version_*"))
    return tensorboard_scalars(log_dir), tensorboard_videos(log_dir)


@pytest.mark.slow
@pytest.mark.envs
def test_atari_smoke_fit_logs_eval_return(tmp_path):
    scalars, videos = _fit("atari.yaml", "Atari-Pong-v5", tmp_path)
    assert [step for step, _ in scalars["eval/return"]] == [0, 200]
    # The emulator screen in colour (210x160), from env step 0 on.
    assert sorted(videos) == ["eval/video/screen"]
    FPS = 15  # noqa: N806 (60 Hz emulator, 4 frames per agent step)
    assert [(step, gif_summary(gif, FPS)) for step, gif in videos["eval/video/screen"]] == [(0, (31, (160, 210))),
                                                                                      (200, (31, (160, 210)))]
    # Pong scores lie in [-21, 21]; discrete actions also log the greedy evaluation beside the official rule.
    assert all(-21 <= v <= 21 for _, v in scalars["eval/return"] + scalars["eval/return_greedy"])
    assert "loss/encoder" in scalars and "loss/value" in scalars


@pytest.mark.slow
@pytest.mark.envs
def test_dmc_visual_smoke_fit_logs_eval_return(tmp_path):
    scalars, videos = _fit("dmc_visual.yaml", "Dmc-visual-cartpole-balance", tmp_path)
    assert [step for step, _ in scalars["eval/return"]] == [0, 200]
    # The agent's own 84x84 view beside the camera (240x320, scaled to 160 wide in TensorBoard).
    assert sorted(videos) == ["eval/video/agent_view", "eval/video/camera"]
    FPS = 50  # noqa: N806 (cartpole: 0.01 s control timestep, action repeat 2)
    assert [gif_summary(gif, FPS) for _, gif in videos["eval/video/agent_view"]] == [(31, (84, 84))] * 2
    assert [gif_summary(gif, FPS) for _, gif in videos["eval/video/camera"]] == [(31, (160, 120))] * 2
    assert all(0 <= v <= 1000 for _, v in scalars["eval/return"])
    assert "eval/return_greedy" not in scalars  # continuous actions: evaluation is already deterministic
    assert "loss/encoder" in scalars and "loss/policy" in scalars
