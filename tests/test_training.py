"""End-to-end training through the real CLI (subprocess), config instantiation, and user-facing errors."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from conftest import CLI_THREADS, REPO, run_cli, tensorboard_scalars

CONFIGS = sorted(str(p) for p in (REPO / "configs").glob("*.yaml") if p.name != "smoke.yaml")


def _cli(args: list[str], cwd: Path, timeout: int = 600):
    return run_cli(args, cwd, timeout=timeout, threads=CLI_THREADS)


@pytest.mark.slow
def test_smoke_fit_writes_tensorboard_scalars_by_env_step(smoke_run):
    (log_dir,) = glob.glob(str(smoke_run / "logs" / "mrq" / "version_*"))
    scalars = tensorboard_scalars(log_dir)
    required = [
        "eval/return", "train/episode_return", "loss/encoder", "loss/value", "loss/policy", "perf/steps_per_s",
        "train/reward_scale", "train/q_mean",
    ]  # fmt: skip
    missing = [tag for tag in required if tag not in scalars]
    assert not missing, f"missing scalars {missing}; have {sorted(scalars)}"
    # x-axis = env steps: evaluations at 0, every 300 env steps, and at the end of the 600-step budget.
    assert [step for step, _ in scalars["eval/return"]] == [0, 300, 600]
    # Training scalars start after the 100 random steps and are written every 50 env steps.
    assert [step for step, _ in scalars["loss/value"]] == list(range(150, 601, 50))
    # A DMC episode is 500 agent steps; each sums 2 simulator rewards in [0, 1] (action repeat 2): returns in [0, 1000].
    (episode,) = scalars["train/episode_return"]
    assert 0.0 <= episode[1] <= 1000.0
    assert all(0.0 <= v <= 1000.0 for _, v in scalars["eval/return"])
    # The resolved config is saved beside the logs.
    assert (Path(log_dir) / "config.yaml").exists()


@pytest.mark.slow
def test_smoke_fit_logs_evaluation_videos(smoke_run):
    """Videos after every 2nd evaluation and the last (env steps 0 and 600, not 300): an animated GIF per view in
    TensorBoard (the reset frame + 60 env steps, 240x320 camera scaled to 160 wide), the same clips as mp4."""
    import imageio.v3 as iio
    from conftest import gif_summary, tensorboard_videos

    (log_dir,) = glob.glob(str(smoke_run / "logs" / "mrq" / "version_*"))
    videos = tensorboard_videos(log_dir)
    assert sorted(videos) == ["eval/video/camera"]
    assert [step for step, _ in videos["eval/video/camera"]] == [0, 600]
    assert [gif_summary(gif, fps=50) for _, gif in videos["eval/video/camera"]] == [(61, (160, 120))] * 2
    assert [step for step, _ in tensorboard_scalars(log_dir)["perf/video_seconds"]] == [0, 600]
    for step in (0, 600):
        frames = iio.imread(smoke_run / "videos" / f"Dmc-cartpole-balance_step{step}_camera.mp4")
        assert frames.shape == (61, 240, 320, 3)
    assert len(list((smoke_run / "videos").iterdir())) == 2


def _evaluate_in_process(checkpoint: dict | None) -> float:
    """The first episode of a fresh Dmc-cartpole-balance eval env (seed 0 + 100) under the smoke model, with the
    checkpoint's weights (or the untrained ones): what ``test`` must report."""
    import torch

    from mrq_lightning.envs import make_env
    from mrq_lightning.evaluation import evaluate_policy
    from mrq_lightning.training import MRQ

    torch.manual_seed(0)
    eval_env, info = make_env("Dmc-cartpole-balance", 100, evaluation=True)
    model = MRQ(batch_size=32, zs_dim=64, za_dim=32, zsa_dim=64, hidden_dim=64, target_update_period=25,
                log_every_n_env_steps=50)  # fmt: skip
    model.configure_networks(info)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
    (episode_return,) = evaluate_policy(eval_env, model.acting_policy, episodes=1)
    return episode_return


