"""Bytes per stored transition of the MR.Q replay buffer, against TorchRL's default layout in the same run.

    python benchmarks/replay_memory.py --env Atari-Pong-v5 --transitions 20000

Steps the real environment preset with uniform random actions through a TorchRL ``Collector`` and writes every
transition into (a) ``MRQReplayBuffer`` with ``capacity == transitions`` and (b) a plain
``TensorDictReplayBuffer(LazyTensorStorage)`` holding the collector output as is (observation and next
observation stacks, one-hot int64 actions, flags). Bytes are counted from the storage tensors themselves (every
tensor: frames, actions, rewards, flags, history/successor indices, priorities, masks) and divided by the number of
slots. Prints ``bytes/transition <number>`` for the MR.Q buffer last.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _tensor_bytes(td) -> int:
    return sum(t.numel() * t.element_size() for t in td.values(include_nested=True, leaves_only=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Atari-Pong-v5")
    p.add_argument("--transitions", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip the TorchRL default-layout buffer")
    args = p.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")

    from torchrl.collectors import Collector
    from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

    from mrq_lightning.data import MRQReplayBuffer
    from mrq_lightning.envs import make_env

    torch.manual_seed(args.seed)
    env, info = make_env(args.env, args.seed)
    mrq = MRQReplayBuffer(
        capacity=args.transitions,
        obs_shape=info.obs_shape,
        action_dim=info.action_dim,
        pixels=info.pixels,
        history=info.history,
    )
    naive = None if args.no_baseline else TensorDictReplayBuffer(storage=LazyTensorStorage(args.transitions))
    collector = Collector(
        env, None, frames_per_batch=100, total_frames=args.transitions, track_traj_ids=False,
        auto_register_policy_transforms=False,
    )  # fmt: skip
    start = time.perf_counter()
    episodes = 0
    for batch in collector:
        mrq.extend(batch)
        episodes += int(batch.get(("next", "done")).sum())
        if naive is not None:
            naive.extend(batch)
    collector.shutdown()
    elapsed = time.perf_counter() - start

    mrq_bytes = mrq.memory_bytes() / args.transitions
    print(f"env {args.env}: {args.transitions} real transitions, {episodes} episode ends, filled in {elapsed:.1f} s")
    print(f"state {tuple(info.obs_shape)}, history {info.history}, actions {info.action_dim} "
          f"({'discrete' if info.discrete else 'continuous'})")  # fmt: skip
    if naive is not None:
        naive_bytes = _tensor_bytes(naive.storage._storage) / args.transitions
        print(f"torchrl LazyTensorStorage of collector output: {naive_bytes:,.0f} bytes/transition")
        print(f"ratio mrq/torchrl-default: {mrq_bytes / naive_bytes:.3f}")
    print(f"bytes/transition {mrq_bytes:.0f}")


if __name__ == "__main__":
    main()
