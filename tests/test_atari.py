"""Atari preset on a real ROM (Pong), checked frame by frame against algorithm §13.4."""

from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np
import pytest
import torch

from mrq_lightning.envs import EnvInfo, make_env, make_gymnasium_env
from mrq_lightning.envs.atari_suite import ATARI_57, EVAL_EPSILON, AtariEnv, register_ale

pytestmark = pytest.mark.envs


class Recorder:
    """Spy on the inner ALE env: raw frames, actions, and optionally a forced terminal at a given call."""

    def __init__(self, env: AtariEnv):
        self.env = env
        self.frames: list[np.ndarray] = []
        self.actions: list[int] = []
        self.force_terminal_at: int | None = None
        self.rewards: list[float] = []
        self.inject_reward: dict[int, float] = {}  # raw step number since reset (1-based) -> added reward
        self._step, self._reset = env.env.step, env.env.reset
        env.env.step, env.env.reset = self.step, self.reset

    def step(self, action):
        frame, r, term, trunc, info = self._step(action)
        self.frames.append(frame.copy())
        self.actions.append(int(action))
        r += self.inject_reward.get(len(self.actions), 0.0)
        self.rewards.append(r)
        if self.force_terminal_at is not None and len(self.frames) == self.force_terminal_at:
            term = True
        return frame, r, term, trunc, info

    def reset(self, **kwargs):
        frame, info = self._reset(**kwargs)
        self.frames = [frame.copy()]
        self.actions = []
        return frame, info


def _resize_max(a, b):
    return cv2.resize(np.maximum(a, b), (84, 84), interpolation=cv2.INTER_AREA)


def test_game_list_and_inner_env_settings():
    register_ale()
    assert len(set(ATARI_57)) == 57 and {"Defender", "Surround", "Pong"} <= set(ATARI_57)
    assert all(f"ALE/{g}-v5" in gym.registry for g in ATARI_57)
    env, info = make_gymnasium_env("Atari-Pong-v5", 0)
    assert info == EnvInfo("Atari-Pong-v5", (4, 84, 84), 6, True, True, 4, 1, 1.0, 27_000)
    inner = env.env.unwrapped
    assert inner._frameskip == 1 and inner._obs_type == "grayscale"
    assert inner.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert env.action_space.n == len(inner.ale.getMinimalActionSet()) == 6
    assert env.max_frames == 108_000 and env.epsilon == 0.0
    assert inner.ale.getInt("max_num_frames_per_episode") == 108_000  # the emulator's own limit agrees


def test_unknown_game_is_a_value_error():
    with pytest.raises(ValueError, match="unknown ALE game 'Pongg'") as exc:
        make_env("Atari-Pongg-v5", 0)
    assert "Pong" in str(exc.value) and "Atari-<Game>-v5" in str(exc.value)


def test_frames_pooling_resize_and_history():
    env, _ = make_gymnasium_env("Atari-Pong-v5", 1)
    rec = Recorder(env)
    ale = env.ale
    state, _ = env.reset()
    assert state.shape == (4, 84, 84) and state.dtype == np.uint8
    assert ale.getEpisodeFrameNumber() == 0
    first = _resize_max(rec.frames[0], rec.frames[0])
    for i in range(4):  # reset: 4 copies of the first observation
        np.testing.assert_array_equal(state[i], first)

    rng = np.random.default_rng(0)
    distinct = 0
    for t in range(60):
        before, n_before = ale.getEpisodeFrameNumber(), len(rec.frames)
        action = int(rng.integers(6))
        nxt, reward, terminated, truncated, _ = env.step(action)
        assert ale.getEpisodeFrameNumber() - before == 4 == len(rec.frames) - n_before
        assert env.episode_frames == ale.getEpisodeFrameNumber()
        assert rec.actions[-4:] == [action] * 4  # ε = 0 in a default training env
        np.testing.assert_array_equal(nxt[3], _resize_max(rec.frames[-2], rec.frames[-1]))  # max(f3, f4)
        np.testing.assert_array_equal(nxt[:3], state[1:])  # oldest first
        assert not terminated and not truncated
        distinct += not np.array_equal(nxt[3], state[3])
        state = nxt
    assert distinct > 10  # the screen really changes, so the equalities above are informative


def test_rewards_are_summed_over_the_repeat_and_not_clipped():
    env, _ = make_gymnasium_env("Atari-Pong-v5", 4)
    rec = Recorder(env)
    env.reset()
    rec.inject_reward = {9: 5.0, 11: -2.5}  # raw steps 9 and 11 fall in agent step t=2 (raw steps 9-12)
    rng = np.random.default_rng(4)
    real_points = 0
    for t in range(400):
        n_before = len(rec.rewards)
        _, reward, terminated, truncated, _ = env.step(int(rng.integers(6)))
        raw = rec.rewards[n_before:]
        assert len(raw) == 4 and reward == sum(raw)
        if t == 2:
            assert reward == pytest.approx(2.5 + sum(r for r in raw if abs(r) == 1.0))  # no clipping to [-1, 1]
        real_points += any(r != 0 for r in raw) and t != 2
        assert not terminated and not truncated
    assert real_points >= 1  # Pong scored: the equality above also held on real game rewards