@pytest.mark.slow
def test_test_subcommand_evaluates_the_checkpoint_weights(smoke_run, tmp_path):
    """`test` scores the checkpoint's weights, prints every episode, and logs `test/*` at the checkpoint's env step
    into the run directory it came from (no new version directory, the run's config.yaml kept)."""
    import re
    import shutil

    import torch
    from conftest import scalar_steps

    shutil.copytree(smoke_run / "logs", tmp_path / "logs")
    run_dir = tmp_path / "logs" / "mrq" / "version_0"
    config_before = (run_dir / "config.yaml").read_text()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc = _cli(
        ["test", "--config", f"{REPO}/configs/dmc.yaml", "--config", f"{REPO}/configs/smoke.yaml",
         "--data.env", "Dmc-cartpole-balance", "--ckpt_path", str(ckpt), "--video.save_dir", "test_videos"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = re.search(r"MR.Q test return at env step 600 \(1 episodes.*: mean ([-0-9.]+) .*per episode ([-0-9.]+)",
                     proc.stdout + proc.stderr)  # fmt: skip
    expected = _evaluate_in_process(torch.load(ckpt, weights_only=True))
    assert float(line.group(1)) == float(line.group(2)) == pytest.approx(expected, abs=1e-4)
    # --video.save_dir: the test episode played again on a rendering copy of the eval env, the whole episode as mp4,
    # with the test's return.
    video = re.search(r"MR.Q test video: episode 0 return ([-0-9.]+) \(500 env steps\) -> (\S+\.mp4)",
                      proc.stdout + proc.stderr)  # fmt: skip
    assert video.group(1) == line.group(2)
    assert Path(video.group(2)) == tmp_path / "test_videos" / "Dmc-cartpole-balance_step600_episode0_camera.mp4"
    import imageio.v3 as iio

    assert iio.imread(video.group(2)).shape == (501, 240, 320, 3)
    assert abs(_evaluate_in_process(None) - expected) > 1.0  # untrained weights would give another return
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["version_0"]
    assert scalar_steps(run_dir)["test/return"] == [600]
    assert (run_dir / "config.yaml").read_text() == config_before


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: Path(p).name)
def test_every_shipped_config_instantiates(config):
    from mrq_lightning.training import MRQ, MRQDataModule
    from mrq_lightning.training.cli import build_cli

    cli = build_cli(["--config", config, "--trainer.logger", "false"], run=False)
    assert isinstance(cli.model, MRQ) and isinstance(cli.datamodule, MRQDataModule)
    # Paper defaults (algorithm §2.1) unless the preset says otherwise.
    hp = cli.model.hparams
    assert (hp.batch_size, hp.target_update_period, hp.encoder_horizon, hp.value_horizon) == (256, 250, 5, 3)
    assert (hp.encoder_lr, hp.value_lr, hp.policy_lr, hp.weight_decay) == (1e-4, 3e-4, 3e-4, 1e-4)
    expected_budget = {"gym.yaml": (1_000_000, 5_000), "dmc.yaml": (500_000, 5_000),
                       "dmc_visual.yaml": (500_000, 5_000), "atari.yaml": (2_500_000, 100_000)}  # fmt: skip
    name = Path(config).name
    if name in expected_budget:
        assert (cli.datamodule.total_steps, cli.datamodule.eval_every) == expected_budget[name]
        assert cli.datamodule.eval_episodes == 10 and cli.datamodule.random_steps == 10_000


def test_smoke_overlay_composes_with_every_preset():
    from mrq_lightning.training.cli import build_cli

    for config in CONFIGS:
        cli = build_cli(["--config", config, "--config", f"{REPO}/configs/smoke.yaml", "--trainer.logger", "false"],
                        run=False)  # fmt: skip
        assert cli.datamodule.total_steps == 600 and cli.model.hparams.hidden_dim == 64


def test_print_config_resolves(tmp_path):
    proc = _cli(["fit", "--config", f"{REPO}/configs/atari.yaml", "--print_config"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Atari-Pong-v5" in proc.stdout and "total_steps: 2500000" in proc.stdout


def test_official_quirks_is_one_switch():
    from mrq_lightning.training.cli import build_cli

    cli = build_cli(["--config", CONFIGS[0], "--data.official_quirks", "true", "--trainer.logger", "false"], run=False)
    assert cli.datamodule.official_quirks and cli.model.hparams.official_quirks


def test_unknown_env_gets_a_clear_error_without_traceback(tmp_path):
    proc = _cli(["fit", "--config", f"{REPO}/configs/dmc.yaml", "--data.env", "Dmc-cartpol-balance"], tmp_path)
    assert proc.returncode == 2
    assert "unknown DMC domain 'cartpol'" in proc.stderr and "Valid forms" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli(["fit", "--config", f"{REPO}/configs/dmc.yaml", "--data.env", "Mujoco-Hopper"], tmp_path)
    assert proc.returncode == 2 and "Gym-<gymnasium id>" in proc.stderr


def test_wrong_config_key_names_the_key(tmp_path):
    proc = _cli(["fit", "--config", f"{REPO}/configs/dmc.yaml", "--data.envv", "Dmc-cartpole-balance"], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip() == ("error: unknown option --data.envv; did you mean --data.env? (python -m mrq_lightning "
                                   "fit --help lists the options)")


def test_out_of_range_option_gets_a_clear_error(tmp_path):
    proc = _cli(["fit", "--config", f"{REPO}/configs/dmc.yaml", "--data.total_steps", "0"], tmp_path)
    assert proc.returncode == 2
    assert "data.total_steps" in proc.stderr and "Traceback" not in proc.stderr


def test_seed_everything_also_seeds_the_environments():
    """``--seed_everything 3``: the training env starts as ``make_env(name, 3)`` does, the eval env as seed 103."""
    import torch

    from mrq_lightning.envs import make_env
    from mrq_lightning.training.cli import build_cli

    gym_config = str(REPO / "configs" / "gym.yaml")
    args = ["--config", gym_config, "--data.env", "Gym-Pendulum-v1", "--data.buffer_capacity", "1000"]
    cli = build_cli([*args, "--seed_everything", "3", "--trainer.logger", "false"], run=False)
    data = cli.datamodule
    data.setup("fit")
    first = {name: env.reset()["observation"] for name, env in (("train", data.env), ("eval", data.eval_env))}
    assert torch.equal(first["train"], make_env("Gym-Pendulum-v1", 3)[0].reset()["observation"])
    assert torch.equal(first["eval"], make_env("Gym-Pendulum-v1", 103, evaluation=True)[0].reset()["observation"])
    assert not torch.equal(first["train"], make_env("Gym-Pendulum-v1", 0)[0].reset()["observation"])


def test_optimizer_step_budgets_are_refused(tmp_path, monkeypatch, capsys):
    from conftest import SMOKE

    from mrq_lightning.training.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", *SMOKE, "--trainer.max_steps", "100"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--trainer.max_steps" in err and "--data.total_steps" in err and "Traceback" not in err
