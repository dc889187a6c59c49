"""``Atari-<Game>-v5`` preset (algorithm §2.2, §13.4), as a small gymnasium env of our own.

Inner env: ``gymnasium.make('ALE/<Game>-v5', frameskip=1, obs_type='grayscale',
repeat_action_probability=0.25)`` (minimal action set, ALE's own 108k-frame limit), ``reset(seed=seed)`` once
at construction. One agent step repeats the action up to 4 times, sums the raw rewards, pushes every raw
210×160 frame into a 2-frame queue and stops early at terminated/truncated. Observation =
``cv2.resize(max(queue), (84, 84), INTER_AREA)`` uint8; the state is the last 4 observations (4×84×84, oldest
first). Reset puts the reset frame in both queue slots and 4 copies of its observation in the history.
Terminated = game over (no life-loss terminal). Truncated = our own frame counter reaching ``max_frames``
(108,000 by default; the inner flag fires at the same count and is OR-ed in only as a safety net). No no-op
starts, no reward clipping. ε-random action (``EVAL_EPSILON`` = 0.001, drawn once per agent step from an
RNG seeded with the env seed): in the evaluation env always, in the training env only with
``official_quirks=True`` (quirk Q1) — the registry decides and passes ``epsilon``.

Why not ``gymnasium.wrappers.AtariPreprocessing`` (read in gymnasium 1.4.0,
``gymnasium/wrappers/atari_preprocessing.py``)? With ``noop_max=0, frame_skip=4, screen_size=84,
terminal_on_life_loss=False`` it matches on full 4-frame steps (max of frames 3 and 4, INTER_AREA resize,
uint8) and it does stop early at terminal/truncated, but it is not exact:

1. It grabs the screen only at sub-steps 3 and 4 and, on an early stop (terminal or truncation at sub-step
   t < 4), breaks *before* grabbing. The returned observation is then the previous agent step's pooled image
   (its in-place ``np.maximum(buf0, buf1, out=buf0)`` already overwrote slot 0): the terminal frame never
   appears. The algorithm's 2-frame queue holds the most recent raw frames, terminal frame included (a terminal
   after one sub-step gives max(previous step's last frame, terminal frame)). This is the final observation
   stored for every Atari terminal, so it matters for the encoder's dynamics targets.
2. Reset fills the second slot with zeros instead of the reset frame (no effect on the max, but not the
   algorithm's queue state).
3. Truncation is the inner ALE flag, not a frame counter of the wrapper, so the limit cannot be made small
   for tests; there is no ε-random action and no frame history (``FrameStackObservation`` would add a layer).

So this module implements the pipeline directly; it is also one Python layer instead of three.
"""

from __future__ import annotations

import difflib
from collections import deque
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from mrq_lightning.errors import EnvironmentSetupError
from mrq_lightning.third_party import restore_gymnasium_wrappers, wrapper_elapsed_steps

from .info import EnvInfo
from .names import invalid_env_name
from .state import numpy_rng_state, set_numpy_rng_state

__all__ = ["ATARI_57", "EVAL_EPSILON", "AtariEnv", "register_ale"]

#: The 57 games of the paper (Atari-57, including Defender and Surround), as ALE v5 names.
ATARI_57: tuple[str, ...] = tuple(
    "Alien Amidar Assault Asterix Asteroids Atlantis BankHeist BattleZone BeamRider Berzerk Bowling Boxing "
    "Breakout Centipede ChopperCommand CrazyClimber Defender DemonAttack DoubleDunk Enduro FishingDerby Freeway "
    "Frostbite Gopher Gravitar Hero IceHockey Jamesbond Kangaroo Krull KungFuMaster MontezumaRevenge MsPacman "
    "NameThisGame Phoenix Pitfall Pong PrivateEye Qbert Riverraid RoadRunner Robotank Seaquest Skiing Solaris "
    "SpaceInvaders StarGunner Surround Tennis TimePilot Tutankham UpNDown Venture VideoPinball WizardOfWor "
    "YarsRevenge Zaxxon".split()
)
assert len(ATARI_57) == 57

EVAL_EPSILON = 0.001
FRAME_SKIP = 4
HISTORY = 4
IMAGE_SIZE = 84
MAX_FRAMES = 108_000
STICKY_PROB = 0.25


def register_ale() -> None:
    try:
        import ale_py
    except ModuleNotFoundError as err:
        raise ImportError("Atari-* environments need ale-py (ROMs are bundled since 0.9): pip install ale-py") from err
    gym.register_envs(ale_py)


