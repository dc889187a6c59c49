"""Replay storage (algorithm §11): :class:`MRQStorage`, the slot tensors of the ring and its fill level.

Layout (algorithm §11): a flat ring of ``capacity`` slots. Each slot holds exactly **one frame** (the newest frame of
the state written there), the action, the reward, ``not_done = 1 - terminated``, an "is transition" flag, a
valid-start bit and two small ``int32`` tables with the slot indices of the ``history`` frames that make up the
state at that slot and the state after it. Full states are rebuilt by gathering frames; stacked frames are never
duplicated. An episode of ``n`` transitions uses ``n + 1`` slots: the extra one holds the final observation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data.replay_buffers.storages import Storage

__all__ = ["MRQStorage", "filled_prefix"]


def filled_prefix(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """``tensor[:size]`` that serialises compactly: a clone when partial (a view would save the whole storage)."""
    return tensor if size == tensor.shape[0] else tensor[:size].clone()


class MRQStorage(Storage):
    """Flat ring of ``capacity`` slots with one frame per slot (algorithm §11).

    Tensors (all allocated on ``device`` at construction):

    * ``frames``: ``[capacity, *frame_shape]`` (``uint8`` pixels, ``float32`` vectors). Pixel frames are allocated
      with ``torch.empty`` so untouched pages cost no memory (``torch.zeros`` would touch all ~7 GB of an
      Atari ring); unwritten frames are never read (:class:`MRQReplayBuffer` redirects indices at or beyond
      the fill level to slot 0, which is written first).
    * ``action`` ``[capacity, action_dim]`` float32, ``reward`` / ``not_done`` ``[capacity]`` float32,
    * ``valid`` (valid start) and ``is_transition`` ``[capacity]`` bool,
    * ``state_index`` / ``next_index`` ``[capacity, history]`` int32: frame slots of the state at the slot and of
      its successor, oldest first.

    Everything except the pixel frames starts at zero. The write rules live in :class:`MRQWriter`; this class
    only stores.
    """

    tensor_names = (
        "frames",
        "action",
        "reward",
        "not_done",
        "valid",
        "is_transition",
        "state_index",
        "next_index",
    )

    def __init__(
        self,
        capacity: int,
        *,
        frame_shape: tuple[int, ...],
        frame_dtype: torch.dtype,
        action_dim: int,
        history: int,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(max_size=capacity)
        self.device = torch.device(device)
        self.frame_shape = tuple(int(d) for d in frame_shape)
        self.frame_dtype = frame_dtype
        self.action_dim = int(action_dim)
        self.history = int(history)
        dev = self.device
        alloc = torch.empty if frame_dtype == torch.uint8 else torch.zeros
        self.frames = alloc((capacity, *self.frame_shape), dtype=frame_dtype, device=dev)
        self.action = torch.zeros(capacity, self.action_dim, dtype=torch.float32, device=dev)
        self.reward = torch.zeros(capacity, dtype=torch.float32, device=dev)
        self.not_done = torch.zeros(capacity, dtype=torch.float32, device=dev)
        self.valid = torch.zeros(capacity, dtype=torch.bool, device=dev)
        self.is_transition = torch.zeros(capacity, dtype=torch.bool, device=dev)
        self.state_index = torch.zeros(capacity, self.history, dtype=torch.int32, device=dev)
        self.next_index = torch.zeros(capacity, self.history, dtype=torch.int32, device=dev)
        self._size = 0
        # The writer's per-step path on a CPU storage writes through numpy arrays sharing these tensors' memory. The
        # tensors are filled in place (load_state_dict and _empty copy into them), never replaced, so the views stay valid.
        self.numpy_views: dict[str, np.ndarray] = (
            {name: getattr(self, name).numpy() for name in self.tensor_names} if dev.type == "cpu" else {}
        )
        # Bumped on every content change; lets the sampler cache its CDF between writes.
        self.version = 0

    # -- torchrl Storage API -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    def get(self, index: int | torch.Tensor) -> TensorDict:
        """Raw per-slot fields at ``index`` (no window, no state rebuild)."""
        index = torch.as_tensor(index, device=self.device, dtype=torch.long)
        return TensorDict(
            {name: getattr(self, name)[index] for name in self.tensor_names},
            batch_size=index.shape,
            device=self.device,
        )

    def set(self, cursor: int | torch.Tensor, data: TensorDictBase | dict, *, set_cursor: bool = True) -> None:
        """Low-level write of raw per-slot fields (any subset of :attr:`tensor_names`) at ``cursor``.

        Does not apply the algorithm §11 rules and does not change the fill level; use the buffer's ``extend`` for that.
        """
        index = torch.as_tensor(cursor, device=self.device, dtype=torch.long)
        for name, value in data.items():
            if name not in self.tensor_names:
                raise KeyError(f"MRQStorage has no field {name!r}; fields are {self.tensor_names}")
            target = getattr(self, name)
            target[index] = torch.as_tensor(value).to(device=self.device, dtype=target.dtype)
        self.version += 1

    def grow(self, n: int) -> None:
        """Mark ``n`` more slots as filled (capped at capacity) and bump :attr:`version`; used by the writer."""
        self._size = min(self._size + int(n), self.max_size)
        self.version += 1

    def contains(self, item: int) -> bool:
        return 0 <= int(item) < self._size

    def _empty(self) -> None:
        for name in self.tensor_names:
            if name != "frames":
                getattr(self, name).zero_()
        self._size = 0
        self.version += 1

    def state_dict(self) -> dict[str, Any]:
        """Fill level and every tensor's filled prefix ``[0, size)`` (may alias live storage when full)."""
        return {
            "size": self._size,
            "tensors": {name: filled_prefix(getattr(self, name), self._size) for name in self.tensor_names},
        }

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Raise ``ValueError`` if ``state_dict`` cannot be loaded into this storage."""
        size = state_dict.get("size")
        if not isinstance(size, int) or not 0 <= size <= self.max_size:
            raise ValueError(f"storage size {size!r} is not an int in [0, capacity={self.max_size}]")
        tensors = state_dict.get("tensors")
        if not isinstance(tensors, dict):
            raise ValueError("storage state has no 'tensors' dict")
        for name in self.tensor_names:
            value = tensors.get(name)
            target = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"storage tensor {name!r} is missing")
            expected = (size, *target.shape[1:])
            if tuple(value.shape) != expected or value.dtype != target.dtype:
                raise ValueError(
                    f"storage tensor {name!r} has shape {tuple(value.shape)} / {value.dtype}, "
                    f"expected {expected} / {target.dtype}"
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.check_state_dict(state_dict)
        self._empty()
        size = state_dict["size"]
        for name in self.tensor_names:
            getattr(self, name)[:size].copy_(state_dict["tensors"][name])
        self._size = size
        self.version += 1

    def nbytes(self) -> int:
        """Bytes held by the slot tensors (the full capacity, whether touched or not)."""
        return sum(getattr(self, name).nbytes for name in self.tensor_names)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(capacity={self.max_size}, size={self._size}, frame_shape={self.frame_shape}, "
            f"frame_dtype={self.frame_dtype}, action_dim={self.action_dim}, history={self.history}, "
            f"device={self.device})"
        )
