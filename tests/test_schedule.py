"""The MR.Q update schedule (algorithm §9, §18 item 5) through a real Lightning fit on a real environment.

With target period T: no update during the random phase; RL update n with (n - 1) mod T == 0 is preceded by a target
sync, a reward-scale refresh and exactly T encoder updates; targets and reward scales change only then; one value
and one policy update per env step after the random phase.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from mrq_lightning.objectives.mrq_loss import MRQLoss
from mrq_lightning.training import MRQ, MRQDataModule

PERIOD, RANDOM_STEPS, TOTAL_STEPS = 5, 20, 37


@pytest.fixture(scope="module")
def schedule_run():
    events: list[tuple[str, int]] = []
    target_snapshots: list[tuple[int, torch.Tensor, float, float]] = []
    originals = {name: getattr(MRQLoss, name) for name in ("encoder_loss", "value_loss", "actor_loss", "sync_targets")}

    def recorder(name):
        def wrapped(self, *args, **kwargs):
            events.append((name, module.env_steps))
            return originals[name](self, *args, **kwargs)

        return wrapped

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = pl_module.loss_module
            first_target = next(loss.target_critic.parameters()).detach().clone()
            target_snapshots.append(
                (pl_module.env_steps, first_target, float(loss.reward_scale), float(loss.target_reward_scale))
            )

    torch.manual_seed(0)
    module = MRQ(batch_size=16, zs_dim=32, za_dim=16, zsa_dim=32, hidden_dim=32, target_update_period=PERIOD,
                 log_every_n_env_steps=10**9)  # fmt: skip
    data = MRQDataModule(env="Gym-Pendulum-v1", total_steps=TOTAL_STEPS, random_steps=RANDOM_STEPS,
                         eval_episodes=0, eval_every=10**9, buffer_capacity=1000)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[Snapshot()])  # fmt: skip
    mp = pytest.MonkeyPatch()
    for name in originals:
        mp.setattr(MRQLoss, name, recorder(name))
    try:
        trainer.fit(module, datamodule=data)
    finally:
        mp.undo()
    return events, target_snapshots, module, data.buffer


def test_no_updates_during_random_phase(schedule_run):
    events, *_ = schedule_run
    assert all(step > RANDOM_STEPS for _, step in events)


def test_encoder_bursts_precede_rl_updates_1_6_11(schedule_run):
    events, _, module, _ = schedule_run
    rl_updates = TOTAL_STEPS - RANDOM_STEPS
    assert module.rl_updates == rl_updates
    expected: list[str] = []
    for n in range(1, rl_updates + 1):
        if (n - 1) % PERIOD == 0:
            expected += ["sync_targets"] + ["encoder_loss"] * PERIOD
        expected += ["value_loss", "actor_loss"]
    assert [name for name, _ in events] == expected
    # One value and one policy update per env step after the random phase.
    value_steps = [step for name, step in events if name == "value_loss"]
    assert value_steps == list(range(RANDOM_STEPS + 1, TOTAL_STEPS + 1))


def test_targets_and_reward_scales_change_only_at_syncs(schedule_run):
    events, snapshots, _, buffer = schedule_run
    sync_steps = {step for name, step in events if name == "sync_targets"}
    assert sync_steps == {RANDOM_STEPS + 1 + k * PERIOD for k in range(4)}
    for (prev_step, prev_target, prev_r, prev_rt), (step, target, r, rt) in zip(snapshots, snapshots[1:]):
        if step in sync_steps:
            continue
        assert torch.equal(prev_target, target), f"target critic changed at env step {step} without a sync"
        assert (prev_r, prev_rt) == (r, rt), f"reward scales changed at env step {step} without a sync"
    # Each sync sets r̄' to the previous r̄ (1 at the first) and r̄ to the mean |r| of the transitions stored so far:
    # Pendulum episodes last 200 steps, so after env step t the buffer holds exactly rewards 0 .. t - 1.
    rewards = buffer.state_dict()["storage"]["tensors"]["reward"].double()
    previous = 1.0
    for step, _, r, rt in (s for s in snapshots if s[0] in sync_steps):
        assert r == pytest.approx(rewards[:step].abs().mean().item(), rel=1e-6), f"r̄ at env step {step}"
        assert rt == previous
        previous = r
    assert len({round(s[2], 6) for s in snapshots if s[0] in sync_steps}) == len(sync_steps)  # refreshed each time
