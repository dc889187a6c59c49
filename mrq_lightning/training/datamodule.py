"""``MRQDataModule``: environments, a TorchRL collector and the MR.Q replay buffer behind Lightning's data API.

One ``training_step`` is one environment step (spec §9): the stream below steps the collector once, stores the
transition, and hands the step index to the module, which then samples its own batches from :attr:`buffer`
(so that priorities written by update t are seen by the sample of update t + 1).

Ordering pitfalls handled here (brief §4): the stream is *sized*, so Lightning does not prefetch the next env step
before the current update; the DataLoader uses an identity collate; the collector is built in
``train_dataloader()``, i.e. after the module sits on its device.
"""

from __future__ import annotations

import logging
import time

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector

from mrq_lightning.data import MRQReplayBuffer
from mrq_lightning.envs import EnvInfo, make_env, parse_env_name
from mrq_lightning.evaluation import evaluate_policy

log = logging.getLogger(__name__)

__all__ = ["MRQDataModule"]


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
        for step in range(self.start, self.total):
            self.datamodule.collect_step()
            yield step


class MRQDataModule(LightningDataModule):
    """Environment interaction and replay for MR.Q.

    Args:
        env: environment name: ``Gym-<id>``, ``Dmc-<domain>-<task>``, ``Dmc-visual-<domain>-<task>`` or
            ``Atari-<Game>-v5``.
        seed: base seed. The training env of rank r uses ``seed + 1000 * r``; the eval env ``seed + 100`` (spec §14).
        total_steps: environment-step budget (agent steps, after action repeat).
        random_steps: uniform random actions for this many initial env steps; RL updates start after them.
        eval_every: evaluate every this many env steps (and at step 0 and at the end).
        eval_episodes: episodes per evaluation.
        buffer_capacity: replay slots (one per transition plus one per episode end).
        buffer_device: ``"auto"`` (the training device when it is a GPU, else CPU), ``"cpu"`` or ``"cuda"``.
        pixel_augmentation: DrQ random shift on sampled pixel states (spec §12).
        official_quirks: reproduce the official code's quirks Q1, Q4, Q5 here (linked to the model's switch).
    """

    def __init__(
        self,
        env: str = "Gym-HalfCheetah-v4",
        seed: int = 0,
        total_steps: int = 1_000_000,
        random_steps: int = 10_000,
        eval_every: int = 5_000,
        eval_episodes: int = 10,
        buffer_capacity: int = 1_000_000,
        buffer_device: str = "auto",
        pixel_augmentation: bool = True,
        official_quirks: bool = False,
    ) -> None:
        super().__init__()
        if total_steps < 1 or eval_every < 1 or eval_episodes < 0 or random_steps < 0:
            raise ValueError(
                "total_steps and eval_every must be >= 1, random_steps and eval_episodes >= 0; got "
                f"total_steps={total_steps}, eval_every={eval_every}, random_steps={random_steps}, "
                f"eval_episodes={eval_episodes}"
            )
        parse_env_name(env)  # fail at config time, before any simulator starts, with the valid forms
        self.env_name = env
        self.seed = seed
        self.total_steps = total_steps
        self.random_steps = random_steps
        self.eval_every = eval_every
        self.eval_episodes = eval_episodes
        self.buffer_capacity = buffer_capacity
        self.buffer_device = buffer_device
        self.pixel_augmentation = pixel_augmentation
        self.official_quirks = official_quirks

        self.env = None
        self.eval_env = None
        self.env_info: EnvInfo | None = None
        self.buffer: MRQReplayBuffer | None = None
        self.collector: Collector | None = None
        self._collector_iter = None
        # Episode bookkeeping for logging.
        self.env_steps = 0
        self.episodes = 0
        self._episode_return = 0.0
        self.completed_episode_returns: list[float] = []
        self.collect_time = 0.0

    # ------------------------------------------------------------------ setup
    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _resolve_buffer_device(self) -> torch.device:
        if self.buffer_device != "auto":
            return torch.device(self.buffer_device)
        root = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        return root if root.type == "cuda" else torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        if self.env_info is not None:
            return
        self.env, self.env_info = make_env(
            self.env_name, self.seed + 1000 * self.rank, official_quirks=self.official_quirks
        )
        self.eval_env, _ = make_env(
            self.env_name, self.seed + 100, evaluation=True, official_quirks=self.official_quirks
        )
        info = self.env_info
        self.buffer = MRQReplayBuffer(
            capacity=self.buffer_capacity,
            obs_shape=tuple(info.obs_shape),
            action_dim=info.action_dim,
            pixels=info.pixels,
            history=info.history,
            augment=self.pixel_augmentation,
            official_quirks=self.official_quirks,
            device=self._resolve_buffer_device(),
        )
        log.info("MR.Q env %s: %s; replay on %s", self.env_name, info, self.buffer.device if hasattr(self.buffer, "device") else "?")

    # ------------------------------------------------------------------ collection
    def build_collector(self, policy, start_step: int = 0) -> None:
        """Create the single-env, one-frame-per-batch collector that drives training."""
        if self.collector is not None:
            self.collector.shutdown()
        device = next(policy.parameters()).device
        self.collector = Collector(
            self.env,
            policy,
            frames_per_batch=1,
            total_frames=-1,
            init_random_frames=max(self.random_steps - start_step, 0) or None,
            policy_device=device,
            env_device="cpu",
            storing_device=getattr(self.buffer, "device", "cpu"),
            track_traj_ids=False,
            auto_register_policy_transforms=False,
        )
        self._collector_iter = iter(self.collector)

    def collect_step(self) -> None:
        """One env step through the collector, stored in the replay buffer (spec §9 steps 2-3, 5)."""
        t0 = time.perf_counter()
        transition = next(self._collector_iter)
        self.buffer.extend(transition)
        self.env_steps += 1
        self._episode_return += float(transition.get(("next", "reward")).sum())
        if bool(transition.get(("next", "done")).any()):
            self.completed_episode_returns.append(self._episode_return)
            self.episodes += 1
            self._episode_return = 0.0
        self.collect_time += time.perf_counter() - t0

    def evaluate(self, policy, exploration=None) -> list[float]:
        """Run ``eval_episodes`` episodes on the separate eval env (seed + 100)."""
        from torchrl.envs.utils import ExplorationType

        return evaluate_policy(
            self.eval_env, policy, self.eval_episodes, exploration or ExplorationType.DETERMINISTIC
        )

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module
        self.build_collector(module.acting_policy, start_step=self.env_steps)
        stream = EnvStepStream(self, self.env_steps, self.total_steps)
        return DataLoader(stream, batch_size=None, num_workers=0, collate_fn=_identity)

    def test_dataloader(self) -> DataLoader:
        # One item: `MRQ.test_step` runs the evaluation episodes itself.
        return DataLoader([0], batch_size=None, collate_fn=_identity)

    def teardown(self, stage: str | None = None) -> None:
        if self.collector is not None:
            self.collector.shutdown()
            self.collector = None
