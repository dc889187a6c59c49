"""LAP sampler (algorithm §8): :class:`LAPSampler`, LAP priorities and prioritized sampling of start slots.

Inverse-CDF sampling of start slots with probability proportional to ``priority * valid``. TorchRL's own
``PrioritizedSampler`` is not used: it needs a C++ extension and does not know MR.Q's window rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage

from mrq_lightning.data.storage import MRQStorage, filled_prefix

__all__ = ["LAPSampler"]


class LAPSampler(Sampler):
    """LAP prioritized sampling of start slots (algorithm §8) over an :class:`MRQStorage`.

    ``P(j) ∝ priority[j] * valid[j]`` over ``[0, size)``, with replacement, by inverse CDF (``torch.cumsum`` in
    float64 + ``torch.searchsorted``) on the storage device. Random numbers come from ``torch.rand`` with the
    buffer's generator (the global torch RNG by default), so ``torch.manual_seed`` makes draws reproducible. The
    CDF is cached until the storage or the priorities change (e.g. across an encoder burst). No importance
    weights. Stored priorities are already exponentiated; new transitions get the running max priority, which
    starts at ``min_priority`` and never decays. Priorities start at 0 (quirk Q6 fixed).
    """

    def __init__(self, capacity: int, *, alpha: float, min_priority: float, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.alpha = float(alpha)
        self.min_priority = float(min_priority)
        self.priority = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.max_priority = torch.tensor(self.min_priority, dtype=torch.float32, device=self.device)
        self._version = 0
        self._cache: tuple[tuple[int, int, int], torch.Tensor] | None = None

    @property
    def priority_floor(self) -> float:
        """``min_priority ** alpha``: the smallest priority LAP can produce (1 with the defaults)."""
        return self.min_priority**self.alpha

    def add(self, index: int) -> None:
        self.extend(torch.as_tensor([index], device=self.device))

    def extend(self, index: torch.Tensor) -> None:
        """New transitions at ``index`` get the running max priority."""
        self.priority[index.to(device=self.device, dtype=torch.long)] = self.max_priority
        self._version += 1

    def update_priority(
        self,
        index: int | torch.Tensor,
        priority: float | torch.Tensor,
        *,
        storage: Storage | None = None,
    ) -> None:
        """Set already-exponentiated priorities; the last write wins for repeated indices.

        Values are clamped below at :attr:`priority_floor` (a no-op for LAP priorities). The running max priority
        becomes ``max(previous, priority.max())``.
        """
        index = torch.as_tensor(index, device=self.device).to(torch.long).reshape(-1)
        priority = torch.as_tensor(priority, device=self.device).to(torch.float32).reshape(-1)
        if priority.numel() == 1 and index.numel() != 1:
            priority = priority.expand(index.numel())
        if priority.numel() != index.numel():
            raise ValueError(f"got {index.numel()} indices but {priority.numel()} priorities")
        if index.numel() == 0:
            return
        priority = priority.clamp(min=self.priority_floor)
        unique, inverse = torch.unique(index, return_inverse=True)
        positions = torch.arange(index.numel(), device=self.device)
        last = torch.zeros_like(unique).scatter_reduce_(0, inverse, positions, reduce="amax", include_self=False)
        self.priority[unique] = priority[last]
        self.max_priority = torch.maximum(self.max_priority, priority.max())
        self._version += 1

    def _cdf(self, storage: MRQStorage) -> torch.Tensor:
        size = len(storage)
        key = (storage.version, self._version, size)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if size == 0:
            raise RuntimeError("MRQReplayBuffer is empty: nothing to sample")
        # uint8 view of the bool mask: a float*uint8 product is several times faster than float*bool on CPU.
        weights = self.priority[:size] * storage.valid[:size].view(torch.uint8)
        cdf = weights.to(torch.float64).cumsum_(0)
        total = float(cdf[-1])  # the only host sync, once per cache rebuild
        if not total > 0.0:  # also catches NaN
            raise RuntimeError(
                f"MRQReplayBuffer has no valid start slot to sample (size={size}, total priority mass={total}). "
                "A start needs a window of `horizon` transitions inside one episode, or a terminated episode."
            )
        self._cache = (key, cdf)
        return cdf

    def sample(self, storage: MRQStorage, batch_size: int) -> tuple[torch.Tensor, dict]:
        """Start slots ``[batch_size]`` (int64) drawn with probability ∝ priority * valid, and an empty info dict."""
        cdf = self._cdf(storage)
        # u in (0, total]: the first slot whose cumulative mass reaches u has positive mass.
        u = (1.0 - torch.rand(batch_size, dtype=torch.float64, device=self.device, generator=self._rng)) * cdf[-1]
        index = torch.searchsorted(cdf, u).clamp_(max=cdf.numel() - 1)
        return index, {}

    def _empty(self) -> None:
        self.priority.zero_()
        self.max_priority = torch.tensor(self.min_priority, dtype=torch.float32, device=self.device)
        self._version += 1
        self._cache = None

    def state_dict(self, size: int | None = None) -> dict[str, Any]:
        size = self.priority.numel() if size is None else size
        return {"priority": filled_prefix(self.priority, size), "max_priority": self.max_priority.clone()}

    def check_state_dict(self, state_dict: dict[str, Any], size: int) -> None:
        priority = state_dict.get("priority")
        if (
            not isinstance(priority, torch.Tensor)
            or tuple(priority.shape) != (size,)
            or priority.dtype != torch.float32
        ):
            raise ValueError(f"sampler priorities must be a float32 tensor of shape ({size},)")
        max_priority = state_dict.get("max_priority")
        if not isinstance(max_priority, torch.Tensor) or max_priority.numel() != 1:
            raise ValueError("sampler max_priority must be a one-element tensor")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        priority = state_dict["priority"]
        self.priority.zero_()
        self.priority[: priority.numel()].copy_(priority)
        self.max_priority = state_dict["max_priority"].to(device=self.device, dtype=torch.float32).reshape(())
        self._version += 1
        self._cache = None

    def dumps(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "sampler.pt")

    def loads(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(Path(path) / "sampler.pt", map_location=self.device, weights_only=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, min_priority={self.min_priority})"
