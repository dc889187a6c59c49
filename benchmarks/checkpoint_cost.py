"""What one replay-buffer checkpoint costs for an Atari-sized MR.Q buffer: save time, bytes on disk, load time.

    python benchmarks/checkpoint_cost.py --slots 200000 --dir /tmp/mrq_checkpoint_cost

Builds an ``MRQReplayBuffer`` with Atari's layout (``obs_shape=(4, 84, 84)`` uint8, ``history=4``, one 84x84
frame per slot; 18 one-hot actions, the full ALE action set) and fills ``--slots`` slots with synthetic episodes
through the public ``extend`` (``--episode-length`` transitions each, terminated, plus the final-observation slot;
the last episode is left open so exactly ``--slots`` slots are filled). Frames are uniform random uint8, so the
file size is what real (incompressible) frames would give; random LAP priorities are written too.

It then times ``buffer.dumps(dir)``, the call the checkpoint sidecar makes (``training/resume.py``:
``torch.save`` of the state dict + fsync, atomic rename), sums the bytes of the files written, and times
``loads`` into a fresh, identically configured buffer (whose content is checked against the original). The
load is measured right after the save, so the file is most likely still in the page cache: it is a lower bound
for a resume from cold storage. Both figures are extrapolated linearly to ``--extrapolate-to`` slots (default:
the replay capacity of the paper, 1,000,000, which the Atari preset uses). Prints

    save 200000 slots: 12.3 s, 1.43 GB (116 MB/s)
    load 200000 slots: ...
    extrapolated to 1000000 slots: save ... s, ... GB; load ... s

By default the buffer capacity equals ``--slots``, i.e. a full ring, which is what a long Atari run checkpoints
(the state dict then aliases the storage); ``--capacity`` larger than ``--slots`` measures a partly filled ring,
whose filled prefix is copied before saving. Needs about 2 x 7.2 kB x slots of RAM and 7.2 kB x slots on disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

OBS_SHAPE = (4, 84, 84)  # Atari: 4 stacked 84x84 gray frames (envs/atari_suite.py)
HISTORY = 4


def _make_buffer(capacity: int, action_dim: int):
    from mrq_lightning.data import MRQReplayBuffer

    return MRQReplayBuffer(capacity=capacity, obs_shape=OBS_SHAPE, action_dim=action_dim, pixels=True,
                           history=HISTORY)  # fmt: skip


def _episode(steps: int, action_dim: int, terminated: bool, generator: torch.Generator):
    """``steps`` transitions of one episode with random frames; stacked states are views of the newest frame
    (the buffer stores only the newest frame of each state, so the older stack entries are never read)."""
    from tensordict import TensorDict

    frames = torch.randint(0, 256, (steps + 1, 1, *OBS_SHAPE[1:]), dtype=torch.uint8, generator=generator)
    states = frames.expand(steps + 1, *OBS_SHAPE)
    done = torch.zeros(steps, 1, dtype=torch.bool)
    done[-1] = terminated
    return TensorDict(
        {
            "observation": states[:-1],
            "action": torch.randint(0, action_dim, (steps,), generator=generator),
            "next": {
                "observation": states[1:],
                "reward": torch.randn(steps, 1, generator=generator),
                "terminated": done,
                "truncated": torch.zeros_like(done),
            },
        },
        [steps],
    )


def fill(buffer, slots: int, episode_length: int, action_dim: int, seed: int) -> None:
    """Fill exactly ``slots`` slots: terminated episodes (``episode_length + 1`` slots each), then one open one."""
    generator = torch.Generator().manual_seed(seed)
    left = slots
    while left > 0:
        if left > episode_length + 1:
            buffer.extend(_episode(episode_length, action_dim, True, generator))
            left -= episode_length + 1
        else:
            buffer.extend(_episode(left, action_dim, False, generator))  # open episode: one slot per transition
            left = 0
    assert len(buffer) == slots, (len(buffer), slots)
    index = torch.arange(slots)
    buffer.update_priority(index, torch.rand(slots, generator=generator) + 0.5)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    from mrq_lightning.hyperparameters import REPLAY

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slots", type=int, default=200_000, help="filled slots to checkpoint")
    p.add_argument("--capacity", type=int, default=None, help="buffer capacity (default: --slots, a full ring)")
    p.add_argument("--action-dim", type=int, default=18, help="one-hot action width (18: full ALE action set)")
    p.add_argument("--episode-length", type=int, default=1000, help="transitions per synthetic episode")
    p.add_argument("--extrapolate-to", type=int, default=REPLAY.capacity, help="slots to extrapolate to")
    p.add_argument("--dir", default="/tmp/mrq_checkpoint_cost", help="scratch directory (deleted at the end)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    capacity = args.slots if args.capacity is None else args.capacity
    if not 1 <= args.slots <= capacity:
        raise SystemExit(f"need 1 <= --slots ({args.slots}) <= --capacity ({capacity})")

    scratch = Path(args.dir)
    if scratch.exists():
        raise SystemExit(f"{scratch} exists; pass a fresh --dir (it is deleted at the end)")
    scratch.mkdir(parents=True)
    free = shutil.disk_usage(scratch).free
    try:
        buffer = _make_buffer(capacity, args.action_dim)
        need = buffer.memory_bytes() * args.slots // capacity
        print(f"buffer: capacity {capacity}, obs {OBS_SHAPE} uint8, history {HISTORY}, {args.action_dim} actions; "
              f"{need / 1e9:.2f} GB of slot tensors to save, {free / 1e9:.1f} GB free in {scratch}")  # fmt: skip
        if need * 1.05 > free:
            raise SystemExit("not enough free disk space for the checkpoint")

        start = time.perf_counter()
        fill(buffer, args.slots, args.episode_length, args.action_dim, args.seed)
        print(f"fill {args.slots} slots: {time.perf_counter() - start:.1f} s (not part of the checkpoint cost)")

        path = scratch / "replay"
        start = time.perf_counter()
        buffer.dumps(path)
        save_s = time.perf_counter() - start
        nbytes = _dir_bytes(path)
        print(f"save {args.slots} slots: {save_s:.2f} s, {nbytes / 1e9:.2f} GB ({nbytes / 1e6 / save_s:.0f} MB/s)")

        fresh = _make_buffer(capacity, args.action_dim)
        start = time.perf_counter()
        fresh.loads(path)
        load_s = time.perf_counter() - start
        print(f"load {args.slots} slots: {load_s:.2f} s ({nbytes / 1e6 / load_s:.0f} MB/s, file likely page-cached)")
        ok = all(
            torch.equal(getattr(buffer._storage, name)[: args.slots], getattr(fresh._storage, name)[: args.slots])
            for name in buffer._storage.tensor_names
        ) and torch.equal(buffer.priorities, fresh.priorities)
        print(f"round trip identical: {ok}")
        del fresh

        scale = args.extrapolate_to / args.slots
        print(f"extrapolated to {args.extrapolate_to} slots: save {save_s * scale:.1f} s, "
              f"{nbytes * scale / 1e9:.2f} GB; load {load_s * scale:.1f} s")  # fmt: skip
        if not ok:
            raise SystemExit("loaded buffer differs from the saved one")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
