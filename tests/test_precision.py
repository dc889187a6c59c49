"""bf16 autocast at the loss level (what ``--trainer.precision bf16-mixed`` runs): the networks compute in bfloat16,
while the two-hot targets, the multi-step TD target, the reward scaling and the LAP priorities stay float32, and
the gradients of all three losses stay close to the float32 ones."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from mrq_lightning import functional
from mrq_lightning.data import MRQReplayBuffer
from mrq_lightning.modules.builders import make_mrq_networks
from mrq_lightning.objectives.mrq_loss import MRQLoss

OBS, ACT = 6, 3


def make_loss_and_batches() -> tuple[MRQLoss, TensorDict, TensorDict]:
    torch.manual_seed(0)
    nets = make_mrq_networks((OBS,), ACT, zs_dim=32, za_dim=16, zsa_dim=32, hidden_dim=32)
    loss = MRQLoss(nets.encoder, nets.critic, nets.policy)
    loss.sync_targets(torch.tensor(2.5))  # r̄' = 1, r̄ = 2.5: both scales enter the target
    buffer = MRQReplayBuffer(capacity=400, obs_shape=(OBS,), action_dim=ACT)
    for episode in range(4):
        steps = 40
        last = torch.arange(steps) == steps - 1
        buffer.extend(TensorDict({
            "observation": torch.randn(steps, OBS), "action": torch.rand(steps, ACT) * 2 - 1,
            "next": {"observation": torch.randn(steps, OBS), "reward": torch.randn(steps, 1) * 50,
                     "terminated": (last & (episode % 2 == 0))[:, None], "truncated": (last & (episode % 2 == 1))[:, None]},
        }, [steps]))  # fmt: skip
    return loss, buffer.sample(64, horizon=5, include_intermediate=True), buffer.sample(64, horizon=3)


def gradients(loss: MRQLoss, encoder_batch: TensorDict, value_batch: TensorDict, bf16: bool) -> dict[str, torch.Tensor]:
    """Flattened gradients of the encoder, value and policy losses (each from zero), same random draws."""
    grads = {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for name, module, compute in (
            ("encoder", loss.encoder, lambda: loss.encoder_loss(encoder_batch.clone())[0]),
            ("value", loss.critic, lambda: loss.value_loss(value_batch)[0]),
            ("policy", loss.policy, lambda: loss.actor_loss(value_batch)[0]),
        ):
            loss.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            compute().backward()
            grads[name] = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
    return grads


def test_targets_two_hot_and_priorities_stay_float32_under_bf16_autocast(monkeypatch):
    loss, encoder_batch, value_batch = make_loss_and_batches()
    seen: dict[str, torch.dtype] = {}
    two_hot, multi_step = functional._two_hot, functional.multi_step_return

    def spy_two_hot(x, bins):
        out = two_hot(x, bins)
        seen["two_hot"] = out.dtype
        return out

    def spy_multi_step(reward, not_done, gamma, official_quirks=False):
        ret, bootstrap = multi_step(reward, not_done, gamma, official_quirks)
        seen["return"], seen["bootstrap"] = ret.dtype, bootstrap.dtype
        return ret, bootstrap

    monkeypatch.setattr(functional, "_two_hot", spy_two_hot)
    monkeypatch.setattr(functional, "multi_step_return", spy_multi_step)
    critic_out = []
    loss.critic.register_forward_hook(lambda module, args, out: critic_out.append(out.dtype))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoder_loss, encoder_metrics = loss.encoder_loss(encoder_batch)
        value_loss, value_metrics = loss.value_loss(value_batch)
        policy_loss, _ = loss.actor_loss(value_batch)
    assert torch.bfloat16 in critic_out  # autocast is really on: the critics compute in bfloat16
    assert seen == {"two_hot": torch.float32, "return": torch.float32, "bootstrap": torch.float32}
    assert value_batch["priority"].dtype == torch.float32 and value_batch["priority"].min() >= 1.0
    assert value_metrics["target_mean"].dtype == torch.float32  # the TD target, scaled by r̄' / r̄
    for value in (encoder_loss, encoder_metrics["loss_reward"], value_loss, policy_loss):
        assert value.dtype == torch.float32 and torch.isfinite(value)


def test_bf16_gradients_are_close_to_float32_ones():
    loss, encoder_batch, value_batch = make_loss_and_batches()
    fp32 = gradients(loss, encoder_batch, value_batch, bf16=False)
    bf16 = gradients(loss, encoder_batch, value_batch, bf16=True)
    for name in fp32:
        cosine = torch.nn.functional.cosine_similarity(fp32[name], bf16[name], dim=0).item()
        ratio = (bf16[name].norm() / fp32[name].norm()).item()
        assert cosine > 0.99 and ratio == pytest.approx(1.0, abs=0.02), (name, cosine, ratio)
        assert not torch.equal(fp32[name], bf16[name])  # and they were computed differently
