"""From collector TensorDicts to replay fields (algorithm §11): :class:`TransitionLayout`.

A replay slot stores one frame (the newest of a state), the action (one-hot for discrete actions), the reward and
the termination flags. :meth:`TransitionLayout.canonicalize` validates a collector/env TensorDict against the
buffer's layout and returns exactly those per-transition fields, the input of ``MRQWriter.extend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase

__all__ = ["TransitionLayout"]

_MISSING = object()


@dataclass(frozen=True)
class TransitionLayout:
    """What one replay slot holds.

    Args:
        obs_shape: the full per-state shape (``(obs_dim,)``, or ``(C * history, H, W)`` uint8 for pixels).
        frame_shape: one stored frame (``obs_shape`` with its first dim divided by the history).
        action_dim: action size (one-hot width for discrete actions).
        pixels: whether states are uint8 images.
        device: where the fields are returned.
        owner: the buffer's class name, for error messages.
    """

    obs_shape: tuple[int, ...]
    frame_shape: tuple[int, ...]
    action_dim: int
    pixels: bool
    device: torch.device
    owner: str = "MRQReplayBuffer"

    def newest_frames(self, states: torch.Tensor, name: Any) -> torch.Tensor:
        """Validate states ``[N, *obs_shape]`` and return the frame each one adds ``[N, *frame_shape]`` (stored once)."""
        if tuple(states.shape[1:]) != self.obs_shape:
            raise ValueError(f"{name!r} has per-step shape {tuple(states.shape[1:])}, expected {self.obs_shape}")
        if self.pixels and states.dtype != torch.uint8:
            raise TypeError(f"pixel {name!r} must be uint8, got {states.dtype}")
        frames = states if self.frame_shape[0] == self.obs_shape[0] else states[:, -self.frame_shape[0] :]
        return frames if self.pixels else frames.to(torch.float32)

    def canonicalize(self, data: TensorDictBase) -> dict[str, torch.Tensor]:
        """Collector/env TensorDict -> the writer's per-transition fields (leading dim T) on :attr:`device`."""
        if not isinstance(data, TensorDictBase):
            raise TypeError(f"{self.owner} stores TensorDicts, got {type(data).__name__}")
        lead = tuple(data.batch_size)
        if len(lead) > 1 and not (len(lead) == 2 and lead[0] == 1):
            raise ValueError(
                f"expected the transitions of ONE environment with batch [T] (or [1, T], or []), got batch_size {lead}"
            )
        num = lead[-1] if lead else 1
        dev = self.device

        flat = len(lead) == 1  # batch [T]: the leading dim is already T (one env step per collector batch: [1])

        # Only the operations a field needs: this runs on every env step (collection cost, docs/benchmarks.md).
        def fetch(td: TensorDictBase, key: str, default: Any = _MISSING) -> torch.Tensor | None:
            value = td.get(key, None)
            if value is None:
                if default is _MISSING:
                    raise KeyError(f"transitions need the key {key!r} (under 'next' for s', reward and flags)")
                return default
            if value.device != dev:
                value = value.to(dev)
            return value if flat else value.reshape(num, *value.shape[len(lead) :])

        nxt = data.get("next", None)
        if nxt is None:
            raise KeyError("transitions need a 'next' sub-TensorDict")
        frame = self.newest_frames(fetch(data, "observation"), "observation")
        final_frame = self.newest_frames(fetch(nxt, "observation"), ("next", "observation"))

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