def test_losing_a_life_is_not_a_terminal():
    env, _ = make_gymnasium_env("Atari-Breakout-v5", 0)
    env.reset()
    rng = np.random.default_rng(0)
    lives, lost = env.ale.lives(), 0
    for _ in range(3000):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_dim)))
        if env.ale.lives() < lives:
            lives, lost = env.ale.lives(), lost + 1
            assert not terminated or lives == 0
        if terminated or truncated:
            break
    assert lost >= 2 and (terminated == (env.ale.lives() == 0))


@pytest.mark.parametrize("stop_at", [1, 2, 3])
def test_early_stop_at_terminal_pools_the_last_two_raw_frames(stop_at):
    env, _ = make_gymnasium_env("Atari-Pong-v5", 2)
    rec = Recorder(env)
    state, _ = env.reset()
    for _ in range(5):
        state, *_ = env.step(0)
    rec.force_terminal_at = len(rec.frames) + stop_at  # the emulator reports terminal at this sub-step
    before = env.ale.getEpisodeFrameNumber()
    nxt, reward, terminated, truncated, _ = env.step(3)
    assert terminated and not truncated
    assert env.ale.getEpisodeFrameNumber() - before == stop_at
    # the queue holds the two most recent raw frames, terminal frame included
    np.testing.assert_array_equal(nxt[3], _resize_max(rec.frames[-2], rec.frames[-1]))
    np.testing.assert_array_equal(nxt[:3], state[1:])


def test_truncation_at_frame_limit_through_torchrl():
    env, info = make_env("Atari-Pong-v5", 0, max_frames=400)
    assert info.max_episode_steps == 100
    td = env.rollout(150, break_when_any_done=True)
    assert td.batch_size == (100,)
    assert td["observation"].dtype == torch.uint8 and td["observation"].shape == (100, 4, 84, 84)
    assert td["next", "reward"].shape == (100, 1) and td["next", "reward"].dtype == torch.float32
    assert not td["next", "truncated"][:-1].any() and td["next", "truncated"][-1].item()
    assert not td["next", "terminated"].any() and td["next", "done"][-1].item()
    assert env._env.ale.getEpisodeFrameNumber() == 400
    # a limit that is not a multiple of 4 cuts the last agent step short
    genv, _ = make_gymnasium_env("Atari-Pong-v5", 0, max_frames=10)
    rec = Recorder(genv)
    genv.reset()
    assert genv.step(0)[3] is False and genv.step(0)[3] is False
    nxt, _, terminated, truncated, _ = genv.step(0)
    assert truncated and not terminated and genv.episode_frames == 10
    np.testing.assert_array_equal(nxt[3], _resize_max(rec.frames[-2], rec.frames[-1]))
    genv.reset()
    assert genv.episode_frames == 0


def test_collector_one_hot_actions_and_seeding():
    from torchrl.collectors import Collector

    env, _ = make_env("Atari-Pong-v5", 3)
    collector = Collector(env, None, frames_per_batch=8, total_frames=8, auto_register_policy_transforms=False)
    td = next(iter(collector))
    collector.shutdown()
    assert td["action"].shape == (8, 6) and td["action"].dtype == torch.int64
    assert torch.equal(td["action"].sum(-1), torch.ones(8, dtype=torch.int64))
    assert td["next", "observation"].shape == (8, 4, 84, 84)
    from torchrl.envs.utils import check_env_specs

    check_env_specs(env)
    # same seed, same actions -> same trajectory (sticky actions are seeded too); seeded reset == fresh env
    a, _ = make_gymnasium_env("Atari-Pong-v5", 9)
    b, _ = make_gymnasium_env("Atari-Pong-v5", 9)
    c, _ = make_gymnasium_env("Atari-Pong-v5", 1)
    sa, sb, sc = a.reset()[0], b.reset()[0], c.reset(seed=9)[0]
    for t in range(40):
        sa, sb, sc = a.step(t % 6)[0], b.step(t % 6)[0], c.step(t % 6)[0]
    assert np.array_equal(sa, sb) and np.array_equal(sa, sc)
    assert a.ale.getEpisodeFrameNumber() == b.ale.getEpisodeFrameNumber()


@pytest.mark.parametrize(
    "evaluation, quirks, expected",
    [(False, False, 0.0), (True, False, EVAL_EPSILON), (False, True, EVAL_EPSILON), (True, True, EVAL_EPSILON)],
)
def test_epsilon_rule(evaluation, quirks, expected):
    env, _ = make_env("Atari-Pong-v5", 0, evaluation=evaluation, official_quirks=quirks)
    assert env._env.epsilon == expected  # Q1: training env gets ε only with official_quirks


def test_epsilon_replaces_the_agent_action():
    env = AtariEnv("Pong", 0, epsilon=1.0)
    rec = Recorder(env)
    env.reset()
    for _ in range(30):
        env.step(0)
    chosen = rec.actions[::4]
    assert all(rec.actions[i: i + 4] == [chosen[i // 4]] * 4 for i in range(0, 120, 4))  # one draw per agent step
    assert len(set(chosen)) > 2
    env = AtariEnv("Pong", 0, epsilon=0.0)
    rec = Recorder(env)
    env.reset()
    for _ in range(30):
        env.step(0)
    assert set(rec.actions) == {0}
