"""``MRQDataModule``: environments, a TorchRL collector and the MR.Q replay buffer behind Lightning's data API.

One ``training_step`` is one environment step (algorithm §9): the stream below steps the collector once, stores the
transition, and hands the step index to the module, which then samples its own batches from :attr:`buffer`
(so that priorities written by update t are seen by the sample of update t + 1).

Ordering handled here: the stream is *sized*, so Lightning does not prefetch the next env step before the current
update; the DataLoader uses an identity collate; the collector is built in ``train_dataloader()``, i.e. after the
module sits on its device.

The replay buffer follows the model: its window, LAP alpha and minimum priority come from
``MRQ.replay_settings()`` (algorithm §11). The random phase and the start of learning follow :class:`Warmup`
(algorithm §9; §16 Q9 under ``official_quirks``).

Checkpoint/resume: :meth:`state_dict` (in the ``.ckpt``, rank 0) holds the data config and the sidecar name;
:meth:`save_rank_state` writes each rank's replay buffer and its rank-local state (simulator state, the collector's
current observation, episode bookkeeping, RNG states) into the sidecar; :meth:`load_state_dict` loads them back on
every rank, and the first ``next()`` of the env-step stream re-applies the simulator state, the observation and the
RNG states, so the run continues exactly where the checkpoint was taken (helpers: ``training/resume.py``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import BaseCollector

from mrq_lightning.agent import Warmup
from mrq_lightning.collector import COLLECTOR_KINDS, carried_observation, make_collector, restore_carried_observation
from mrq_lightning.data import MRQReplayBuffer
from mrq_lightning.envs import EnvInfo, make_env, parse_env_name
from mrq_lightning.envs.custom import CustomEnvSpec, custom_env_spec
from mrq_lightning.envs.state import get_env_state, set_env_state
from mrq_lightning.errors import CheckpointError, ConfigurationError
from mrq_lightning.evaluation import episode_seeds, evaluate_in_parallel, evaluate_policy
from mrq_lightning.hyperparameters import REPLAY, ReplayHParams, replay_settings
from mrq_lightning.training.resume import capture_rng, check_data_section, read_rank_state, restore_rng, write_rank_state

log = logging.getLogger(__name__)

__all__ = ["MRQDataModule"]


def _official_random_phase_action(transition: TensorDictBase) -> TensorDictBase:
    """Algorithm §16 Q2, reproduced: the official buffer stores a random-phase discrete action (a ``numpy.int64``,
    not one-hot encoded there) as its index broadcast over every action dimension, e.g. ``[3, 3, 3, 3]``."""
    one_hot = transition.get("action")
    index = one_hot.argmax(-1, keepdim=True).to(torch.float32)
    return transition.clone(recurse=False).set("action", index.expand(one_hot.shape).clone())


def _identity(batch):
    return batch


class EnvStepStream(IterableDataset):
    """Yields env-step indices ``start .. total - 1``; each ``next`` performs and stores one env step."""

    def __init__(self, datamodule: "MRQDataModule", start: int, total: int) -> None:
        self.datamodule = datamodule
        self.start = start
        self.total = total

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        # Simulator state, current observation and RNG states go in right before the first env step, after
        # everything Lightning does between building the collector and training (which may draw random numbers).
        self.datamodule.start_stream()
        for step in range(self.start, self.total):
            self.datamodule.collect_step()
            yield step


# Data settings that must match to resume a checkpoint (the budget and evaluation settings may change).
RESUME_KEYS = ("env", "seed", "random_steps", "buffer_capacity", "pixel_augmentation", "official_quirks")
EVAL_PROTOCOLS = ("parallel", "sequential")


class MRQDataModule(LightningDataModule):
    """Environment interaction and replay for MR.Q.

    Args:
        env: environment name: ``Gym-<id>``, ``Dmc-<domain>-<task>``, ``Dmc-visual-<domain>-<task>`` or
            ``Atari-<Game>-v5``; or your own env class / factory as ``{class_path: ..., init_args: {...},
            max_episode_steps: ...}`` (envs/custom.py).
        seed: base seed. The training env of rank r uses ``seed + 1000 * r``; the eval env ``seed + 100``
            (algorithm §14).
        total_steps: environment-step budget (agent steps, after action repeat).
        random_steps: uniform random actions for this many initial env steps; RL updates start after them
            (replay slots instead of env steps under ``official_quirks``, algorithm §16 Q9).
        eval_every: evaluate every this many env steps (and at step 0 and at the end).
        eval_episodes: episodes per evaluation.
        eval_protocol: ``"parallel"``: the episodes side by side, one env each (seeds from
            :func:`~mrq_lightning.evaluation.episode_seeds`), one policy forward per step for all of them;
            ``"sequential"``: the official protocol, one env (seed + 100) playing them one after another.
        buffer_capacity: replay slots (one per transition plus one per episode end).
        buffer_device: ``"auto"`` (the training device when it is a GPU, else CPU), ``"cpu"`` or ``"cuda"``.
        pixel_augmentation: DrQ random shift on sampled pixel states (algorithm §12).
        official_quirks: reproduce the official code's quirks Q1, Q2, Q4, Q5, Q9 here (linked to the model's switch).
        collector: ``"lean"``: :class:`~mrq_lightning.collector.StepCollector` for the presets (TorchRL's
            ``Collector`` for your own TorchRL envs); ``"torchrl"``: always TorchRL's ``Collector``. Both give the
            same transitions and random numbers; the lean one costs a fraction per env step.
    """

    def __init__(
        self,
        env: str | dict[str, Any] = "Gym-HalfCheetah-v4",
        seed: int = 0,
        total_steps: int = 1_000_000,
        random_steps: int = REPLAY.random_steps,
        eval_every: int = 5_000,
        eval_episodes: int = 10,
        eval_protocol: str = "parallel",
        collector: str = "lean",
        buffer_capacity: int = REPLAY.capacity,
        buffer_device: str = "auto",
        pixel_augmentation: bool = REPLAY.pixel_augmentation,
        official_quirks: bool = False,
    ) -> None:
        super().__init__()
        if total_steps < 1 or eval_every < 1 or eval_episodes < 0 or random_steps < 0 or buffer_capacity < 1 or any(
            isinstance(v, bool) for v in (total_steps, eval_every, eval_episodes, random_steps, buffer_capacity)
        ):
            raise ConfigurationError(
                "data.total_steps, data.eval_every and data.buffer_capacity must be >= 1, data.random_steps and "
                f"data.eval_episodes >= 0; got total_steps={total_steps}, eval_every={eval_every}, "
                f"buffer_capacity={buffer_capacity}, random_steps={random_steps}, eval_episodes={eval_episodes}"
            )
        if official_quirks and buffer_capacity <= random_steps:
            raise ConfigurationError(
                f"with data.official_quirks the random phase lasts until the replay buffer holds more than "
                f"data.random_steps={random_steps} slots, which data.buffer_capacity={buffer_capacity} never reaches. "
                "Fix: raise data.buffer_capacity or lower data.random_steps."
            )
        if collector not in COLLECTOR_KINDS:
            raise ConfigurationError(f"data.collector={collector!r} is not a collector: use lean (default) or torchrl")
        if eval_protocol not in EVAL_PROTOCOLS:
            raise ConfigurationError(
                f"data.eval_protocol={eval_protocol!r} is not a protocol: use parallel (default: episodes side by side) "
                "or sequential (the official code's: one env, episodes one after another)"
            )
        ReplayHParams(capacity=buffer_capacity, random_steps=random_steps, pixel_augmentation=pixel_augmentation)
        if buffer_device != "auto":
            try:
                torch.device(buffer_device)
            except (RuntimeError, TypeError) as err:
                raise ConfigurationError(
                    f"data.buffer_device={buffer_device!r} is not a device: use auto (default), cpu or cuda"
                ) from err
        # Fail at config time, before any simulator starts: a name with the valid forms, or the class_path form.
        if isinstance(env, (dict, CustomEnvSpec)):
            self.env_spec = env if isinstance(env, CustomEnvSpec) else custom_env_spec(env)
            self.env_name = self.env_spec.name
        else:
            parse_env_name(env)
            self.env_spec = self.env_name = env
        self.seed = seed
        self.total_steps = total_steps
        self.random_steps = random_steps
        self.eval_every = eval_every
        self.eval_episodes = eval_episodes
        self.eval_protocol = eval_protocol
        self.collector_kind = collector
        self.buffer_capacity = buffer_capacity
        self.buffer_device = buffer_device
        self.pixel_augmentation = pixel_augmentation
        self.official_quirks = official_quirks
        self.warmup = Warmup(random_steps, official_quirks)

        self.env = None
        self.eval_envs: list = []  # parallel: one env per episode; sequential: one env
        self.greedy_eval_envs: list = []  # the same for the greedy metric of discrete actions (algorithm §16 Q10)
        self.env_info: EnvInfo | None = None
        self.buffer: MRQReplayBuffer | None = None
        self.collector: BaseCollector | None = None
        self._collector_iter = None
        # Episode bookkeeping for logging.
        self.env_steps = 0
        self.episodes = 0
        self._episode_return = 0.0
        self._mid_episode = False  # the last stored transition did not end its episode
        self.completed_episode_returns: list[float] = []
        self.collect_time = 0.0
        # Checkpointing: the sidecar directory name recorded in the next .ckpt, and a loaded rank state waiting to
        # be applied at the first env step of the resumed stream.
        self.checkpoint_sidecar: str | None = None
        self._pending_resume: dict[str, Any] | None = None
        self._stream_rng: dict[str, Any] | None = None  # fresh run: the RNG state once the collector is built

    # ------------------------------------------------------------------ setup
    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def _root_device(self) -> torch.device | None:
        return self.trainer.strategy.root_device if self.trainer is not None else None

    def resume_config(self) -> dict[str, Any]:
        return {key: getattr(self, "env_name" if key == "env" else key) for key in RESUME_KEYS}

    def _resolve_buffer_device(self) -> torch.device:
        if self.buffer_device != "auto":
            return torch.device(self.buffer_device)
        root = self._root_device or torch.device("cpu")
        return root if root.type == "cuda" else torch.device("cpu")

    def _replay_settings(self) -> dict[str, Any]:
        """Window, LAP alpha and minimum priority of the model being trained (the paper's without one)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        settings = getattr(module, "replay_settings", None)
        return settings() if callable(settings) else replay_settings()

    def setup(self, stage: str | None = None) -> None:
        if stage == "test" and self.eval_episodes == 0:
            raise ConfigurationError("test with data.eval_episodes 0 has no episodes to play. Fix: --data.eval_episodes 10")
        if self.env_info is not None:
            return
        self.env, self.env_info = make_env(
            self.env_spec, self.seed + 1000 * self.rank, official_quirks=self.official_quirks
        )
        self.eval_envs = self._make_eval_envs()
        info = self.env_info
        if info.discrete:
            # The extra greedy metric (algorithm §16 Q10) gets its own eval envs, seeded alike: the official rule's
            # episodes then see the same env random streams (sticky actions, ε) as in the official code.
            self.greedy_eval_envs = self._make_eval_envs()
        self.buffer = MRQReplayBuffer(
            capacity=self.buffer_capacity,
            obs_shape=tuple(info.obs_shape),
            action_dim=info.action_dim,
            pixels=info.pixels,
            history=info.history,
            augment=self.pixel_augmentation,
            official_quirks=self.official_quirks,
            device=self._resolve_buffer_device(),
            **self._replay_settings(),
        )
        log.info("MR.Q env %s: %s; replay %s", self.env_name, info, self.buffer)

    # ------------------------------------------------------------------ collection
    def build_collector(self, policy) -> None:
        """Create the single-env, one-transition-per-step collector that drives training (collector.py)."""
        if self.collector is not None:
            self.collector.shutdown(close_env=False)  # the training env lives on with the new collector
        device = next(policy.parameters()).device
        self.collector = make_collector(
            self.env, policy, policy_device=device, storing_device=self.buffer.device, kind=self.collector_kind
        )
        self._collector_iter = iter(self.collector)

    def collect_step(self) -> None:
        """One env step through the collector, stored in the replay buffer (algorithm §9 steps 2-3, 5)."""
        t0 = time.perf_counter()
        random_action = self.warmup.acts_randomly(self.env_steps, len(self.buffer))
        # The collector acts with env.rand_action while init_random_frames exceeds its frame count (TorchRL's own
        # way of switching a running collector; the warm-up rule decides).
        self.collector.init_random_frames = math.inf if random_action else 0
        transition = next(self._collector_iter)
        if self.official_quirks and random_action and self.env_info.discrete:
            transition = _official_random_phase_action(transition)
        self.buffer.extend(transition)
        self.env_steps += 1
        self._episode_return += float(transition.get(("next", "reward")).sum())
        if bool(transition.get(("next", "done")).any()):
            self.completed_episode_returns.append(self._episode_return)
            self.episodes += 1
            self._episode_return = 0.0
            self._mid_episode = False
        else:
            self._mid_episode = True
        self.collect_time += time.perf_counter() - t0

    def evaluate(self, policy, exploration=None) -> list[float]:
        """Run ``eval_episodes`` episodes on the eval envs (algorithm §14) by ``eval_protocol``; greedy ones on
        their own copies."""
        from torchrl.envs.utils import ExplorationType

        exploration = exploration or ExplorationType.DETERMINISTIC
        greedy = exploration == ExplorationType.MODE and self.greedy_eval_envs
        envs = self.greedy_eval_envs if greedy else self.eval_envs
        if self.eval_protocol == "parallel":
            return evaluate_in_parallel(envs, policy, exploration)
        return evaluate_policy(envs[0], policy, self.eval_episodes, exploration)

    @property
    def eval_seeds(self) -> list[int]:
        """The seed of each eval env: ``seed + 100`` (algorithm §14), per episode under the parallel protocol."""
        if self.eval_protocol == "parallel":
            return episode_seeds(self.seed + 100, self.eval_episodes)
        return [self.seed + 100]

    @property
    def eval_env(self):
        """The first eval env (episode 0's under the parallel protocol), ``None`` without evaluation."""
        return self.eval_envs[0] if self.eval_envs else None

    @property
    def greedy_eval_env(self):
        return self.greedy_eval_envs[0] if self.greedy_eval_envs else None

    def _make_eval_envs(self) -> list:
        return [self.make_eval_env(seed) for seed in self.eval_seeds] if self.eval_episodes else []

    def make_eval_env(self, seed: int, render: bool = False):
        """A fresh evaluation env with ``seed`` (one of :attr:`eval_seeds`); ``render=True`` for videos."""
        env, _ = make_env(self.env_spec, seed, evaluation=True, official_quirks=self.official_quirks, render=render)
        return env

    # ------------------------------------------------------------------ checkpoint / resume
    def state_dict(self) -> dict[str, Any]:
        """Goes into the ``.ckpt`` (rank 0): the data config, env steps, world size and the sidecar's name."""
        return {
            "config": self.resume_config(),
            "env_steps": self.env_steps,
            "world_size": self.world_size,
            "sidecar": self.checkpoint_sidecar,
        }

    def save_rank_state(self, rank_dir: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write this rank's replay buffer and rank-local state into ``rank_dir`` (buffer first, state last)."""
        state = {
            "rank": self.rank,
            "world_size": self.world_size,
            "env": self.env_name,
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "episode_return": self._episode_return,
            "mid_episode": self._mid_episode,
            "completed_episode_returns": list(self.completed_episode_returns),
            "buffer": {"size": len(self.buffer), "write_count": int(self.buffer.write_count)},
            "carrier": None if self.collector is None else carried_observation(self.collector),
            "env_state": get_env_state(self.env),
            "eval_protocol": self.eval_protocol,
            "eval_env_states": [get_env_state(env) for env in self.eval_envs],
            "greedy_eval_env_states": [get_env_state(env) for env in self.greedy_eval_envs],
            "rng": capture_rng(self._root_device),
            **(extra or {}),
        }
        write_rank_state(rank_dir, self.buffer, state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Validate the checkpoint against this config; when fitting, load this rank's sidecar."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return
        ckpt = Path(trainer.ckpt_path) if trainer.ckpt_path else None
        sidecar = check_data_section(state_dict, path=ckpt, config=self.resume_config(), world_size=self.world_size)
        rank_dir = ckpt.parent / sidecar / f"rank{self.rank}"
        rank_state = read_rank_state(
            rank_dir, self.buffer, ckpt=ckpt, env_steps=state_dict.get("env_steps"), env_name=self.env_name
        )
        self.env_steps = int(rank_state["env_steps"])
        self.episodes = int(rank_state["episodes"])
        self._episode_return = float(rank_state["episode_return"])
        self._mid_episode = bool(rank_state["mid_episode"])
        self.completed_episode_returns = list(rank_state["completed_episode_returns"])
        self._pending_resume = rank_state
        log.info("rank %d: restored replay buffer (%d slots) and state at env step %d from %s",
                 self.rank, len(self.buffer), self.env_steps, rank_dir)  # fmt: skip

    def start_stream(self) -> None:
        """Right before the first env step: put the RNG states back to where they were once the collector was
        built (a fresh run), or the simulator, the collector's observation and the RNGs to the checkpoint's."""
        state, self._pending_resume = self._pending_resume, None
        stream_rng, self._stream_rng = self._stream_rng, None
        if state is None:
            if stream_rng is not None:
                # Lightning draws from the torch RNG between train_dataloader() and the first batch (the DataLoader
                # iterator's base seed). Undoing that makes a fit consume random numbers exactly like a plain loop
                # (seed, envs, networks, collector, steps): the two produce bit-identical parameters. (Draws made
                # by callbacks in on_train_start / on_train_epoch_start are rewound too.)
                restore_rng(stream_rng, self._root_device)
            return
        restored = False
        if state["env_state"] is not None:
            try:
                set_env_state(self.env, state["env_state"])
            except ValueError as err:
                raise CheckpointError(f"cannot restore the {self.env_name} simulator state: {err}") from err
            restore_carried_observation(self.collector, state["carrier"])
            restored = True
        self._restore_eval_envs(state)
        if not restored:
            log.warning(
                "rank %d: the %s simulator state cannot be saved/restored; the resumed run starts a fresh episode at "
                "env step %d (the interrupted episode is stored as truncated).", self.rank, self.env_name,
                self.env_steps,
            )  # fmt: skip
            if self._mid_episode and state["carrier"] is not None:
                # Its last stored transition's successor is the observation the collector held.
                self.buffer.end_episode(state["carrier"]["observation"].reshape(self.env_info.obs_shape))
            self._episode_return = 0.0
            self._mid_episode = False
        restore_rng(state["rng"], self._root_device)

    def _restore_eval_envs(self, state: dict[str, Any]) -> None:
        """The eval envs continue where the checkpoint's were, when they are the same envs (protocol and episode
        count unchanged); otherwise they start fresh (evaluation settings may change on resume)."""
        if "eval_protocol" not in state:  # a checkpoint of an earlier version: one sequential eval env (and greedy)
            state = {"eval_protocol": "sequential", "eval_env_states": [state.get("eval_env_state")],
                     "greedy_eval_env_states": [state.get("greedy_eval_env_state")] if self.greedy_eval_envs else []}
        saved = [(self.eval_envs, state["eval_env_states"]), (self.greedy_eval_envs, state["greedy_eval_env_states"])]
        same = state["eval_protocol"] == self.eval_protocol
        if not same or any(len(states) != len(envs) for envs, states in saved):
            log.warning("rank %d: the checkpoint evaluated %s with %d envs, this run %s with %d: the eval envs start "
                        "fresh, so evaluations differ from an uninterrupted run's", self.rank, state["eval_protocol"],
                        len(saved[0][1]), self.eval_protocol, len(self.eval_envs))  # fmt: skip
            return
        for envs, states in saved:
            for env, env_state in zip(envs, states):
                if env_state is not None:
                    set_env_state(env, env_state)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module
        if self.env_steps >= self.total_steps:
            log.warning("env step %d already reaches data.total_steps=%d: nothing to train (raise --data.total_steps "
                        "to continue this run)", self.env_steps, self.total_steps)  # fmt: skip
        self.build_collector(module.acting_policy)
        if self._pending_resume is None:
            self._stream_rng = capture_rng(self._root_device)
        stream = EnvStepStream(self, self.env_steps, self.total_steps)
        return DataLoader(stream, batch_size=None, num_workers=0, collate_fn=_identity)

    def test_dataloader(self) -> DataLoader:
        # One item: `MRQ.test_step` runs the evaluation episodes itself.
        return DataLoader([0], batch_size=None, collate_fn=_identity)

    def teardown(self, stage: str | None = None) -> None:
        if self.collector is not None:
            self.collector.shutdown()
            self.collector = None
