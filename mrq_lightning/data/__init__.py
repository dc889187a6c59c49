"""Replay storage for MR.Q (algorithm §8, §11): :class:`MRQReplayBuffer` and its TorchRL components."""

from mrq_lightning.data.buffer import MRQReplayBuffer
from mrq_lightning.data.persistence import ReplayBufferCheckpointError
from mrq_lightning.data.sampler import LAPSampler
from mrq_lightning.data.storage import MRQStorage
from mrq_lightning.data.writer import MRQWriter

__all__ = ["MRQReplayBuffer", "MRQStorage", "MRQWriter", "LAPSampler", "ReplayBufferCheckpointError"]
