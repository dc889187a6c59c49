"""LAP sampling per env step: our inverse-CDF ``LAPSampler`` vs TorchRL's C++ sum segment tree, by buffer size.

    python benchmarks/lap_segment_tree.py --sizes 10000,100000,1000000

One MR.Q env step touches the sampler three times: the new transition gets the running max priority, a batch of
256 start slots is drawn, and the 256 sampled slots get their new LAP priorities. ``LAPSampler`` (the default, also
on GPU) rebuilds a float64 cumulative sum over the filled slots whenever priorities changed, i.e. once per step:
O(size). A sum segment tree (``torchrl._torchrl.SumSegmentTreeFp32``, the tree behind TorchRL's
``PrioritizedSampler``) updates and samples in O(batch * log size), on CPU only, in float32.

TorchRL 0.14.1's C++ extension is built against torch 2.14: under another torch it does not load, and this script
says so and times ``LAPSampler`` alone. Prints ``ms/step`` for both at every size, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

BATCH = 256


class _AllValid:
    """The three things ``LAPSampler`` reads from its storage: length, version, valid mask."""

    def __init__(self, size: int) -> None:
        self.size, self.version = size, 0
        self.valid = torch.ones(size, dtype=torch.bool)

    def __len__(self) -> int:
        return self.size


def time_lap_sampler(size: int, steps: int) -> float:
    from mrq_lightning.data.sampler import LAPSampler

    storage = _AllValid(size)
    sampler = LAPSampler(size, alpha=0.4, min_priority=1.0, device="cpu")
    sampler.update_priority(torch.arange(size), torch.rand(size) + 1.0)
    new = torch.randint(size, (steps,))
    t0 = time.perf_counter()
    for step in range(steps):
        sampler.extend(new[step : step + 1])
        index, _ = sampler.sample(storage, BATCH)
        sampler.update_priority(index, torch.rand(BATCH) + 1.0)
    return (time.perf_counter() - t0) / steps


def time_segment_tree(size: int, steps: int) -> float:
    from torchrl._torchrl import SumSegmentTreeFp32

    tree = SumSegmentTreeFp32(size)
    tree[torch.arange(size)] = torch.rand(size) + 1.0
    max_priority = 2.0
    new = torch.randint(size, (steps,))
    t0 = time.perf_counter()
    for step in range(steps):
        tree[new[step : step + 1]] = torch.tensor([max_priority])
        mass = torch.rand(BATCH, dtype=torch.float32) * tree.query(0, size)
        index = torch.as_tensor(tree.scan_lower_bound(mass))
        priority = torch.rand(BATCH) + 1.0
        tree[index] = priority
        max_priority = max(max_priority, float(priority.max()))
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}", end="; ")
    try:
        import torchrl
        from torchrl._torchrl import SumSegmentTreeFp32  # noqa: F401

        print(f"torchrl {torchrl.__version__}: C++ extension loaded")
        tree_loads = True
    except Exception as err:  # ImportError or the extension's undefined-symbol OSError
        print(f"torchrl's C++ extension does not load here ({type(err).__name__}: {str(err)[:160]}): LAPSampler only")
        tree_loads = False
    for size in (int(s) for s in args.sizes.split(",")):
        ours = time_lap_sampler(size, args.steps)
        line = f"{size:>9,} slots: LAPSampler {1000 * ours:7.3f} ms/step"
        if tree_loads:
            tree = time_segment_tree(size, args.steps)
            line += f", segment tree {1000 * tree:7.3f} ms/step, ratio {ours / tree:6.1f}x"
        print(line)


if __name__ == "__main__":
    main()