def _make_inner(game: str) -> gym.Env:
    register_ale()
    env_id = f"ALE/{game}-v5"
    if env_id not in gym.registry:
        games = sorted({k[4:-3] for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5")})
        close = difflib.get_close_matches(game, games, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise invalid_env_name(
            f"Atari-{game}-v5",
            f"unknown ALE game {game!r}.{hint} The paper's 57 games: {', '.join(ATARI_57)}",
        )
    try:
        return gym.make(env_id, frameskip=1, obs_type="grayscale", repeat_action_probability=STICKY_PROB)
    except Exception as err:  # e.g. a missing ROM file
        raise EnvironmentSetupError(
            f"could not load the ALE ROM for {game!r} ({type(err).__name__}: {err}). ale-py >= 0.9 bundles the "
            "ROMs: `pip install -U ale-py`."
        ) from err


class AtariEnv(gym.Env):
    """ALE v5 game with MR.Q's preprocessing; emits uint8 ``history × 84 × 84`` states."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        game: str,
        seed: int,
        *,
        epsilon: float = 0.0,
        max_frames: int = MAX_FRAMES,
        frame_skip: int = FRAME_SKIP,
        history: int = HISTORY,
        image_size: int = IMAGE_SIZE,
    ) -> None:
        self.game = game
        self.epsilon = float(epsilon)
        self.max_frames = int(max_frames)
        self.frame_skip = int(frame_skip)
        self.history = int(history)
        self.image_size = int(image_size)
        self.env = _make_inner(game)
        self.ale = self.env.unwrapped.ale
        self.action_dim = int(self.env.action_space.n)
        self.action_space = spaces.Discrete(self.action_dim)
        self.observation_space = spaces.Box(0, 255, (self.history, self.image_size, self.image_size), np.uint8)
        self._frames = 0  # raw emulator frames since the last reset
        self._pool: list[np.ndarray] = []  # [older, newer] raw frames
        self._obs: deque = deque(maxlen=self.history)
        self._seed(seed)

    def _seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)  # ε decisions and ε actions
        self.action_space.seed(seed)
        self.env.reset(seed=seed)

    @property
    def episode_frames(self) -> int:
        """Emulator frames consumed since the last reset (the truncation counter)."""
        return self._frames

    def _resize(self) -> np.ndarray:
        pooled = np.maximum(self._pool[0], self._pool[1])
        return cv2.resize(pooled, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        # reset(seed=s) == the first reset of a fresh preset built with seed s (seeded reset, then unseeded).
        if seed is not None:
            self._seed(seed)
        frame, info = self.env.reset(options=options)
        self._frames = 0
        self._pool = [frame, frame]
        obs = self._resize()
        self._obs.extend([obs] * self.history)
        return np.stack(self._obs), info

    def step(self, action):
        if self.epsilon > 0.0 and self._rng.random() < self.epsilon:
            action = int(self._rng.integers(self.action_dim))
        reward = 0.0
        terminated = truncated = False
        info: dict = {}
        pool = self._pool
        for _ in range(self.frame_skip):
            frame, r, terminated, inner_truncated, info = self.env.step(action)
            self._frames += 1
            reward += r
            pool[0], pool[1] = pool[1], frame
            truncated = self._frames >= self.max_frames or inner_truncated
            if terminated or truncated:
                break
        self._obs.append(self._resize())
        return np.stack(self._obs), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------------------ videos (README "Evaluation videos")
    @property
    def video_fps(self) -> float:
        return 60.0 / self.frame_skip  # the emulator runs at 60 frames per second; one video frame per agent step

    def render_views(self) -> dict[str, np.ndarray]:
        """The emulator screen in colour, (210, 160, 3) uint8 (reading it does not advance the emulator)."""
        return {"screen": self.ale.getScreenRGB()}

    # ------------------------------------------------------------------ checkpoint/resume
    def get_state(self) -> dict:
        """Emulator state with its RNG (sticky actions), max-pool queue, frame history, frame counter, ε RNG."""
        return {
            "ale": self.ale.cloneState(include_rng=True).serialize(),
            "frames": self._frames,
            "pool": torch.from_numpy(np.stack(self._pool)) if self._pool else None,
            "history": torch.from_numpy(np.stack(self._obs)) if self._obs else None,
            "rng": numpy_rng_state(self._rng),
            "elapsed_steps": wrapper_elapsed_steps(self.env)[0],  # outermost layer (None: ALE v5 has no TimeLimit)
        }

    def set_state(self, state: dict) -> None:
        import ale_py

        self.ale.restoreState(ale_py.ALEState(state["ale"]))
        self._frames = int(state["frames"])
        self._pool = [] if state["pool"] is None else list(state["pool"].numpy().copy())
        self._obs.clear()
        if state["history"] is not None:
            self._obs.extend(list(state["history"].numpy().copy()))
        set_numpy_rng_state(self._rng, state["rng"])
        restore_gymnasium_wrappers(self.env, [state.get("elapsed_steps")])  # OrderEnforcing: mid-episode

    def env_info(self, name: str) -> EnvInfo:
        return EnvInfo(
            name=name,
            obs_shape=(self.history, self.image_size, self.image_size),
            action_dim=self.action_dim,
            discrete=True,
            pixels=True,
            history=self.history,
            frame_channels=1,
            max_action=1.0,
            max_episode_steps=-(-self.max_frames // self.frame_skip),
        )
