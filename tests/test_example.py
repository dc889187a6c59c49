"""The plain-TorchRL example trains MR.Q without Lightning, and is the same algorithm as the trainer: with the
smoke overlay's settings and the same seed it ends with bit-identical networks, targets and reward scales to
``python -m mrq_lightning fit`` (CPU), and the same optimizer states and RL-update count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, REPO, SMOKE_FIT_THREADS, cli_env, tensorboard_scalars

EXAMPLE = REPO / "examples" / "train_mrq_torchrl.py"
RUN_WITHOUT_LIGHTNING = """
import json, runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
frameworks = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric"))
print("LIGHTNING_MODULES " + json.dumps(frameworks))
"""


def smoke_options() -> list[str]:
    """The smoke overlay (configs/smoke.yaml) as the example's command-line options."""
    overlay = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    options = {**overlay["model"]["init_args"], **overlay["data"]["init_args"]}
    options["log_every"] = options.pop("log_every_n_env_steps")
    return [item for name, value in options.items() for item in (f"--{name}", str(value))]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("example")
    proc = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_LIGHTNING, str(EXAMPLE), "--env", "Dmc-cartpole-balance", "--seed", "0",
         *smoke_options(), "--save", "final.pt", "--logdir", "tb"],
        cwd=cwd, env=cli_env(SMOKE_FIT_THREADS), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("LIGHTNING_MODULES ")]
    assert json.loads(line.split(" ", 1)[1]) == [], "the plain TorchRL example imported Lightning"
    assert "env step      600: eval return" in proc.stdout
    return cwd


@pytest.mark.slow
def test_example_trains_and_logs_with_torchrl_logger(example_run):
    (run_dir,) = (example_run / "tb").iterdir()
    scalars = tensorboard_scalars(run_dir)
    assert [step for step, _ in scalars["eval/return"]] == [0, 300, 600]
    # Updates start after the 100 random steps; scalars every 50 env steps once there are metrics.
    assert [step for step, _ in scalars["loss/value"]] == list(range(150, 601, 50))  # fit's tags
    assert all(torch.isfinite(torch.tensor(v)) for _, v in scalars["loss/encoder"] + scalars["train/q_mean"])


@pytest.mark.slow
def test_example_and_fit_produce_bit_identical_parameters(example_run, smoke_run):
    example = torch.load(example_run / "final.pt", weights_only=True)
    checkpoint = torch.load(smoke_run / "logs/mrq/version_0/checkpoints/last.ckpt", weights_only=True)
    fitted = {k.removeprefix("loss_module."): v for k, v in checkpoint["state_dict"].items() if k.startswith("loss_")}
    ours = example["loss_module"]
    assert set(ours) == set(fitted) and len(ours) > 50  # online networks, targets, reward bins and scales
    differing = [name for name in ours if not torch.equal(ours[name], fitted[name])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    assert example["updater"]["rl_updates"] == checkpoint["mrq"]["rl_updates"] == 500
    for mine, theirs in zip(example["updater"]["optimizers"], checkpoint["optimizer_states"], strict=True):
        for p_mine, p_theirs in zip(mine["state"].values(), theirs["state"].values(), strict=True):
            assert all(torch.equal(p_mine[k], p_theirs[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
