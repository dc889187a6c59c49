"""MRQUpdater without Lightning (algorithm §9): schedule, optimizers, clipping on the value step only, gradient
isolation, reward-scale refresh, priority write-back, buffer agreement and the state_dict round trip."""

from __future__ import annotations

import copy

import pytest
import torch
from tensordict import TensorDict

from mrq_lightning.agent import MRQUpdater
from mrq_lightning.data import MRQReplayBuffer
from mrq_lightning.errors import ConfigurationError
from mrq_lightning.modules.builders import make_mrq_networks
from mrq_lightning.objectives.mrq_loss import MRQLoss

OBS, ACT, PERIOD = 4, 2, 3
TINY = dict(zs_dim=16, za_dim=8, zsa_dim=16, hidden_dim=16)


def episode(length: int, seed: int, terminated: bool) -> TensorDict:
    """``length`` transitions of one episode; rewards ``seed + t`` (non-zero, distinct), the last one ends it."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(length + 1, OBS, generator=g)
    last = torch.arange(length) == length - 1
    return TensorDict(
        {
            "observation": obs[:-1],
            "action": torch.rand(length, ACT, generator=g) * 2 - 1,
            "next": {
                "observation": obs[1:],
                "reward": (seed + torch.arange(length, dtype=torch.float32))[:, None],
                "terminated": (last & terminated)[:, None],
                "truncated": (last & (not terminated))[:, None],
            },
        },
        [length],
    )


def filled_buffer(**settings) -> MRQReplayBuffer:
    buffer = MRQReplayBuffer(capacity=500, obs_shape=(OBS,), action_dim=ACT, **settings)
    for k in range(6):
        buffer.extend(episode(12, seed=k, terminated=k % 2 == 0))
    return buffer


def make_updater(seed: int = 0, **kwargs) -> MRQUpdater:
    torch.manual_seed(seed)
    nets = make_mrq_networks((OBS,), ACT, **TINY)
    loss = MRQLoss(nets.encoder, nets.critic, nets.policy)
    return MRQUpdater(loss, **{"batch_size": 8, "target_update_period": PERIOD, **kwargs})


def test_optimizers_get_the_paper_settings_and_their_own_parameters():
    updater = make_updater()
    loss = updater.loss
    expected = [(loss.encoder, 1e-4), (loss.critic, 3e-4), (loss.policy, 3e-4)]
    for optimizer, (module, lr) in zip(updater.optimizers, expected, strict=True):
        assert isinstance(optimizer, torch.optim.AdamW)
        (group,) = optimizer.param_groups
        assert group["lr"] == lr and group["weight_decay"] == 1e-4 and group["betas"] == (0.9, 0.999)
        assert group["eps"] == 1e-8 and group["fused"]  # fused kernel on CPU
        assert [id(p) for p in group["params"]] == [id(p) for p in module.parameters()]
    # Targets are never optimized.
    optimized = {id(p) for opt in updater.optimizers for p in opt.param_groups[0]["params"]}
    assert not optimized & {id(p) for p in loss.target_encoder.parameters()}
    custom = make_updater(encoder_lr=1e-3, value_lr=2e-3, policy_lr=5e-4, weight_decay=0.0)
    assert [opt.param_groups[0]["lr"] for opt in custom.optimizers] == [1e-3, 2e-3, 5e-4]
    assert {opt.param_groups[0]["weight_decay"] for opt in custom.optimizers} == {0.0}


def test_schedule_counted_in_rl_updates(monkeypatch):
    updater, buffer = make_updater(), filled_buffer()
    calls = []
    for name in ("sync_targets", "encoder_loss", "value_loss", "actor_loss"):
        original = getattr(updater.loss, name)

        def record(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(updater.loss, name, record)
    metrics = [updater.step(buffer) for _ in range(7)]
    expected = []
    for n in range(1, 8):  # RL update n: a burst before n = 1, 4, 7 ((n - 1) mod 3 == 0)
        if (n - 1) % PERIOD == 0:
            expected += ["sync_targets"] + ["encoder_loss"] * PERIOD
        expected += ["value_loss", "actor_loss"]
    assert calls == expected and updater.rl_updates == 7
    # Encoder metrics only on calls with a burst; value and policy metrics on every call.
    assert ["loss_encoder" in m for m in metrics] == [True, False, False, True, False, False, True]
    assert all({"loss_value", "loss_policy", "q_mean", "priority_mean"} <= set(m) for m in metrics)
    assert all(v.dim() == 0 and not v.requires_grad for m in metrics for v in m.values())


def test_each_loss_moves_only_its_own_parameters():
    """Gradient isolation through the backward hook: which parameters does each backward write a gradient to?"""
    touched: list[set[str]] = []

    def backward(loss_value: torch.Tensor) -> None:
        before = {n: None if p.grad is None else p.grad.clone() for n, p in updater.loss.named_parameters()}
        loss_value.backward()
        touched.append({n for n, p in updater.loss.named_parameters()
                        if p.grad is not None and (before[n] is None or not torch.equal(before[n], p.grad))})  # fmt: skip

    updater = make_updater(backward=backward)
    updater.step(filled_buffer())
    names = [n for n, _ in updater.loss.named_parameters()]
    groups = {prefix: {n for n in names if n.startswith(prefix)} for prefix in ("encoder.", "critic.", "policy.")}
    assert len(touched) == PERIOD + 2  # burst, value, policy
    for encoder_step in touched[:PERIOD]:
        assert encoder_step == groups["encoder."]  # every encoder parameter, the MDP head included
    assert touched[PERIOD] == groups["critic."]
    assert touched[PERIOD + 1] == groups["policy."]  # gradients flow through g and Q, but none is deposited there


def test_value_gradients_clipped_and_nothing_else():
    clip = 1e-4
    updater = make_updater(value_grad_clip=clip)
    updater.step(filled_buffer())
    # After step(): .grad holds each optimizer's last gradient (encoder: last burst update, value, policy).
    norm = lambda module: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))  # noqa: E731
    assert norm(updater.loss.critic) <= clip * (1 + 1e-4)
    assert norm(updater.loss.policy) > 10 * clip and norm(updater.loss.encoder) > 10 * clip
    unclipped = make_updater(value_grad_clip=1e9)
    unclipped.step(filled_buffer())
    assert norm(unclipped.loss.critic) > 10 * clip


def test_reward_scale_refreshed_from_the_buffer_at_syncs_only():
    updater, buffer = make_updater(), filled_buffer()
    rewards = torch.cat([episode(12, seed=k, terminated=k % 2 == 0)["next", "reward"] for k in range(6)])
    updater.step(buffer)  # RL update 1: first sync (r̄' <- 1, r̄ <- mean |r| of stored transitions)
    assert updater.loss.target_reward_scale.item() == 1.0
    assert updater.loss.reward_scale.item() == pytest.approx(rewards.abs().mean().item(), rel=1e-6)
    first = updater.loss.reward_scale.clone()
    buffer.extend(episode(12, seed=40, terminated=True))  # larger rewards arrive
    for _ in range(PERIOD - 1):  # updates 2 and 3: no sync
        updater.step(buffer)
        assert torch.equal(updater.loss.reward_scale, first)
    updater.step(buffer)  # update 4: sync
    rewards = torch.cat([rewards, episode(12, seed=40, terminated=True)["next", "reward"]])
    assert torch.equal(updater.loss.target_reward_scale, first)
    assert updater.loss.reward_scale.item() == pytest.approx(rewards.abs().mean().item(), rel=1e-6)


def test_reduce_mean_hook_sets_the_shared_reward_scale():
    seen = []
    updater = make_updater(reduce_mean=lambda scale: seen.append(scale.clone()) or torch.tensor(7.0))
    buffer = filled_buffer()
    updater.step(buffer)
    assert len(seen) == 1 and torch.equal(seen[0], buffer.reward_scale())
    assert updater.loss.reward_scale.item() == 7.0


def test_priorities_written_back_from_the_value_batch(monkeypatch):
    updater, buffer = make_updater(), filled_buffer()
    batches = []
    original = updater.loss.value_loss
    monkeypatch.setattr(updater.loss, "value_loss", lambda batch: batches.append(batch) or original(batch))
    updater.step(buffer)
    (batch,) = batches
    assert batch["observation"].shape[0] == 8 and batch["action"].shape[1] == 3  # value batch: horizon 3
    index, priority = batch["index"], batch["priority"]
    last = {int(i): float(p) for i, p in zip(index, priority)}  # a repeated index keeps its last priority
    for slot, value in last.items():
        assert buffer.priorities[slot].item() == value
    assert buffer.max_priority == max(1.0, priority.max().item())


def test_encoder_batches_use_the_encoder_horizon_and_the_terminal_flag(monkeypatch):
    updater, buffer = make_updater(encoder_horizon=4), filled_buffer(horizon=4)
    seen = []
    original = updater.loss.encoder_loss
    monkeypatch.setattr(updater.loss, "encoder_loss",
                        lambda batch, env_terminates: seen.append((batch, env_terminates)) or original(batch, env_terminates))  # fmt: skip
    updater.step(buffer)
    assert len(seen) == PERIOD
    for batch, env_terminates in seen:
        assert batch["action"].shape[1] == 4 and batch["next", "observation"].shape[1:] == (4, OBS)
        assert env_terminates is True  # the buffer holds terminated episodes


def test_buffer_must_follow_the_update():
    updater = make_updater(encoder_horizon=6)
    assert updater.replay_settings() == {"horizon": 6, "alpha": 0.4, "min_priority": 1.0}
    with pytest.raises(ConfigurationError, match=r"horizon.*\*\*updater.replay_settings\(\)"):
        updater.step(filled_buffer())  # paper buffer: horizon 5
    with pytest.raises(ConfigurationError, match="min_priority"):
        make_updater().step(filled_buffer(min_priority=2.0))
    with pytest.raises(ConfigurationError, match="'horizon': 6"):  # a longer window changes the valid starts
        make_updater().step(filled_buffer(horizon=6))
    updater.step(filled_buffer(**updater.replay_settings()))  # horizon 6 works end to end


def test_state_dict_round_trip_continues_identically():
    buffer = filled_buffer()
    updater = make_updater()
    for _ in range(4):
        updater.step(buffer)
    saved_loss, saved = copy.deepcopy(updater.loss.state_dict()), copy.deepcopy(updater.state_dict())
    saved_buffer = copy.deepcopy(buffer.state_dict())
    assert saved["rl_updates"] == 4 and len(saved["optimizers"]) == 3

    restored = make_updater(seed=123)  # other initial weights: everything must come from the state
    restored.loss.load_state_dict(saved_loss)
    restored.load_state_dict(saved)
    other_buffer = MRQReplayBuffer(capacity=500, obs_shape=(OBS,), action_dim=ACT)
    other_buffer.load_state_dict(saved_buffer)
    assert restored.rl_updates == 4
    for _ in range(3):  # crosses the sync at RL update 7
        torch.manual_seed(9)
        updater.step(buffer)
        torch.manual_seed(9)
        restored.step(other_buffer)
    for (name, a), b in zip(updater.loss.state_dict().items(), restored.loss.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(buffer.priorities, other_buffer.priorities)
    with pytest.raises(ValueError, match="not an MRQUpdater state"):
        restored.load_state_dict({"rl_updates": 1})


@pytest.mark.parametrize(
    "bad", [{"batch_size": 0}, {"value_grad_clip": 0.0}, {"encoder_lr": -1e-4}, {"value_horizon": 0},
            {"target_update_period": 2.5}],  # fmt: skip
    ids=str,
)
def test_invalid_settings_are_refused_with_one_line(bad):
    with pytest.raises(ConfigurationError) as err:
        make_updater(**bad)
    (name,) = bad
    assert name in str(err.value) and "\n" not in str(err.value)
