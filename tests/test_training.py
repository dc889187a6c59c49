"""End-to-end training through the real CLI (subprocess), config instantiation, and user-facing errors."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from conftest import REPO, run_cli, tensorboard_scalars

CONFIGS = sorted(str(p) for p in (REPO / "configs").glob("*.yaml") if p.name != "smoke.yaml")


def _cli(args: list[str], cwd: Path, timeout: int = 600):
    return run_cli(args, cwd, timeout=timeout, threads=2)


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
    # A DMC episode is 500 agent steps with rewards in [0, 1]: the single training episode return is in [0, 500].
    (episode,) = scalars["train/episode_return"]
    assert 0.0 <= episode[1] <= 500.0
    assert all(0.0 <= v <= 500.0 for _, v in scalars["eval/return"])
    # The resolved config is saved beside the logs.
    assert (Path(log_dir) / "config.yaml").exists()


@pytest.mark.slow
def test_test_subcommand_evaluates_a_checkpoint(smoke_run):
    ckpts = glob.glob(str(smoke_run / "logs" / "mrq" / "version_0" / "checkpoints" / "*.ckpt"))
    assert ckpts, "fit saved no checkpoint"
    proc = _cli(
        ["test", "--config", f"{REPO}/configs/dmc.yaml", "--config", f"{REPO}/configs/smoke.yaml",
         "--data.env", "Dmc-cartpole-balance", "--ckpt_path", ckpts[0]],
        smoke_run,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "test/return" in proc.stdout


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
    assert "envv" in proc.stderr and "not accepted" in proc.stderr


def test_out_of_range_option_gets_a_clear_error(tmp_path):
    proc = _cli(["fit", "--config", f"{REPO}/configs/dmc.yaml", "--data.total_steps", "0"], tmp_path)
    assert proc.returncode == 2
    assert "data.total_steps" in proc.stderr and "Traceback" not in proc.stderr


def test_seed_everything_also_seeds_the_environments():
    from mrq_lightning.training.cli import build_cli

    cli = build_cli(["--config", CONFIGS[0], "--seed_everything", "3", "--trainer.logger", "false"], run=False)
    assert cli.datamodule.seed == 3  # training env seed 3 (+1000 per DDP rank), eval env 103


def test_optimizer_step_budgets_are_refused(tmp_path, monkeypatch, capsys):
    from conftest import SMOKE

    from mrq_lightning.training.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", *SMOKE, "--trainer.max_steps", "100"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--trainer.max_steps" in err and "--data.total_steps" in err and "Traceback" not in err
