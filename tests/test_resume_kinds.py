"""Bit-exact resume beyond DMC proprio (tests/test_resume.py): discrete actions with the greedy evaluation env
(Gym-CartPole-v1), Atari pixels with sticky actions (Atari-Pong-v5) and rendered DMC pixels with a frame history
(Dmc-visual-cartpole-balance). Each case runs T env steps straight, and S + (T - S) with ``--ckpt_path last``, and
compares everything a checkpoint holds: networks, targets, reward scales, optimizer states, counters, the replay
buffer, the simulators' states, the collector's observation and the RNG streams."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIGS, assert_same, load_checkpoint, run_ok

pytestmark = pytest.mark.slow

CKPT = Path("logs") / "mrq" / "version_0" / "checkpoints"
# Smoke sizes; the pixel cases shorten the run and skip evaluation (rendering is the cost on CPU).
CASES = {
    # Evaluations at 0, 100, 200 (also the split) and 300 in both runs: both eval envs' states must match too.
    "cartpole-discrete": (["--config", str(CONFIGS / "gym.yaml"), "--data.env", "Gym-CartPole-v1",
                           "--data.eval_every", "100"], 300, 200),
    "atari-pong": (["--config", str(CONFIGS / "atari.yaml"), "--data.env", "Atari-Pong-v5", "--data.eval_episodes",
                    "0", "--model.batch_size", "16", "--model.target_update_period", "20"], 160, 130),
    "dmc-visual": (["--config", str(CONFIGS / "dmc_visual.yaml"), "--data.env", "Dmc-visual-cartpole-balance",
                    "--data.eval_episodes", "0", "--model.batch_size", "16", "--model.target_update_period", "20"],
                   160, 130),
}  # fmt: skip


def _fit(preset: list[str], cwd: Path, total: int, *extra: str) -> None:
    # The preset first, then the smoke overlay, then the case's own overrides (the last value wins).
    config, overrides = preset[:2], preset[2:]
    run_ok(["fit", *config, "--config", str(CONFIGS / "smoke.yaml"), *overrides, "--data.total_steps", str(total),
            "--progress_bar.refresh_rate", "0", *extra], cwd)  # fmt: skip


@pytest.mark.envs
@pytest.mark.parametrize("case", sorted(CASES))
def test_resumed_run_is_bit_identical(case, tmp_path):
    preset, total, split = CASES[case]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    _fit(preset, straight, total, "--checkpoint.every_n_env_steps", "0")
    _fit(preset, resumed, split)
    _fit(preset, resumed, total, "--ckpt_path", "last")

    name = f"env_step={total:07d}.ckpt"
    a_ckpt, a_rank, a_buffer = load_checkpoint(straight / CKPT / name)
    b_ckpt, b_rank, b_buffer = load_checkpoint(resumed / CKPT / name)
    assert a_ckpt["mrq"]["rl_updates"] == b_ckpt["mrq"]["rl_updates"] == total - 100  # 100 random steps
    assert_same(a_ckpt["state_dict"], b_ckpt["state_dict"], "state_dict")
    assert_same(a_ckpt["optimizer_states"], b_ckpt["optimizer_states"], "optimizer_states")
    assert_same(a_buffer, b_buffer, "replay buffer")
    assert_same(a_rank, b_rank, "rank state")  # env + eval envs, collector observation, RNGs, episode counters
    assert a_rank["env_state"] is not None  # restorable mid-episode, not a fresh episode
    if case == "cartpole-discrete":
        assert a_rank["greedy_eval_env_states"][0] is not None  # the extra greedy evaluation envs were compared too
