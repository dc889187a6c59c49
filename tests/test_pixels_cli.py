"""Pixel presets end to end through the real CLI: Atari (discrete, 4 gray frames) and DMC-visual (3 RGB frames).

The smoke overlay is shortened further here (200 env steps, evaluations at 0 and 200) to keep CI time low: the
conv encoder is full size, and DMC-visual renders with MuJoCo's software renderer (~25 ms a frame on CPU).
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from conftest import CONFIGS, run_ok, tensorboard_scalars

SHORT = ["--data.total_steps", "200", "--data.random_steps", "100", "--data.eval_every", "200",
         "--model.batch_size", "16", "--model.target_update_period", "20", "--progress_bar.refresh_rate", "1000"]  # fmt: skip


def _fit(preset: str, env: str, cwd: Path) -> dict[str, list[tuple[int, float]]]:
    run_ok(["fit", "--config", str(CONFIGS / preset), "--config", str(CONFIGS / "smoke.yaml"), "--data.env", env,
            *SHORT], cwd, timeout=900, threads=2)  # fmt: skip
    (log_dir,) = glob.glob(str(cwd / "logs" / "mrq" / "version_*"))
    return tensorboard_scalars(log_dir)


@pytest.mark.slow
@pytest.mark.envs
def test_atari_smoke_fit_logs_eval_return(tmp_path):
    scalars = _fit("atari.yaml", "Atari-Pong-v5", tmp_path)
    assert [step for step, _ in scalars["eval/return"]] == [0, 200]
    # Pong scores lie in [-21, 21]; discrete actions also log the greedy evaluation beside the official rule.
    assert all(-21 <= v <= 21 for _, v in scalars["eval/return"] + scalars["eval/return_greedy"])
    assert "loss/encoder" in scalars and "loss/value" in scalars


@pytest.mark.slow
@pytest.mark.envs
def test_dmc_visual_smoke_fit_logs_eval_return(tmp_path):
    scalars = _fit("dmc_visual.yaml", "Dmc-visual-cartpole-balance", tmp_path)
    assert [step for step, _ in scalars["eval/return"]] == [0, 200]
    assert all(0 <= v <= 1000 for _, v in scalars["eval/return"])
    assert "eval/return_greedy" not in scalars  # continuous actions: evaluation is already deterministic
    assert "loss/encoder" in scalars and "loss/policy" in scalars
