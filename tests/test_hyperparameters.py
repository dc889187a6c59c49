"""One source of hyperparameters (algorithm §2.1): the paper's values are declared once, every component's
defaults read them, the replay buffer follows the model, and bad values are refused before any work starts."""

from __future__ import annotations

import inspect
from dataclasses import asdict, fields

import pytest
from conftest import SMOKE, run_ok

from mrq_lightning.agent import MRQUpdater, Warmup
from mrq_lightning.data import MRQReplayBuffer
from mrq_lightning.errors import ConfigurationError
from mrq_lightning.hyperparameters import (
    ACTING,
    LOSS,
    MODEL_GROUPS,
    NETWORK,
    REPLAY,
    UPDATE,
    LossHParams,
    NetworkHParams,
    UpdateHParams,
    replay_settings,
)
from mrq_lightning.modules.builders import MRQActor, make_mrq_networks
from mrq_lightning.objectives.mrq_loss import MRQLoss
from mrq_lightning.training import MRQ, MRQDataModule


def defaults(component) -> dict:
    function = component.__init__ if inspect.isclass(component) else component
    return {n: p.default for n, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def test_paper_values():
    # algorithm §2.1, Table 3 of the paper (with the official code's weight decay on all three optimizers, §15 D2)
    assert asdict(NETWORK) == {"zs_dim": 512, "za_dim": 256, "zsa_dim": 512, "hidden_dim": 512, "num_bins": 65,
                               "gumbel_tau": 10.0}  # fmt: skip
    assert asdict(LOSS) == {"gamma": 0.99, "dynamics_weight": 1.0, "reward_weight": 0.1, "terminal_weight": 0.1,
                            "target_policy_noise": 0.2, "target_noise_clip": 0.3, "pre_activation_weight": 1e-5,
                            "lap_alpha": 0.4, "min_priority": 1.0}  # fmt: skip
    assert asdict(UPDATE) == {"batch_size": 256, "target_update_period": 250, "encoder_horizon": 5, "value_horizon": 3,
                              "encoder_lr": 1e-4, "value_lr": 3e-4, "policy_lr": 3e-4, "weight_decay": 1e-4,
                              "value_grad_clip": 20.0}  # fmt: skip
    assert ACTING.exploration_noise == 0.2
    assert (REPLAY.capacity, REPLAY.random_steps, REPLAY.pixel_augmentation) == (1_000_000, 10_000, True)
    assert replay_settings() == {"horizon": 5, "alpha": 0.4, "min_priority": 1.0}


@pytest.mark.parametrize(
    "component, group, renamed",
    [
        (make_mrq_networks, NETWORK, {}),
        (MRQLoss, LOSS, {}),
        (MRQLoss, NETWORK, {"num_bins": "num_bins"}),
        (MRQUpdater, UPDATE, {}),
        (MRQActor, ACTING, {}),
        (MRQReplayBuffer, REPLAY, {"capacity": "capacity", "pixel_augmentation": "augment"}),
        (MRQReplayBuffer, LOSS, {"lap_alpha": "alpha", "min_priority": "min_priority"}),
        (MRQDataModule, REPLAY, {"capacity": "buffer_capacity", "random_steps": "random_steps",
                                 "pixel_augmentation": "pixel_augmentation"}),
        (Warmup, REPLAY, {"random_steps": "random_steps"}),
    ],
    ids=lambda x: getattr(x, "__name__", type(x).__name__) if not isinstance(x, dict) else "",
)
def test_component_defaults_are_the_declared_ones(component, group, renamed):
    own = defaults(component)
    names = renamed or {f.name: f.name for f in fields(group) if f.name in own}
    assert names, f"{component.__name__} takes none of {type(group).__name__}'s fields"
    for field, argument in names.items():
        assert own[argument] == getattr(group, field), f"{component.__name__}({argument}=...) default"


def test_the_lightning_module_takes_every_agent_hyperparameter_flat():
    own = defaults(MRQ.__init__)
    for group in MODEL_GROUPS:  # so nothing can be forgotten when MRQ builds its components with pick(group, ...)
        instance = group()
        for field in fields(group):
            assert own[field.name] == getattr(instance, field.name), field.name
    module = MRQ(encoder_horizon=6, value_horizon=2, lap_alpha=0.5, min_priority=2.0)
    assert module.replay_settings() == {"horizon": 6, "alpha": 0.5, "min_priority": 2.0}


@pytest.mark.parametrize(
    "group, bad",
    [(NetworkHParams, {"hidden_dim": 0}), (NetworkHParams, {"num_bins": 1}), (LossHParams, {"gamma": 1.5}),
     (LossHParams, {"lap_alpha": 0.0}), (LossHParams, {"min_priority": -1.0}), (UpdateHParams, {"batch_size": -3}),
     (UpdateHParams, {"policy_lr": float("nan")}), (UpdateHParams, {"encoder_horizon": True})],  # fmt: skip
    ids=str,
)
def test_groups_refuse_bad_values_in_one_line(group, bad):
    with pytest.raises(ConfigurationError) as err:
        group(**bad)
    (name,) = bad
    assert f"MR.Q hyperparameter {name}=" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("option, value", [("batch_size", "0"), ("lap_alpha", "0"), ("gamma", "1.5"),
                                           ("hidden_dim", "0"), ("value_grad_clip", "-1")])  # fmt: skip
def test_cli_refuses_bad_model_values_before_any_work(option, value, tmp_path, monkeypatch, capsys):
    from mrq_lightning.training.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", *SMOKE, f"--model.init_args.{option}", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: MR.Q hyperparameter {option}=" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # refused before any log directory or environment


@pytest.mark.slow
def test_buffer_follows_the_model_end_to_end(tmp_path):
    """``--model.init_args.encoder_horizon 6`` and ``--model.init_args.min_priority 2`` train through encoder bursts
    (they used to fail after the random phase) and the replay buffer is built with the model's values."""
    import json

    import torch

    run_ok(["fit", *SMOKE, "--data.total_steps", "160", "--model.init_args.encoder_horizon", "6",
            "--model.init_args.min_priority", "2", "--model.init_args.lap_alpha", "0.5"], tmp_path)  # fmt: skip
    checkpoints = tmp_path / "logs/mrq/version_0/checkpoints"
    checkpoint = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert checkpoint["mrq"]["rl_updates"] == 60  # 100 random steps, then 60 updates: encoder bursts at 1, 26, 51
    meta = json.loads((checkpoints / checkpoint["MRQDataModule"]["sidecar"] / "rank0/buffer/meta.json").read_text())
    assert {k: meta["config"][k] for k in ("horizon", "alpha", "min_priority")} == {
        "horizon": 6, "alpha": 0.5, "min_priority": 2.0}  # fmt: skip
    buffer = torch.load(checkpoints / checkpoint["MRQDataModule"]["sidecar"] / "rank0/buffer/state.pt",
                        weights_only=True)  # fmt: skip
    # The running max priority starts at min_priority = 2 and never decreases; LAP priorities are floored at 2^0.5.
    assert buffer["sampler"]["max_priority"].item() >= 2.0
    filled = buffer["sampler"]["priority"][buffer["storage"]["tensors"]["is_transition"]]
    assert filled.min().item() >= 2.0**0.5 - 1e-6
