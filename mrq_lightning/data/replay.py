"""MR.Q's replay buffer as a TorchRL :class:`~torchrl.data.TensorDictReplayBuffer` (spec §8, §11, §12).

Layout (spec §11): a flat ring of ``capacity`` slots. Each slot holds exactly **one frame** (the newest frame of
the state written there), the action, the reward, ``not_done = 1 - terminated``, an "is transition" flag, a
valid-start bit and two small ``int32`` tables with the slot indices of the ``history`` frames that make up the
state at that slot and the state after it. Full states are rebuilt by gathering frames; stacked frames are never
duplicated. An episode of ``n`` transitions uses ``n + 1`` slots: the extra one holds the final observation.

The buffer is assembled from three TorchRL components, each owning one concern:

* :class:`MRQStorage` (a TorchRL ``Storage``): the slot tensors and the fill level;
* :class:`MRQWriter` (a TorchRL ``Writer``): the §11 write rules (cursor, frame-history indices, final-observation
  slots, valid-start mask, ``env_terminates``);
* :class:`LAPSampler` (a TorchRL ``Sampler``): LAP priorities (spec §8) and inverse-CDF sampling of start slots
  with probability proportional to ``priority * valid``.

:class:`MRQReplayBuffer` glues them and turns sampled start slots into the windowed batch of the replay batch
contract in ``docs/architecture.md``. TorchRL's own ``PrioritizedSampler`` is not used: it needs a C++ extension
and does not know MR.Q's window rules.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torchrl.data import TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage
from torchrl.data.replay_buffers.writers import Writer

from mrq_lightning.atomic_io import fsync_directory
from mrq_lightning.errors import CheckpointError
from mrq_lightning.functional import random_shift

__all__ = [
    "MRQReplayBuffer",
    "MRQStorage",
    "MRQWriter",
    "LAPSampler",
    "ReplayBufferCheckpointError",
]

_CHECKPOINT_FORMAT = "mrq_lightning.replay/1"
_META_FILE = "meta.json"
_STATE_FILE = "state.pt"


class ReplayBufferCheckpointError(CheckpointError):
    """A replay-buffer checkpoint directory is corrupt or does not match the buffer it is loaded into."""


_MISSING = object()


def _identity(x: Any) -> Any:
    return x


def _prefix(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """``tensor[:size]`` that serialises compactly: a clone when partial (a view would save the whole storage)."""
    return tensor if size == tensor.shape[0] else tensor[:size].clone()


# ----------------------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------------------


class MRQStorage(Storage):
    """Flat ring of ``capacity`` slots with one frame per slot (spec §11).

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

        Does not apply the §11 rules and does not change the fill level; use the buffer's ``extend`` for that.
        """
        index = torch.as_tensor(cursor, device=self.device, dtype=torch.long)
        for name, value in data.items():
            if name not in self.tensor_names:
                raise KeyError(f"MRQStorage has no field {name!r}; fields are {self.tensor_names}")
            target = getattr(self, name)
            target[index] = torch.as_tensor(value).to(device=self.device, dtype=target.dtype)
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
            "tensors": {name: _prefix(getattr(self, name), self._size) for name in self.tensor_names},
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


# ----------------------------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------------------------


class MRQWriter(Writer):
    """Applies the spec §11 write rules to an :class:`MRQStorage`.

    ``extend`` takes a mapping of tensors with leading dim T (T transitions of one environment, in time order)
    and keys ``"frame"`` (newest frame of s), ``"final_frame"`` (newest frame of s'), ``"action"`` ``[T, A]``
    float32, ``"reward"`` ``[T]``, ``"terminated"`` / ``"truncated"`` ``[T]`` bool. For each transition, at slot
    ``w = cursor``:

    1. invalidate slots ``w`` and ``w + history - 1`` (a new slot starts invalid; the second is the wrap-around
       rule: the states there would read the frame being overwritten);
    2. write the frame, action, reward, not-done and ``is_transition``; state history indices are the last
       ``history`` frame slots of the episode (the first repeated at episode start), successor indices the same
       list shifted to end at ``w + 1``;
    3. if this is transition ``n > horizon`` of its episode, slot ``w - horizon`` becomes a valid start; if it
       terminates the episode, its last ``min(horizon, n)`` transitions become valid (a truncated episode's tail
       stays invalid);
    4. advance; if the episode ended (terminated or truncated), write the final observation's frame into the
       next slot (``is_transition = False``, never valid, also invalidating ``slot + history - 1``; its reward,
       action, not-done and history indices are left as they were) and advance again.

    Returns the transition slots, for which the sampler then sets the running max priority.
    """

    def __init__(self, *, horizon: int, history: int) -> None:
        super().__init__()
        self.horizon = int(horizon)
        self.history = int(history)
        self._cursor = 0
        self._episode_length = 0  # transitions stored for the current episode; 0 = the next one starts an episode
        self._episode_history: list[int] = []  # frame slots of the current state, oldest first
        self._write_count = 0
        self.env_terminates = False

    def add(self, data: Mapping[str, torch.Tensor]) -> int:
        return int(self.extend({key: value.unsqueeze(0) for key, value in data.items()})[0])

    def extend(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        storage: MRQStorage = self._storage
        num = data["terminated"].shape[0]
        if num == 0:
            return torch.zeros(0, dtype=torch.long, device=storage.device)
        # Each transition writes at most two slots: chunks of <= capacity // 2 transitions never write a slot twice.
        chunk = max(1, storage.max_size // 2)
        if num <= chunk:
            return self._extend_chunk(data)
        slots = [
            self._extend_chunk({key: value[start : start + chunk] for key, value in data.items()})
            for start in range(0, num, chunk)
        ]
        return torch.cat(slots)

    def _extend_chunk(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        storage: MRQStorage = self._storage
        capacity, horizon, history = storage.max_size, self.horizon, self.history
        terminated = data["terminated"].tolist()
        truncated = data["truncated"].tolist()
        num = len(terminated)
        first = self._cursor

        trans_slots: list[int] = []
        index_rows: list[list[int]] = []  # state history rows, then successor rows
        next_rows: list[list[int]] = []
        final_slots: list[int] = []
        final_rows: list[int] = []
        mask: dict[int, bool] = {}  # slot -> final value; later assignments win (sequential semantics)
        written = 0
        for t in range(num):
            w = self._cursor
            mask[w] = False
            mask[(w + history - 1) % capacity] = False
            hist = [w] * history if self._episode_length == 0 else self._episode_history[1:] + [w]
            self._episode_history = hist
            trans_slots.append(w)
            index_rows.append(hist)
            next_rows.append(hist[1:] + [(w + 1) % capacity])
            self._episode_length += 1
            n = self._episode_length
            if n > horizon:
                mask[(w - horizon) % capacity] = True
            if terminated[t]:
                for k in range(min(horizon, n)):
                    mask[(w - k) % capacity] = True
            written += 1
            self._cursor = (w + 1) % capacity
            if terminated[t] or truncated[t]:
                final_slots.append(self._take_final_slot(mask))
                final_rows.append(t)
                written += 1

        dev = storage.device
        # Transition slots: a plain slice when they are contiguous (the usual case), else an index tensor.
        if not final_slots and first + num <= capacity:
            ts = torch.arange(first, first + num, device=dev)
            where: slice | torch.Tensor = slice(first, first + num)
        else:
            ts = torch.tensor(trans_slots, dtype=torch.long, device=dev)
            where = ts
        index_rows.extend(next_rows)
        index_table = torch.tensor(index_rows, dtype=torch.int32, device=dev)
        storage.frames[where] = data["frame"]
        storage.action[where] = data["action"]
        storage.reward[where] = data["reward"]
        storage.not_done[where] = 1.0 - data["terminated"].to(torch.float32)
        storage.is_transition[where] = True
        storage.state_index[where] = index_table[:num]
        storage.next_index[where] = index_table[num:]
        if final_slots:
            fs = torch.tensor(final_slots, dtype=torch.long, device=dev)
            storage.frames[fs] = data["final_frame"][final_rows]
            storage.is_transition[fs] = False
        updates = torch.tensor(list(mask.items()), dtype=torch.long, device=dev)
        storage.valid[updates[:, 0]] = updates[:, 1].bool()
        storage._size = min(storage._size + written, capacity)
        storage.version += 1
        self.env_terminates = self.env_terminates or any(terminated)
        self._write_count += num
        return ts

    def end_episode(self, final_frame: torch.Tensor) -> bool:
        """Close the open episode as truncated: write its final observation's frame into the next slot.

        The same final slot that ``extend`` writes after a truncated transition (step 4 of the class docstring),
        for an episode whose last stored transition was not flagged done (the stream was cut). The last stored
        transition keeps not-done = 1 (truncation is not termination) and the episode's last ``horizon``
        transitions stay invalid starts, as for any truncated episode. Returns False (and writes nothing) when
        no episode is open.
        """
        if self._episode_length == 0:
            return False
        storage: MRQStorage = self._storage
        mask: dict[int, bool] = {}
        f = self._take_final_slot(mask)
        storage.valid[list(mask)] = False
        storage.frames[f] = final_frame
        storage.is_transition[f] = False
        storage._size = min(storage._size + 1, storage.max_size)
        storage.version += 1
        return True

    def _take_final_slot(self, mask: dict[int, bool]) -> int:
        """Claim the next slot for the open episode's final observation and close the episode.

        Neither that slot nor the one whose state history would end there is a valid start (recorded in ``mask``).
        """
        capacity = self._storage.max_size
        f = self._cursor
        mask[f] = False
        mask[(f + self.history - 1) % capacity] = False
        self._cursor = (f + 1) % capacity
        self._episode_length = 0
        self._episode_history = []
        return f

    def _empty(self, empty_write_count: bool = True) -> None:
        self._cursor = 0
        self._episode_length = 0
        self._episode_history = []
        self.env_terminates = False
        if empty_write_count:
            self._write_count = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "cursor": self._cursor,
            "episode_length": self._episode_length,
            "episode_history": list(self._episode_history),
            "write_count": self._write_count,
            "env_terminates": self.env_terminates,
        }

    def check_state_dict(self, state_dict: dict[str, Any], capacity: int) -> None:
        """Raise ``ValueError`` if ``state_dict`` is not a valid writer state for ``capacity`` slots."""
        for key in ("cursor", "episode_length", "write_count"):
            if not isinstance(state_dict.get(key), int) or state_dict[key] < 0:
                raise ValueError(f"writer field {key!r} is missing or not a non-negative int")
        if state_dict["cursor"] >= capacity:
            raise ValueError(f"writer cursor {state_dict['cursor']} is outside capacity {capacity}")
        hist = state_dict.get("episode_history")
        expected = self.history if state_dict["episode_length"] > 0 else 0
        if not isinstance(hist, list) or len(hist) != expected or any(not 0 <= int(i) < capacity for i in hist):
            raise ValueError(f"writer episode_history {hist!r} is not {expected} slot indices")
        if not isinstance(state_dict.get("env_terminates"), bool):
            raise ValueError("writer field 'env_terminates' is missing or not a bool")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._cursor = int(state_dict["cursor"])
        self._episode_length = int(state_dict["episode_length"])
        self._episode_history = [int(i) for i in state_dict["episode_history"]]
        self._write_count = int(state_dict["write_count"])
        self.env_terminates = bool(state_dict["env_terminates"])

    def dumps(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(path) / "writer.pt")

    def loads(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(Path(path) / "writer.pt", weights_only=True))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cursor={self._cursor}, episode_length={self._episode_length}, "
            f"env_terminates={self.env_terminates})"
        )


# ----------------------------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------------------------


class LAPSampler(Sampler):
    """LAP prioritized sampling of start slots (spec §8) over an :class:`MRQStorage`.

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
        return {"priority": _prefix(self.priority, size), "max_priority": self.max_priority.clone()}

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


# ----------------------------------------------------------------------------------------------------------------
# Buffer
# ----------------------------------------------------------------------------------------------------------------


class MRQReplayBuffer(TensorDictReplayBuffer):
    """MR.Q replay buffer: one frame per slot, LAP priorities, MR.Q's valid-start windows (spec §8, §11, §12).

    Write with :meth:`extend` (collector output of one env, batch ``[T]`` or ``[1]``) or :meth:`add` (batch
    ``[]``); sample windows with :meth:`sample`; feed LAP priorities back with :meth:`update_priority` or
    :meth:`update_tensordict_priority`.

    Args:
        capacity: number of slots. Each episode of n transitions uses n + 1 (final observation). Must be at least
            ``horizon + history + 1`` (smaller rings would let one episode overwrite its own live windows).
        obs_shape: the full per-state shape as the environment emits it: ``(obs_dim,)`` for vectors,
            ``(C * history, H, W)`` (uint8, newest frame last) for pixels.
        action_dim: action size (one-hot width for discrete actions).
        pixels: whether observations are uint8 images.
        history: frames per state (``obs_shape[0]`` must be divisible by it).
        batch_size: default batch size of :meth:`sample`.
        horizon: window length used for the valid-start mask, ``max(H_enc, H_Q) = 5``; :meth:`sample` accepts any
            horizon up to it.
        alpha: LAP priority exponent (priorities arrive already exponentiated; used for the priority floor
            ``min_priority ** alpha`` and recorded in checkpoints).
        min_priority: LAP minimum priority; also the initial running max priority.
        augment: random-shift (pad 4) every sampled pixel state; vectors are never shifted.
        official_quirks: reproduce the official code's Q4 (dynamics targets) and Q5 (reward scale) behaviour.
        device: where every tensor lives and batches are returned.
    """

    def __init__(
        self,
        *,
        capacity: int = 1_000_000,
        obs_shape: tuple[int, ...],
        action_dim: int,
        pixels: bool = False,
        history: int = 1,
        batch_size: int = 256,
        horizon: int = 5,
        alpha: float = 0.4,
        min_priority: float = 1.0,
        augment: bool = True,
        official_quirks: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        obs_shape = tuple(int(d) for d in obs_shape)
        if history < 1 or horizon < 1 or action_dim < 1:
            raise ValueError(f"history ({history}), horizon ({horizon}) and action_dim ({action_dim}) must be >= 1")
        if capacity < horizon + history + 1:
            raise ValueError(f"capacity ({capacity}) must be at least horizon + history + 1 = {horizon + history + 1}")
        if pixels and len(obs_shape) != 3:
            raise ValueError(f"pixel obs_shape must be (C * history, H, W), got {obs_shape}")
        if not pixels and len(obs_shape) != 1:
            raise ValueError(f"vector obs_shape must be (obs_dim,), got {obs_shape}")
        if obs_shape[0] % history:
            raise ValueError(f"obs_shape[0] = {obs_shape[0]} is not divisible by history = {history}")
        if alpha <= 0 or min_priority <= 0:
            raise ValueError(f"alpha ({alpha}) and min_priority ({min_priority}) must be positive")

        self.capacity = int(capacity)
        self.obs_shape = obs_shape
        self.action_dim = int(action_dim)
        self.pixels = bool(pixels)
        self.history = int(history)
        self.horizon = int(horizon)
        self.alpha = float(alpha)
        self.min_priority = float(min_priority)
        self.augment = bool(augment)
        self.official_quirks = bool(official_quirks)
        self.device = torch.device(device)
        self.frame_shape = (obs_shape[0] // history, *obs_shape[1:])
        storage = MRQStorage(
            self.capacity,
            frame_shape=self.frame_shape,
            frame_dtype=torch.uint8 if self.pixels else torch.float32,
            action_dim=self.action_dim,
            history=self.history,
            device=self.device,
        )
        sampler = LAPSampler(self.capacity, alpha=alpha, min_priority=min_priority, device=self.device)
        writer = MRQWriter(horizon=self.horizon, history=self.history)
        super().__init__(
            storage=storage,
            sampler=sampler,
            writer=writer,
            collate_fn=_identity,
            batch_size=int(batch_size),
            priority_key="priority",
        )
        self._offsets = torch.arange(self.horizon, device=self.device)

    # -- configuration -------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments that define the storage layout and priority semantics (checked on load)."""
        return {
            "capacity": self.capacity,
            "obs_shape": list(self.obs_shape),
            "action_dim": self.action_dim,
            "pixels": self.pixels,
            "history": self.history,
            "horizon": self.horizon,
            "alpha": self.alpha,
            "min_priority": self.min_priority,
        }

    def _config_mismatch(self, other: Any) -> str | None:
        if not isinstance(other, dict):
            return "no buffer config recorded"
        mine = self.config()
        diffs = [f"{k}: saved {other.get(k)!r} != buffer {v!r}" for k, v in mine.items() if other.get(k) != v]
        return "; ".join(diffs) or None

    # -- statistics ----------------------------------------------------------------------------------------------
    @property
    def env_terminates(self) -> bool:
        """True once any *terminated* transition has been stored (spec §5); never reset by overwrites."""
        return self._writer.env_terminates

    @property
    def num_transitions(self) -> int:
        """Transition slots among the filled slots (final-observation slots excluded)."""
        return int(self._storage.is_transition[: len(self._storage)].sum())

    @property
    def max_priority(self) -> float:
        """The running max priority given to new transitions."""
        return float(self._sampler.max_priority)

    @property
    def priorities(self) -> torch.Tensor:
        """Stored priorities of the filled slots ``[size]`` (a view)."""
        return self._sampler.priority[: len(self._storage)]

    @property
    def valid_mask(self) -> torch.Tensor:
        """Valid-start bits of the filled slots ``[size]`` (a view)."""
        return self._storage.valid[: len(self._storage)]

    def reward_scale(self) -> torch.Tensor:
        """Mean |reward| (spec §9), as a 0-d float32 tensor on the buffer device, floored at 1e-8.

        Fixed (default, Q5): over transition slots only. ``official_quirks``: over all filled slots, including
        final-observation slots with whatever reward sits there (0, or stale after wrap-around). An empty buffer
        returns 1.0, the initial r̄ of spec §9.
        """
        size = len(self._storage)
        if size == 0:
            return torch.ones((), dtype=torch.float32, device=self.device)
        reward = self._storage.reward[:size].abs()
        if self.official_quirks:
            mean = reward.mean()
        else:
            mask = self._storage.is_transition[:size]
            mean = (reward * mask).sum() / mask.sum().clamp(min=1)
        return mean.clamp(min=1e-8)

    def memory_bytes(self) -> int:
        """Bytes of every storage tensor (slot tensors and priorities), at full capacity."""
        return self._storage.nbytes() + self._sampler.priority.nbytes

    # -- writing -------------------------------------------------------------------------------------------------
    def _newest_frames(self, states: torch.Tensor, name: Any) -> torch.Tensor:
        """Validate states ``[N, *obs_shape]`` and return the frame each one adds ``[N, *frame_shape]`` (stored once)."""
        if tuple(states.shape[1:]) != self.obs_shape:
            raise ValueError(f"{name!r} has per-step shape {tuple(states.shape[1:])}, expected {self.obs_shape}")
        if self.pixels and states.dtype != torch.uint8:
            raise TypeError(f"pixel {name!r} must be uint8, got {states.dtype}")
        frames = states[:, -self.frame_shape[0] :]
        return frames if self.pixels else frames.to(torch.float32)

    def _canonical(self, data: TensorDictBase) -> dict[str, torch.Tensor]:
        """Collector/env TensorDict -> the writer's per-transition fields (leading dim T) on the buffer device."""
        if not isinstance(data, TensorDictBase):
            raise TypeError(f"{type(self).__name__} stores TensorDicts, got {type(data).__name__}")
        lead = tuple(data.batch_size)
        if len(lead) > 1 and not (len(lead) == 2 and lead[0] == 1):
            raise ValueError(
                f"expected the transitions of ONE environment with batch [T] (or [1, T], or []), got batch_size {lead}"
            )
        num = lead[-1] if lead else 1
        dev = self.device

        def fetch(td: TensorDictBase, key: str, default: Any = _MISSING) -> torch.Tensor | None:
            value = td.get(key, None)
            if value is None:
                if default is _MISSING:
                    raise KeyError(f"transitions need the key {key!r} (under 'next' for s', reward and flags)")
                return default
            return value.to(dev).reshape(num, *value.shape[len(lead) :])

        nxt = data.get("next", None)
        if nxt is None:
            raise KeyError("transitions need a 'next' sub-TensorDict")
        frame = self._newest_frames(fetch(data, "observation"), "observation")
        final_frame = self._newest_frames(fetch(nxt, "observation"), ("next", "observation"))

        action = fetch(data, "action")
        if not action.is_floating_point() and (action.ndim == 1 or (action.shape[-1] == 1 and self.action_dim > 1)):
            # Discrete actions given as indices ([T] or [T, 1]): store them one-hot (quirk Q2 fixed).
            action = F.one_hot(action.reshape(num).long(), self.action_dim)
        action = action.to(torch.float32).reshape(num, -1)
        if action.shape[1] != self.action_dim:
            raise ValueError(f"'action' has {action.shape[1]} entries per step, expected {self.action_dim}")

        terminated = fetch(nxt, "terminated").reshape(num).bool()
        truncated = fetch(nxt, "truncated", None)
        if truncated is None:
            done = fetch(nxt, "done", None)
            truncated = torch.zeros_like(terminated) if done is None else done.reshape(num).bool() & ~terminated
        truncated = truncated.reshape(num).bool()
        reward = fetch(nxt, "reward").reshape(num).to(torch.float32)
        return {
            "frame": frame,
            "final_frame": final_frame,
            "action": action,
            "reward": reward,
            "terminated": terminated,
            "truncated": truncated,
        }

    def extend(self, tensordicts: TensorDictBase, *, update_priority: bool | None = None) -> torch.Tensor:
        """Store the transitions of one environment in time order (spec §11).

        Accepts batch ``[T]``, ``[1, T]`` or ``[]``. Keys: ``"observation"``, ``"action"`` (float, one-hot or
        discrete indices), ``("next", "reward")``, ``("next", "terminated")``, ``("next", "truncated")`` (or
        ``("next", "done")``), ``("next", "observation")``. Episode starts are tracked by the buffer (first
        transition ever, or first after a terminated/truncated one). The input is not modified.

        Returns:
            The slots of the T transitions (int64), whose priority is the running max priority.
        """
        del update_priority  # priorities of new transitions are always the running max (spec §8)
        data = self._canonical(tensordicts)
        with self._replay_lock, self._write_lock:
            index = self._writer.extend(data)
            self._sampler.extend(index)
        return index

    def add(self, data: TensorDictBase) -> int:
        """Store one transition (batch ``[]``); returns its slot."""
        return int(self.extend(data)[0])

    def end_episode(self, final_observation: torch.Tensor) -> bool:
        """Close the open episode as truncated at ``final_observation``, the ``("next", "observation")`` of its
        last stored transition.

        Call it when the transition stream is cut mid-episode without a done flag (a collection budget, an
        environment that restarts after a resume): otherwise the next transition stored would continue that
        episode's frame history. Costs one slot (the final-observation slot a truncated transition also writes);
        no transition is added. Returns False and stores nothing when no episode is open.
        """
        obs = torch.as_tensor(final_observation).to(self.device)
        frame = self._newest_frames(obs.unsqueeze(0), "final_observation")[0]
        with self._replay_lock, self._write_lock:
            return self._writer.end_episode(frame)

    # -- priorities ----------------------------------------------------------------------------------------------
    def update_priority(self, index: int | torch.Tensor, priority: float | torch.Tensor) -> None:
        """Set already-exponentiated LAP priorities ``[B]`` of start slots ``[B]`` (last write wins).

        Also raises the running max priority to ``max(previous, priority.max())``.
        """
        with self._replay_lock, self._write_lock:
            self._sampler.update_priority(index, priority)

    def update_tensordict_priority(self, data: TensorDictBase) -> None:
        """:meth:`update_priority` from a TensorDict's ``"index"`` and ``"priority"`` entries."""
        self.update_priority(data.get("index"), data.get(self.priority_key))

    # -- sampling ------------------------------------------------------------------------------------------------
    def _states(self, index: torch.Tensor) -> torch.Tensor:
        """Rebuild states from frame-slot tables ``[..., history]`` -> ``[..., *obs_shape]``.

        Before the ring is full, a window that runs past a terminal can reach successor indices at or beyond the
        write frontier (slots never written, whose pixel frames are uninitialised memory). Those read slot 0
        instead, like never-written history indices do, so batches stay deterministic (and identical after a
        checkpoint round trip); such positions are always masked by the termination masks.
        """
        index = index.long()
        size = len(self._storage)
        if size < self.capacity:
            index = index.masked_fill(index >= size, 0)
        frames = self._storage.frames[index]  # [..., history, *frame_shape]
        return frames.reshape(*index.shape[:-1], *self.obs_shape)

    def _shift(self, states: torch.Tensor) -> torch.Tensor:
        flat = states.reshape(-1, *self.obs_shape)
        return random_shift(flat, pad=4, generator=self._rng).reshape(states.shape)

    def sample(
        self, batch_size: int | None = None, horizon: int = 3, include_intermediate: bool = False
    ) -> TensorDict:
        """Draw LAP-prioritized windows (spec §5, §6, §8) as in the replay batch contract.

        Args:
            batch_size: B (defaults to the constructor's ``batch_size``).
            horizon: window length H, at most the buffer's ``horizon``. Encoder mode: 5; value mode: 3.
            include_intermediate: encoder mode: ``("next", "observation")`` holds all H successor states.

        Returns:
            TensorDict, batch ``[B]``, on the buffer device: ``"observation"`` ``[B, *state]``; ``"action"``
            ``[B, H, A]``; ``("next", "reward")`` and ``("next", "terminated")`` ``[B, H]`` float32;
            ``("next", "observation")`` ``[B, H, *state]`` (encoder mode) or ``[B, *state]`` (the successor of
            slot j+H-1); ``"index"`` ``[B]`` int64. Position i of the encoder-mode successors is the stored
            successor of slot j+i (the true final observation at a terminal); with ``official_quirks`` (Q4) it is
            the state of slot j+i+1 rebuilt from that slot's own history indices (stale at a final-observation
            slot), except the last one. Pixel states are uint8 and, with ``augment``, independently shifted.

        Raises:
            RuntimeError: if the buffer holds no valid start slot.
        """
        batch_size = self._batch_size if batch_size is None else int(batch_size)
        self._check_horizon(horizon)
        with self._replay_lock:
            start, _ = self._sampler.sample(self._storage, batch_size)
        return self.gather(start, horizon=horizon, include_intermediate=include_intermediate)

    def _check_horizon(self, horizon: int) -> None:
        if not 1 <= horizon <= self.horizon:
            raise ValueError(f"horizon must be in [1, {self.horizon}] (the buffer's window length), got {horizon}")

    def gather(
        self, index: torch.Tensor, horizon: int = 3, include_intermediate: bool = False
    ) -> TensorDict:
        """Build the :meth:`sample` batch for given start slots ``index`` ``[B]`` (validity is not checked).

        This is the deterministic half of :meth:`sample` (augmentation still applies); useful for inspection.
        """
        self._check_horizon(horizon)
        storage: MRQStorage = self._storage
        start = torch.as_tensor(index, device=self.device).to(torch.long).reshape(-1)
        batch_size = start.numel()
        with self._replay_lock:
            window = (start.unsqueeze(1) + self._offsets[:horizon]) % self.capacity  # [B, H]
            action = storage.action[window]
            reward = storage.reward[window]
            terminated = 1.0 - storage.not_done[window]
            observation = self._states(storage.state_index[start])
            if include_intermediate:
                if self.official_quirks:
                    table = torch.cat([storage.state_index[window[:, 1:]], storage.next_index[window[:, -1:]]], 1)
                else:
                    table = storage.next_index[window]
                next_observation = self._states(table)  # [B, H, *state]
            else:
                next_observation = self._states(storage.next_index[window[:, -1]])  # [B, *state]
        if self.pixels and self.augment:
            observation = self._shift(observation)
            next_observation = self._shift(next_observation)
        return TensorDict(
            {
                "observation": observation,
                "action": action,
                "next": TensorDict(
                    {"reward": reward, "terminated": terminated, "observation": next_observation},
                    batch_size=[batch_size],
                    device=self.device,
                ),
                "index": start,
            },
            batch_size=[batch_size],
            device=self.device,
        )

    # -- checkpointing -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Config, slot tensors (filled prefix), priorities, max priority, cursor, episode tracking, flags.

        Tensors may alias the live storage when the buffer is full: save or clone before writing again.
        """
        size = len(self._storage)
        return {
            "format": _CHECKPOINT_FORMAT,
            "config": self.config(),
            "storage": self._storage.state_dict(),
            "sampler": self._sampler.state_dict(size),
            "writer": self._writer.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Validates everything before touching the buffer.

        Raises:
            ValueError: on a config mismatch (capacity, obs shape, ...) or malformed content.
        """
        if not isinstance(state_dict, dict) or state_dict.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"not an MRQReplayBuffer state (expected format {_CHECKPOINT_FORMAT!r})")
        mismatch = self._config_mismatch(state_dict.get("config"))
        if mismatch:
            raise ValueError(f"replay buffer config mismatch: {mismatch}")
        for key in ("storage", "sampler", "writer"):
            if not isinstance(state_dict.get(key), dict):
                raise ValueError(f"state has no {key!r} section")
        self._storage.check_state_dict(state_dict["storage"])
        size = state_dict["storage"]["size"]
        self._sampler.check_state_dict(state_dict["sampler"], size)
        self._writer.check_state_dict(state_dict["writer"], self.capacity)
        with self._replay_lock, self._write_lock:
            self._storage.load_state_dict(state_dict["storage"])
            self._sampler.load_state_dict(state_dict["sampler"])
            self._writer.load_state_dict(state_dict["writer"])

    def dumps(self, path: str | os.PathLike) -> None:
        """Write the buffer to directory ``path`` atomically.

        Everything is written into a temporary directory beside ``path`` and renamed into place; an existing
        ``path`` is replaced only after the new one is complete. A failure leaves any previous checkpoint intact
        and no partial directory under ``path``. Files: ``meta.json`` (format and config, readable without torch)
        and ``state.pt`` (:meth:`state_dict`).
        """
        path = Path(path).absolute()
        if path.exists():
            if not path.is_dir():
                raise ReplayBufferCheckpointError(f"cannot write replay buffer to {path}: it is not a directory")
            if any(path.iterdir()) and not (path / _META_FILE).is_file():
                raise ReplayBufferCheckpointError(
                    f"refusing to replace {path}: it is a non-empty directory without {_META_FILE}, "
                    "not a replay buffer checkpoint"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            os.chmod(tmp, 0o755)
            state = self.state_dict()
            with open(tmp / _STATE_FILE, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            meta = {"format": _CHECKPOINT_FORMAT, "config": state["config"], "size": state["storage"]["size"]}
            with open(tmp / _META_FILE, "w") as handle:
                json.dump(meta, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            if path.exists():
                old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
                os.rename(path, old)
                try:
                    os.rename(tmp, path)
                except BaseException:
                    os.rename(old, path)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_directory(path.parent)

    def loads(self, path: str | os.PathLike) -> None:
        """Load a directory written by :meth:`dumps` into this (identically configured) buffer.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ReplayBufferCheckpointError: the directory is corrupt, incomplete, or was written by a buffer with a
                different capacity / obs shape / action dim / pixels / history / horizon / alpha / min priority.
                The buffer is left unchanged.
        """
        path = Path(path).absolute()
        if not path.exists():
            raise FileNotFoundError(f"replay buffer checkpoint {path} does not exist")
        if not path.is_dir():
            raise ReplayBufferCheckpointError(f"replay buffer checkpoint {path} is not a directory")
        try:
            with open(path / _META_FILE) as handle:
                meta = json.load(handle)
        except (OSError, ValueError) as err:
            raise ReplayBufferCheckpointError(
                f"replay buffer checkpoint {path} is corrupt or incomplete: cannot read {_META_FILE} ({err})"
            ) from err
        found = meta.get("format") if isinstance(meta, dict) else meta
        if found != _CHECKPOINT_FORMAT:
            raise ReplayBufferCheckpointError(
                f"replay buffer checkpoint {path}: unknown format {found!r} (expected {_CHECKPOINT_FORMAT!r})"
            )
        mismatch = self._config_mismatch(meta.get("config"))
        if mismatch:
            raise ReplayBufferCheckpointError(f"replay buffer checkpoint {path} does not match this buffer: {mismatch}")
        try:
            # mmap on CPU: tensors are paged in while being copied into the ring, not held twice in memory.
            state = torch.load(
                path / _STATE_FILE, map_location=self.device, weights_only=True, mmap=self.device.type == "cpu"
            )
        except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
            raise ReplayBufferCheckpointError(
                f"replay buffer checkpoint {path} is corrupt or incomplete: cannot load {_STATE_FILE} ({err})"
            ) from err
        try:
            self.load_state_dict(state)
        except ValueError as err:
            raise ReplayBufferCheckpointError(f"replay buffer checkpoint {path} is invalid: {err}") from err

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={len(self._storage)}/{self.capacity}, obs_shape={self.obs_shape}, "
            f"action_dim={self.action_dim}, pixels={self.pixels}, history={self.history}, horizon={self.horizon}, "
            f"official_quirks={self.official_quirks}, device={self.device})"
        )
