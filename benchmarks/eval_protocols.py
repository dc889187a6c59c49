"""How far the parallel evaluation protocol's episodes are from the same seeded episodes played one at a time, with a
trained checkpoint's real networks (where batched matrix products may round differently from single-row ones).

    python benchmarks/eval_protocols.py --ckpt logs/mrq/version_0/checkpoints/last.ckpt --env Dmc-cartpole-balance

Plays ``--episodes`` episodes side by side (``evaluate_in_parallel``, the trainer's default) and each of the same
seeded episodes alone through TorchRL's ``rollout`` (``evaluate_policy`` on a fresh env with that episode's seed),
and prints both returns per episode, their largest difference and the two means. With a batch-invariant policy the
two are equal (tests/test_evaluation.py).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--env", required=True, help="the checkpoint's env")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (eval seed = seed + 100)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    from throughput import prepare

    prepare(args.threads)
    from mrq_lightning.envs import make_env
    from mrq_lightning.evaluation import episode_seeds, evaluate_in_parallel, evaluate_policy
    from mrq_lightning.training import MRQ

    checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    accepted = inspect.signature(MRQ).parameters
    model = MRQ(**{k: v for k, v in checkpoint["hyper_parameters"].items() if k in accepted})
    model.configure_networks(make_env(args.env, 0)[1])
    model.load_state_dict(checkpoint["state_dict"])
    policy = model.eval().acting_policy
    seeds = episode_seeds(args.seed + 100, args.episodes)
    parallel = evaluate_in_parallel([make_env(args.env, s, evaluation=True)[0] for s in seeds], policy)
    alone = [evaluate_policy(make_env(args.env, s, evaluation=True)[0], policy, 1)[0] for s in seeds]
    step = checkpoint.get("mrq", {}).get("env_steps")
    print(f"{args.env}, checkpoint at env step {step}: episode seed, parallel return, alone return, difference")
    for seed, a, b in zip(seeds, parallel, alone):
        print(f"  {seed:>10d} {a:12.4f} {b:12.4f} {a - b:+.3e}")
    worst = max(abs(a - b) for a, b in zip(parallel, alone))
    equal = sum(a == b for a, b in zip(parallel, alone))
    print(f"mean parallel {sum(parallel) / len(parallel):.4f}, alone {sum(alone) / len(alone):.4f}; "
          f"{equal}/{len(seeds)} episodes equal; largest difference {worst:.4g}")


if __name__ == "__main__":
    main()
