"""Replay writer (algorithm §11): :class:`MRQWriter`, the slot write rules of the ring.

Cursor, frame-history indices, final-observation slots, valid-start mask and ``env_terminates``; the slots live in
:class:`~mrq_lightning.data.storage.MRQStorage`. Its input, the per-transition fields, comes from
:class:`~mrq_lightning.data.transitions.TransitionLayout`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchrl.data.replay_buffers.writers import Writer

from mrq_lightning.data.storage import MRQStorage

__all__ = ["MRQWriter"]


class MRQWriter(Writer):
    """Applies the algorithm §11 write rules to an :class:`MRQStorage`.

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

        contiguous = not final_slots and first + num <= capacity  # the usual case: a plain slice of slots
        where = slice(first, first + num) if contiguous else trans_slots
        write = self._write_numpy if storage.numpy_views else self._write_torch
        write(data, where, index_rows, next_rows, final_slots, final_rows, mask)
        storage.grow(written)
        self.env_terminates = self.env_terminates or any(terminated)
        self._write_count += num
        if contiguous:
            return torch.arange(first, first + num, device=storage.device)
        return torch.tensor(trans_slots, dtype=torch.long, device=storage.device)

    # The slot writes of one chunk. `where` is a slice or a list of transition slots, the rows are the state and
    # successor history indices of each transition, `mask` the final valid-start value of each touched slot. Two
    # ways of writing the same values: on the CPU through numpy views of the storage tensors (they share memory),
    # because each torch indexing call costs microseconds of dispatch and one env step makes about a dozen of
    # them (collection cost, docs/benchmarks.md "Collection"); elsewhere (a GPU buffer) with torch indexing.
    def _write_numpy(self, data, where, index_rows, next_rows, final_slots, final_rows, mask) -> None:
        slots = self._storage.numpy_views
        slots["frames"][where] = data["frame"].numpy()
        slots["action"][where] = data["action"].numpy()
        slots["reward"][where] = data["reward"].numpy()
        slots["not_done"][where] = 1.0 - data["terminated"].numpy().astype(np.float32)
        slots["is_transition"][where] = True
        slots["state_index"][where] = index_rows
        slots["next_index"][where] = next_rows
        if final_slots:
            slots["frames"][final_slots] = data["final_frame"].numpy()[final_rows]
            slots["is_transition"][final_slots] = False
        slots["valid"][list(mask)] = list(mask.values())

    def _write_torch(self, data, where, index_rows, next_rows, final_slots, final_rows, mask) -> None:
        storage: MRQStorage = self._storage
        dev = storage.device
        where = where if isinstance(where, slice) else torch.tensor(where, dtype=torch.long, device=dev)
        num = len(index_rows)
        index_table = torch.tensor(index_rows + next_rows, dtype=torch.int32, device=dev)
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
        storage.grow(1)
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
