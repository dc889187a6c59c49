"""Replay storage for MR.Q (spec §8, §11): :class:`MRQReplayBuffer` and its TorchRL components."""

from mrq_lightning.data.replay import (
    LAPSampler,
    MRQReplayBuffer,
    MRQStorage,
    MRQWriter,
    ReplayBufferCheckpointError,
)

__all__ = ["MRQReplayBuffer", "MRQStorage", "MRQWriter", "LAPSampler", "ReplayBufferCheckpointError"]
