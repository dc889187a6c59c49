"""The random phase and the start of learning (algorithm §9 steps 2 and 4, §16 Q9), on a toy env whose episodes
terminate after 3 steps: every episode end adds a final-observation slot to the replay buffer, so the official
slot-count rule (``official_quirks``) ends the random phase after fewer env steps than the default rule."""

from __future__ import annotations

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from mrq_lightning.agent import Warmup
from mrq_lightning.data import MRQReplayBuffer
from mrq_lightning.modules.builders import MRQActor
from mrq_lightning.objectives.mrq_loss import MRQLoss
from mrq_lightning.training import MRQ, MRQDataModule

EPISODE, RANDOM_STEPS = 3, 10


def transition(t: int) -> TensorDict:
    """Env step t (1-based) of a stream of 3-step terminated episodes."""
    ends = t % EPISODE == 0
    return TensorDict({"observation": torch.full((2,), float(t)), "action": torch.zeros(1),
                       "next": {"observation": torch.full((2,), t + 0.5), "reward": torch.ones(1),
                                "terminated": torch.tensor([ends]), "truncated": torch.tensor([False])}}, [])  # fmt: skip


def decisions(official_quirks: bool, steps: int = 16) -> tuple[list[int], list[int], list[int]]:
    """(env steps acted at random, env steps followed by an update, slots after each step) on the toy stream."""
    rule = Warmup(RANDOM_STEPS, official_quirks)
    buffer = MRQReplayBuffer(capacity=100, obs_shape=(2,), action_dim=1)
    random_steps, learning_steps, slots = [], [], []
    for t in range(1, steps + 1):
        if rule.acts_randomly(t - 1, len(buffer)):
            random_steps.append(t)
        buffer.add(transition(t))
        slots.append(len(buffer))
        if rule.learns(t, len(buffer)):
            learning_steps.append(t)
    return random_steps, learning_steps, slots


def test_default_counts_env_steps():
    random_steps, learning_steps, _ = decisions(official_quirks=False)
    assert random_steps == list(range(1, RANDOM_STEPS + 1))  # 10 random env steps
    assert learning_steps[0] == RANDOM_STEPS + 1  # the policy acts at 11, then the first update


def test_official_rule_counts_slots_final_observations_included():
    random_steps, learning_steps, slots = decisions(official_quirks=True)
    # 3 transitions + 1 final-observation slot per episode: 1, 2, 4, 5, 6, 8, 9, 10, 12, ...
    assert slots[:9] == [1, 2, 4, 5, 6, 8, 9, 10, 12]
    assert random_steps == list(range(1, 9))  # random while fewer than 10 slots: env steps 1..8
    assert learning_steps[0] == 9  # after step 9 the buffer holds 12 > 10 slots


def test_official_rule_policy_acts_once_untrained_at_exactly_the_threshold():
    rule = Warmup(RANDOM_STEPS, official_quirks=True)
    assert not rule.acts_randomly(env_steps=8, buffer_slots=RANDOM_STEPS)  # 10 slots: the policy acts ...
    assert not rule.learns(env_steps=9, buffer_slots=RANDOM_STEPS)  # ... and with 10 slots stored, no update
    assert rule.learns(env_steps=9, buffer_slots=RANDOM_STEPS + 1)


# ------------------------------------------------------------------------------------------------------------------
# Through the trainer: the collector's random actions and the first update follow the rule
# ------------------------------------------------------------------------------------------------------------------
class ThreeStepEnv(gym.Env):
    """Box(2) observations, Box(1) actions; every episode terminates after 3 steps."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, self.t, np.float32), float(action[0]), self.t == EPISODE, False, {}


gym.register("MRQThreeStep-v0", entry_point=ThreeStepEnv)


def fit_and_record(official_quirks: bool, monkeypatch) -> tuple[int, int]:
    """(env steps taken when the policy first acted, env step of the first value update)."""
    policy_calls, updates, collecting = [], [], []
    actor_forward, value_loss, collect_step = MRQActor.forward, MRQLoss.value_loss, MRQDataModule.collect_step

    def collect(self):  # policy calls outside env steps (the collector probes its policy once when built) don't count
        collecting.append(True)
        collect_step(self)
        collecting.clear()

    def forward(self, observation):
        if collecting:
            policy_calls.append(data.env_steps)
        return actor_forward(self, observation)

    monkeypatch.setattr(MRQDataModule, "collect_step", collect)
    monkeypatch.setattr(MRQActor, "forward", forward)
    monkeypatch.setattr(MRQLoss, "value_loss", lambda self, *a, **k: updates.append(module.env_steps) or value_loss(self, *a, **k))
    torch.manual_seed(0)
    module = MRQ(batch_size=4, zs_dim=8, za_dim=4, zsa_dim=8, hidden_dim=8, target_update_period=2,
                 official_quirks=official_quirks, log_every_n_env_steps=10**9)  # fmt: skip
    data = MRQDataModule(env="Gym-MRQThreeStep-v0", total_steps=14, random_steps=RANDOM_STEPS, eval_episodes=0,
                         eval_every=10**9, buffer_capacity=200, official_quirks=official_quirks)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=data)
    return policy_calls[0], updates[0]


@pytest.mark.parametrize("official_quirks, first_policy_step, first_update", [(False, 11, 11), (True, 9, 9)])
def test_trainer_follows_the_rule(official_quirks, first_policy_step, first_update, monkeypatch):
    taken_before_policy, update_step = fit_and_record(official_quirks, monkeypatch)
    assert taken_before_policy + 1 == first_policy_step  # the collector acted at random before
    assert update_step == first_update
