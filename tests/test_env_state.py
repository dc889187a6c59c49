"""Mid-episode save/restore of every suite (``get_state``/``set_state``, used by checkpoints) and the trainer's fallback
for environments that cannot be restored (a fresh episode, the interrupted one stored as truncated)."""

from __future__ import annotations

import io
import logging
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from mrq_lightning.envs import make_env, make_gymnasium_env
from mrq_lightning.envs.state import get_env_state, gymnasium_state, set_env_state

pytestmark = pytest.mark.envs


def _roll(env, actions):
    """Step through ``actions``, resetting after every episode end; record everything observable."""
    out = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        out.append((np.array(obs), reward, terminated, truncated))
        if terminated or truncated:
            out.append((np.array(env.reset()[0]), None, None, None))
    return out


@pytest.mark.parametrize(
    "name, before, after, kwargs",
    [
        ("Dmc-cartpole-balance", 15, 40, {"max_steps": 20}),
        ("Dmc-reacher-easy", 15, 40, {"max_steps": 20}),  # target position lives in the MjModel
        ("Dmc-visual-cartpole-swingup", 5, 10, {"max_steps": 8}),
        ("Gym-Hopper-v5", 30, 100, {}),
        ("Gym-CartPole-v1", 10, 100, {}),
        ("Gym-Pendulum-v1", 10, 200, {}),  # crosses the TimeLimit
        ("Atari-Pong-v5", 50, 100, {"max_frames": 400}),
    ],
)
def test_restored_env_continues_bit_identically(name, before, after, kwargs):
    env, _ = make_gymnasium_env(name, 0, **kwargs)
    env.reset()
    rng = np.random.default_rng(0)
    space = env.action_space

    def act():
        return int(rng.integers(space.n)) if hasattr(space, "n") else rng.uniform(-1, 1, space.shape).astype(np.float32)

    _roll(env, [act() for _ in range(before)])
    state = get_env_state(env)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # checkpoints load with weights_only=True
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    actions = [act() for _ in range(after)]
    expected = _roll(env, actions)

    other, _ = make_gymnasium_env(name, 123, **kwargs)  # another seed, another point in another episode
    other.reset()
    _roll(other, [act() for _ in range(3)])
    set_env_state(other, state)
    got = _roll(other, actions)
    assert len(got) == len(expected)
    for (o1, *rest1), (o2, *rest2) in zip(expected, got):
        assert np.array_equal(o1, o2) and rest1 == rest2


def test_state_reaches_through_the_torchrl_wrapper_and_checks_the_env_kind():
    env, _ = make_env("Dmc-cartpole-balance", 0)
    state = get_env_state(env)
    assert state["class"] == "DMCEnv"
    other, _ = make_env("Gym-Pendulum-v1", 0)
    with pytest.raises(ValueError, match="cannot restore it into GymSuiteEnv"):
        set_env_state(other, state)


def test_unknown_gymnasium_envs_are_not_restorable():
    class Opaque(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (1,))
        action_space = gym.spaces.Discrete(2)

    assert gymnasium_state(Opaque()) is None


def test_unrestorable_env_resumes_with_a_fresh_episode(tmp_path, monkeypatch, caplog):
    from mrq_lightning.training import MRQ, MRQDataModule
    from mrq_lightning.training import datamodule as datamodule_module
    from mrq_lightning.training.checkpoint import MRQCheckpoint

    def fit(total, ckpt_path=None):
        torch.manual_seed(0)
        module = MRQ(batch_size=16, zs_dim=32, za_dim=16, zsa_dim=32, hidden_dim=32, target_update_period=5,
                     log_every_n_env_steps=10**9)  # fmt: skip
        data = MRQDataModule(env="Gym-Pendulum-v1", total_steps=total, random_steps=20, eval_episodes=0,
                             eval_every=10**9, buffer_capacity=1000)  # fmt: skip
        trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                             callbacks=[MRQCheckpoint(every_n_env_steps=0)])  # fmt: skip
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module, data

    with monkeypatch.context() as patch:  # pretend Pendulum's state cannot be saved
        patch.setattr(datamodule_module, "get_env_state", lambda env: None)
        _, first = fit(30)
    assert first._mid_episode and first.buffer.write_count == 30  # Pendulum episodes last 200 steps
    (rank_state_file,) = tmp_path.glob("**/rank0/state.pt")
    held_observation = torch.load(rank_state_file, weights_only=True)["carrier"]["observation"].reshape(3)
    with caplog.at_level(logging.WARNING, logger="mrq_lightning.training.datamodule"):
        module, data = fit(45, ckpt_path="last")
    assert "starts a fresh episode at env step 30" in caplog.text
    assert module.env_steps == data.env_steps == 45 and module.rl_updates == 25
    # 30 stored + 15 new transitions; between them, the interrupted episode's final-observation slot closes it as
    # truncated at the observation the collector held (its last stored successor, which stays reachable).
    assert data.buffer.write_count == 45 and len(data.buffer) == 46 and data.buffer.num_transitions == 45
    closed = data.buffer.gather(torch.tensor([29]), horizon=1)
    assert torch.equal(closed["next", "observation"][0], held_observation)
    assert data.buffer.env_terminates is False

    # A fresh (non-resume) fit into that fixed directory (no logger) would overwrite the run: refused.
    from mrq_lightning.errors import MRQUserError

    with pytest.raises(MRQUserError, match="already holds checkpoints of another run.*--ckpt_path last"):
        fit(60)
