"""MR.Q's replay buffer as a TorchRL :class:`~torchrl.data.TensorDictReplayBuffer` (algorithm §8, §11, §12).

The buffer is assembled from three TorchRL components, each owning one concern:

* :class:`MRQStorage` (a TorchRL ``Storage``, ``storage.py``): the slot tensors and the fill level;
* :class:`MRQWriter` (a TorchRL ``Writer``, ``writer.py``): the algorithm §11 write rules (cursor, frame-history indices,
  final-observation slots, valid-start mask, ``env_terminates``);
* :class:`LAPSampler` (a TorchRL ``Sampler``, ``sampler.py``): LAP priorities (algorithm §8) and inverse-CDF sampling of
  start slots with probability proportional to ``priority * valid``.

:class:`MRQReplayBuffer` glues them and turns sampled start slots into the windowed batch of the replay batch
contract in ``docs/architecture.md``. The on-disk format of ``dumps`` / ``loads`` lives in ``persistence.py``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import TensorDictReplayBuffer

from mrq_lightning.data.persistence import CHECKPOINT_FORMAT, read_buffer_dir, write_buffer_dir
from mrq_lightning.data.sampler import LAPSampler
from mrq_lightning.data.storage import MRQStorage
from mrq_lightning.data.transitions import TransitionLayout
from mrq_lightning.data.writer import MRQWriter
from mrq_lightning.functional import random_shift
from mrq_lightning.hyperparameters import LOSS, REPLAY, UPDATE, replay_settings

_PAPER_REPLAY = replay_settings()  # horizon max(5, 3) = 5, alpha 0.4, min priority 1

__all__ = ["MRQReplayBuffer"]


def _identity(x: Any) -> Any:
    return x


class MRQReplayBuffer(TensorDictReplayBuffer):
    """MR.Q replay buffer: one frame per slot, LAP priorities, MR.Q's valid-start windows (algorithm §8, §11, §12).

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
        capacity: int = REPLAY.capacity,
        obs_shape: tuple[int, ...],
        action_dim: int,
        pixels: bool = False,
        history: int = 1,
        batch_size: int = UPDATE.batch_size,
        horizon: int = _PAPER_REPLAY["horizon"],
        alpha: float = LOSS.lap_alpha,
        min_priority: float = LOSS.min_priority,
        augment: bool = REPLAY.pixel_augmentation,
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
        self.layout = TransitionLayout(obs_shape, self.frame_shape, self.action_dim, self.pixels, self.device,
                                       type(self).__name__)  # fmt: skip
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

    def config_mismatch(self, other: Any) -> str | None:
        if not isinstance(other, dict):
            return "no buffer config recorded"
        mine = self.config()
        diffs = [f"{k}: saved {other.get(k)!r} != buffer {v!r}" for k, v in mine.items() if other.get(k) != v]
        return "; ".join(diffs) or None

    # -- statistics ----------------------------------------------------------------------------------------------
    @property
    def env_terminates(self) -> bool:
        """True once any *terminated* transition has been stored (algorithm §5); never reset by overwrites."""
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
        """Mean |reward| (algorithm §9), as a 0-d float32 tensor on the buffer device, floored at 1e-8.

        Fixed (default, Q5): over transition slots only. ``official_quirks``: over all filled slots, including
        final-observation slots with whatever reward sits there (0, or stale after wrap-around). An empty buffer
        returns 1.0, the initial r̄ of algorithm §9.
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

    def extend(self, tensordicts: TensorDictBase, *, update_priority: bool | None = None) -> torch.Tensor:
        """Store the transitions of one environment in time order (algorithm §11).

        Accepts batch ``[T]``, ``[1, T]`` or ``[]``. Keys: ``"observation"``, ``"action"`` (float, one-hot or
        discrete indices), ``("next", "reward")``, ``("next", "terminated")``, ``("next", "truncated")`` (or
        ``("next", "done")``), ``("next", "observation")``. Episode starts are tracked by the buffer (first
        transition ever, or first after a terminated/truncated one). The input is not modified.

        Returns:
            The slots of the T transitions (int64), whose priority is the running max priority.
        """
        del update_priority  # priorities of new transitions are always the running max (algorithm §8)
        data = self.layout.canonicalize(tensordicts)
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
        frame = self.layout.newest_frames(obs.unsqueeze(0), "final_observation")[0]
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
        self, batch_size: int | None = None, horizon: int = UPDATE.value_horizon, include_intermediate: bool = False
    ) -> TensorDict:
        """Draw LAP-prioritized windows (algorithm §5, §6, §8) as in the replay batch contract.

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
        self, index: torch.Tensor, horizon: int = UPDATE.value_horizon, include_intermediate: bool = False
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
            "format": CHECKPOINT_FORMAT,
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
        if not isinstance(state_dict, dict) or state_dict.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not an MRQReplayBuffer state (expected format {CHECKPOINT_FORMAT!r})")
        mismatch = self.config_mismatch(state_dict.get("config"))
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
        write_buffer_dir(self, path)

    def loads(self, path: str | os.PathLike) -> None:
        """Load a directory written by :meth:`dumps` into this (identically configured) buffer.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ReplayBufferCheckpointError: the directory is corrupt, incomplete, or was written by a buffer with a
                different capacity / obs shape / action dim / pixels / history / horizon / alpha / min priority.
                The buffer is left unchanged.
        """
        read_buffer_dir(self, path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={len(self._storage)}/{self.capacity}, obs_shape={self.obs_shape}, "
            f"action_dim={self.action_dim}, pixels={self.pixels}, history={self.history}, horizon={self.horizon}, "
            f"official_quirks={self.official_quirks}, device={self.device})"
        )
