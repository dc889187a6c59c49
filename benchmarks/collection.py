"""Where one collected env step's time goes, outside the training loop: ``StepCollector`` + replay write, part by part.

    python benchmarks/collection.py --env Gym-HalfCheetah-v4 --steps 2000

Times ``--steps`` env steps of the lean path that ``MRQDataModule.collect_step`` takes (acting with a fresh
full-size MR.Q policy, the env step, the transition tensordict, ``MRQReplayBuffer.extend``, the episode bookkeeping)
with nothing between the steps, and the same steps of a hand-written loop (the policy's modules called directly, the
gymnasium-level env, the transition stored straight into preallocated numpy arrays: what a minimal loop pays), and
the bare simulator step with random actions. ``--evict MB`` reads that many megabytes between steps, to see the
cost with the cold caches an update leaves behind (the training loop's own split: ``throughput.py``). Prints ms/step
for each part and ``lean - bare <x> ms/step``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Gym-HalfCheetah-v4")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--evict", type=int, default=0, help="MB read between steps (0: warm caches)")
    return p.parse_args()


def lean_path(args, evict) -> dict:
    from mrq_lightning.collector import StepCollector
    from mrq_lightning.data import MRQReplayBuffer
    from mrq_lightning.envs import make_env
    from mrq_lightning.modules.builders import make_acting_policy, make_mrq_networks

    env, info = make_env(args.env, 0)
    nets = make_mrq_networks(info.obs_shape, info.action_dim, discrete=info.discrete, pixels=info.pixels)
    buffer = MRQReplayBuffer(capacity=100_000, obs_shape=info.obs_shape, action_dim=info.action_dim,
                             pixels=info.pixels, history=info.history)  # fmt: skip
    collector = StepCollector(env, make_acting_policy(nets))
    parts = dict.fromkeys(("transition", "replay write", "bookkeeping"), 0.0)
    episode_return = 0.0
    for step in range(args.steps + 200):  # the first 200 warm up
        if step == 200:
            collector.timers = dict.fromkeys(collector.timers, 0.0)
            parts = dict.fromkeys(parts, 0.0)
        evict()
        t0 = time.perf_counter()
        transition = collector.next()
        t1 = time.perf_counter()
        buffer.extend(transition)
        t2 = time.perf_counter()
        episode_return += float(transition.get(("next", "reward")).sum())  # as MRQDataModule.collect_step
        if bool(transition.get(("next", "done")).any()):
            episode_return = 0.0
        t3 = time.perf_counter()
        parts["transition"] += t1 - t0
        parts["replay write"] += t2 - t1
        parts["bookkeeping"] += t3 - t2
    parts["transition"] -= collector.timers["act"] + collector.timers["env"]
    return {"acting": collector.timers["act"], "env step": collector.timers["env"], **parts}


def hand_written(args, evict) -> dict:
    from mrq_lightning.envs import make_gymnasium_env
    from mrq_lightning.modules.builders import make_mrq_networks

    env, info = make_gymnasium_env(args.env, 0)
    nets = make_mrq_networks(info.obs_shape, info.action_dim, discrete=info.discrete, pixels=info.pixels)
    if info.discrete or info.pixels:
        raise SystemExit("the hand-written loop here is for vector observations and continuous actions")
    capacity = 100_000
    store = {"obs": np.zeros((capacity, *info.obs_shape), np.float32), "action": np.zeros((capacity, info.action_dim), np.float32),
             "reward": np.zeros(capacity, np.float32), "not_done": np.zeros(capacity, np.float32)}  # fmt: skip
    parts = dict.fromkeys(("acting", "env step", "store"), 0.0)
    obs, _ = env.reset()
    for step in range(args.steps + 200):
        if step == 200:
            parts = dict.fromkeys(parts, 0.0)
        evict()
        t0 = time.perf_counter()
        with torch.no_grad():
            action = torch.tanh(nets.policy.mlp(nets.encoder.encode_state(torch.from_numpy(obs))))
            action = (action + 0.2 * torch.randn_like(action)).clamp(-1, 1).numpy()
        t1 = time.perf_counter()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        following = env.reset()[0] if terminated or truncated else next_obs
        t2 = time.perf_counter()
        slot = step % capacity
        store["obs"][slot], store["action"][slot] = obs, action
        store["reward"][slot], store["not_done"][slot] = reward, 1.0 - terminated
        obs = following
        t3 = time.perf_counter()
        parts["acting"] += t1 - t0
        parts["env step"] += t2 - t1
        parts["store"] += t3 - t2
    return parts


def main() -> None:
    from throughput import bare_step_ms, prepare

    args = _parse()
    prepare(args.threads)
    block = np.ones(args.evict * 2**20 // 4, dtype=np.float32)
    evict = (lambda: block.sum()) if args.evict else (lambda: None)
    condition = f"{args.evict} MB read between steps" if args.evict else "warm caches"
    bare = bare_step_ms(argparse.Namespace(env=args.env, seed=0), args.steps)
    for name, run in (("lean path (StepCollector + MRQReplayBuffer)", lean_path), ("hand-written loop", hand_written)):
        parts = run(args, evict)
        total = 1000 * sum(parts.values()) / args.steps
        split = ", ".join(f"{k} {1000 * v / args.steps:.3f}" for k, v in parts.items())
        print(f"[{name}, {condition}] {total:.3f} ms/step: {split}")
        if run is lean_path:
            lean = total
    print(f"bare simulator step {bare:.3f} ms/step")
    print(f"lean - bare {lean - bare:.3f} ms/step")


if __name__ == "__main__":
    main()
