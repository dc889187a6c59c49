"""``MRQUpdater(compile=True)``: the losses compiled by torch.compile (TorchInductor on CPU) give the eager update's
parameters after two full 250-update cycles (encoder bursts, target syncs, value and policy updates, LAP priority
write-backs), fp32, to 1e-5 relative (1e-6 absolute for entries near zero). The random numbers are the same in
both (the updater compiles with Inductor's fallback_random), so the runs differ only by floating-point reassociation;
LAP sampling then picks the same transitions."""

from __future__ import annotations

import logging

import pytest
import torch
from tensordict import TensorDict

from mrq_lightning.agent import MRQUpdater
from mrq_lightning.data import MRQReplayBuffer
from mrq_lightning.modules.builders import make_mrq_networks
from mrq_lightning.objectives.mrq_loss import MRQLoss

OBS, ACTIONS, CYCLES, PERIOD = 11, 3, 2, 250


def _train(compile: bool, cycles: int = CYCLES, period: int = PERIOD) -> tuple[dict[str, torch.Tensor], MRQUpdater]:
    torch.manual_seed(0)
    nets = make_mrq_networks((OBS,), ACTIONS, discrete=False, pixels=False, zs_dim=64, za_dim=16, zsa_dim=64,
                             hidden_dim=64)  # fmt: skip
    loss = MRQLoss(nets.encoder, nets.critic, nets.policy)
    updater = MRQUpdater(loss, batch_size=64, target_update_period=period, compile=compile)
    buffer = MRQReplayBuffer(capacity=2000, obs_shape=(OBS,), action_dim=ACTIONS, pixels=False, history=1,
                             **updater.replay_settings())  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    observation = torch.randn(OBS, generator=generator)
    for t in range(1200):  # episodes of 40 steps, every third one terminated, the others truncated
        next_observation = torch.randn(OBS, generator=generator)
        end = t % 40 == 39
        terminated = end and (t // 40) % 3 == 0
        buffer.extend(TensorDict({
            "observation": observation, "action": torch.rand(ACTIONS, generator=generator) * 2 - 1,
            ("next", "observation"): next_observation, ("next", "reward"): torch.randn(1, generator=generator),
            ("next", "terminated"): torch.tensor([terminated]), ("next", "truncated"): torch.tensor([end and not terminated]),
            ("next", "done"): torch.tensor([end]),
        }, []).unsqueeze(0))  # fmt: skip
        observation = torch.randn(OBS, generator=generator) if end else next_observation
    for _ in range(cycles * period):
        updater.step(buffer)
    return {k: v.detach().clone() for k, v in loss.state_dict().items()}, updater


@pytest.mark.slow
def test_compiled_update_equals_the_eager_update_after_two_cycles():
    eager, _ = _train(compile=False)
    compiled, updater = _train(compile=True)
    assert updater.compiled  # it did compile (no fallback to eager)
    assert updater.rl_updates == CYCLES * PERIOD
    assert eager.keys() == compiled.keys()
    for name, value in eager.items():
        if value.is_floating_point():
            torch.testing.assert_close(compiled[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_a_compiler_failure_is_reported_in_one_line_and_the_update_runs_eagerly(monkeypatch, caplog):
    from torch._inductor.exc import InvalidCxxCompiler

    def unavailable(fn, **options):
        def call(*args, **kwargs):
            raise InvalidCxxCompiler()

        return call

    monkeypatch.setattr(torch, "compile", unavailable)
    with caplog.at_level(logging.WARNING, logger="mrq_lightning.agent.updater"):
        fallback, updater = _train(compile=True, cycles=2, period=5)
    assert not updater.compiled
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("compile=True: torch.compile failed (InvalidCxxCompiler: No working C++ compiler found")
    assert message.endswith("; the update runs eagerly") and "\n" not in message
    eager, _ = _train(compile=False, cycles=2, period=5)
    assert all(torch.equal(fallback[k], eager[k]) for k in eager)


def test_errors_of_the_update_itself_are_not_taken_for_compiler_failures(monkeypatch):
    def compiled_but_broken(fn, **options):
        def call(*args, **kwargs):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

        return call

    monkeypatch.setattr(torch, "compile", compiled_but_broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _train(compile=True, cycles=1, period=5)
