"""Toy gymnasium environments of "a user's own package", for tests/test_own_envs.py: importing this module
registers them, and ``--data.env Gym-tests.toy_envs:ToyReach-v0`` imports it through gymnasium's ``module:EnvId``
form (run from the repository root)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ToyReach(gym.Env):
    """Continuous vector task: move a point in [-1, 1]^2 to the origin. Actions in [0, 2]^2 (asymmetric, so MR.Q's
    [-1, 1] actions are mapped affinely) are shifted by -1; reward -|x|_1; 50-step time limit (truncation only)."""

    def __init__(self, step_size: float = 0.2) -> None:
        self.step_size = step_size
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float64)
        self.action_space = spaces.Box(0.0, 2.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, 2)
        return self.x.copy(), {}

    def step(self, action):
        self.x = np.clip(self.x + self.step_size * (np.asarray(action, dtype=np.float64) - 1.0), -1.0, 1.0)
        return self.x.copy(), -float(np.abs(self.x).sum()), False, False, {}


class ToyCatch(gym.Env):
    """Discrete pixel task: a ball falls down a 32x32 RGB screen, a 3-action paddle (left, stay, right) at the
    bottom catches it (+1) or not (-1); the episode terminates when the ball reaches the bottom row."""

    SIZE, CELL = 8, 4  # an 8x8 grid drawn at 4 pixels per cell

    def __init__(self) -> None:
        side = self.SIZE * self.CELL
        self.observation_space = spaces.Box(0, 255, (side, side, 3), np.uint8)
        self.action_space = spaces.Discrete(3)

    def _render(self) -> np.ndarray:
        grid = np.zeros((self.SIZE, self.SIZE, 3), np.uint8)
        grid[self.ball_row, self.ball_col, 0] = 255
        grid[self.SIZE - 1, self.paddle, 1] = 255
        return np.kron(grid, np.ones((self.CELL, self.CELL, 1), np.uint8))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.ball_row, self.ball_col = 0, int(self.np_random.integers(self.SIZE))
        self.paddle = int(self.np_random.integers(self.SIZE))
        return self._render(), {}

    def step(self, action):
        self.paddle = int(np.clip(self.paddle + int(action) - 1, 0, self.SIZE - 1))
        self.ball_row += 1
        done = self.ball_row == self.SIZE - 1
        reward = (1.0 if self.ball_col == self.paddle else -1.0) if done else 0.0
        return self._render(), reward, done, False, {}


class ToyDict(gym.Env):
    """A Dict observation space: not supported by MR.Q (the error names what is)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict({"position": spaces.Box(-1, 1, (2,))})
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"position": np.zeros(2, np.float32)}, {}

    def step(self, action):
        return {"position": np.zeros(2, np.float32)}, 0.0, True, False, {}


def make_torchrl_cartpole(from_pixels: bool = False):
    """A TorchRL env factory for the ``class_path`` form: gymnasium's CartPole through TorchRL's ``GymEnv`` (float32
    "observation", one-hot actions, terminated/truncated), MR.Q's contract as it is."""
    from torchrl.envs import GymEnv

    return GymEnv("CartPole-v1", from_pixels=from_pixels)


def make_torchrl_pendulum():
    """A TorchRL env outside the contract: actions bounded in [-2, 2], not [-1, 1]."""
    from torchrl.envs import GymEnv

    return GymEnv("Pendulum-v1")


def not_an_env() -> float:
    """A class_path target that returns something else than an env (refused in one line)."""
    return 1.5


REACH_LIMIT = 40  # not callable: refused as a class_path target

for _id, _entry, _limit in (("ToyReach-v0", ToyReach, 50), ("ToyCatch-v0", ToyCatch, None), ("ToyDict-v0", ToyDict, None)):
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry, max_episode_steps=_limit)
