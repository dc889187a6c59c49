"""Training throughput of the real Lightning + TorchRL path, with a breakdown and a plain-loop baseline.

    python benchmarks/throughput.py --env Gym-HalfCheetah-v4 --steps 250 --warmup 1000

Runs ``MRQ`` + ``MRQDataModule`` under a Lightning ``Trainer`` exactly as ``python -m mrq_lightning fit`` does
(full-size networks, batch 256), but with a shortened random warm-up and no evaluation. After the warm-up it
times ``--steps`` env steps (rounded up to whole 250-step cycles, so every encoder burst is included) and prints

    steps/s <number>

followed by the time split: env + collector, replay sampling, encoder updates, value + policy updates, and the
framework overhead (everything else: Lightning's loop and optimizer wrappers, logging, bookkeeping).

``--baseline`` also runs the same updates in a hand-written PyTorch loop (raw gymnasium env, the same buffer and
loss, ``torch.optim`` directly, no Lightning, no collector) in the same process, and prints the ratio.

    python benchmarks/throughput.py --env Dmc-cheetah-run --eval [--sequential] [--baseline]

times the evaluation path instead: ``MRQDataModule.evaluate`` with a fresh full-size MR.Q policy, ``--episodes``
episodes (default 10) under the parallel protocol (``--sequential``: the official one-env protocol through
TorchRL's ``rollout``), and prints ``eval steps/s <number>``. ``--baseline`` adds, in the same run, the sequential
protocol and the official code's kind of loop (one gymnasium env, one batch-1 policy forward per step, episodes one
after another), with the ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Gym-HalfCheetah-v4")
    p.add_argument("--steps", type=int, default=250, help="timed env steps (rounded up to whole 250-step cycles)")
    p.add_argument("--warmup", type=int, default=1000, help="random env steps before learning starts")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--baseline", action="store_true", help="also time a plain PyTorch loop with the same updates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="--model.compile true (the first cycle compiles, untimed)")
    p.add_argument("--collector", default="lean", choices=["lean", "torchrl"], help="data.collector")
    p.add_argument("--eval", action="store_true", help="time the evaluation path instead of training")
    p.add_argument("--sequential", action="store_true", help="--eval: the official sequential protocol")
    p.add_argument("--episodes", type=int, default=10, help="--eval: episodes per evaluation")
    return p.parse_args()


class _Window:
    """Snapshots of the module/datamodule timers at the start and end of the timed window."""

    def __init__(self, warmup: int, timed: int) -> None:
        self.warmup, self.timed = warmup, timed
        self.start = self.end = None

    def snapshot(self, module, datamodule):
        parts = getattr(datamodule.collector, "timers", {})  # StepCollector: acting and the env's own step
        return dict(module.timers, collect=datamodule.collect_time, wall=time.perf_counter(),
                    **{f"collect_{k}": v for k, v in parts.items()})  # fmt: skip


def run_lightning(args, timed_steps: int) -> dict:
    import lightning.pytorch as pl

    from mrq_lightning.training import MRQ, MRQDataModule

    window = _Window(args.warmup, timed_steps)
    first = args.warmup + (250 if args.compile else 0)  # compiled: one untimed cycle compiles every loss

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            # batch = env-step index; the step with index == warmup is the first with an RL update.
            if batch == first:
                window.start = window.snapshot(module, trainer.datamodule)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch == first + timed_steps - 1:
                window.end = window.snapshot(module, trainer.datamodule)

    model = MRQ(log_every_n_env_steps=10**9, compile=args.compile)
    data = MRQDataModule(
        env=args.env,
        seed=args.seed,
        total_steps=first + timed_steps,
        random_steps=args.warmup,
        eval_episodes=0,
        eval_every=10**9,
        buffer_capacity=max(100_000, 2 * (args.warmup + timed_steps)),
        collector=args.collector,
    )
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Timer()],
    )
    trainer.fit(model, datamodule=data)
    start, end = window.start, window.end
    delta = {k: end[k] - start[k] for k in start}
    wall = delta.pop("wall")
    # The first timed step also contains its own env step, taken before on_train_batch_start: close enough,
    # the window holds `timed_steps` env steps and `timed_steps` RL updates.
    return {"wall": wall, "steps": timed_steps, **delta}


def run_plain(args, timed_steps: int) -> dict:
    """The same updates in a hand-written loop: raw gymnasium env, plain optimizers, no Lightning, no collector."""
    from tensordict import TensorDict

    from mrq_lightning.data import MRQReplayBuffer
    from mrq_lightning.envs import make_gymnasium_env
    from mrq_lightning.modules.builders import make_mrq_networks
    from mrq_lightning.objectives.mrq_loss import MRQLoss

    torch.manual_seed(args.seed)
    env, info = make_gymnasium_env(args.env, args.seed)
    nets = make_mrq_networks(info.obs_shape, info.action_dim, discrete=info.discrete, pixels=info.pixels)
    loss = MRQLoss(nets.encoder, nets.critic, nets.policy)
    opts = [
        torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=1e-4)
        for m, lr in ((nets.encoder, 1e-4), (nets.critic, 3e-4), (nets.policy, 3e-4))
    ]
    buffer = MRQReplayBuffer(
        capacity=max(100_000, 2 * (args.warmup + timed_steps)),
        obs_shape=info.obs_shape,
        action_dim=info.action_dim,
        pixels=info.pixels,
        history=info.history,
    )
    obs, _ = env.reset()
    t = {"collect": 0.0, "sample": 0.0, "encoder": 0.0, "rl": 0.0, "collect_act": 0.0, "collect_env": 0.0}
    updates = 0
    start = None
    for step in range(args.warmup + timed_steps):
        if step == args.warmup:
            start = time.perf_counter()
            t = dict.fromkeys(t, 0.0)
        c0 = time.perf_counter()
        obs_t = torch.as_tensor(obs)
        if step < args.warmup:
            action = torch.rand(info.action_dim) * 2 - 1
        else:
            with torch.no_grad():
                action = torch.tanh(nets.policy.mlp(nets.encoder.encode_state(obs_t)))
                action = (action + 0.2 * torch.randn_like(action)).clamp(-1, 1)
        a1 = time.perf_counter()
        next_obs, reward, terminated, truncated, _ = env.step(action.numpy())
        if terminated or truncated:
            following = env.reset()[0]
        a2 = time.perf_counter()
        t["collect_act"] += a1 - c0
        t["collect_env"] += a2 - a1
        buffer.extend(
            TensorDict(
                {
                    "observation": obs_t,
                    "action": action,
                    ("next", "observation"): torch.as_tensor(next_obs),
                    ("next", "reward"): torch.tensor([reward], dtype=torch.float32),
                    ("next", "terminated"): torch.tensor([terminated]),
                    ("next", "truncated"): torch.tensor([truncated]),
                    ("next", "done"): torch.tensor([terminated or truncated]),
                },
                [],
            ).unsqueeze(0)
        )
        obs = following if terminated or truncated else next_obs
        t["collect"] += time.perf_counter() - c0
        if step < args.warmup:
            continue
        if updates % 250 == 0:
            e0 = time.perf_counter()
            loss.sync_targets(buffer.reward_scale())
            enc_sample = 0.0
            for _ in range(250):
                s0 = time.perf_counter()
                batch = buffer.sample(256, horizon=5, include_intermediate=True)
                enc_sample += time.perf_counter() - s0
                enc_loss, _ = loss.encoder_loss(batch, buffer.env_terminates)
                opts[0].zero_grad(set_to_none=True)
                enc_loss.backward()
                opts[0].step()
            t["sample"] += enc_sample
            t["encoder"] += time.perf_counter() - e0 - enc_sample
        s0 = time.perf_counter()
        batch = buffer.sample(256, horizon=3)
        r0 = time.perf_counter()
        t["sample"] += r0 - s0
        value_loss, _ = loss.value_loss(batch)
        opts[1].zero_grad(set_to_none=True)
        value_loss.backward()
        torch.nn.utils.clip_grad_norm_(nets.critic.parameters(), 20.0)
        opts[1].step()
        policy_loss, _ = loss.actor_loss(batch)
        opts[2].zero_grad(set_to_none=True)
        policy_loss.backward()
        opts[2].step()
        buffer.update_priority(batch["index"], batch["priority"])
        updates += 1
        t["rl"] += time.perf_counter() - r0
    wall = time.perf_counter() - start
    return {"wall": wall, "steps": timed_steps, **t}


class _CountingPolicy:
    """Counts the env steps a policy acts for (rows of its observation batch), whatever the protocol."""

    def __init__(self, policy) -> None:
        self.policy, self.steps = policy, 0

    def parameters(self):
        return self.policy.parameters()

    def __call__(self, td):
        self.steps += td.batch_size.numel()
        return self.policy(td)


def _fresh_policy(env_info):
    from mrq_lightning.training import MRQ

    model = MRQ()
    model.configure_networks(env_info)
    return model.eval().acting_policy


def run_eval(args) -> float:
    """Env steps/s of ``MRQDataModule.evaluate`` (the trainer's evaluation) with a fresh MR.Q policy."""
    from mrq_lightning.training import MRQDataModule

    protocol = "sequential" if args.sequential else "parallel"
    data = MRQDataModule(env=args.env, seed=args.seed, eval_episodes=args.episodes, eval_protocol=protocol,
                         buffer_capacity=1000, random_steps=0)  # fmt: skip
    data.setup("fit")
    policy = _CountingPolicy(_fresh_policy(data.env_info))
    start = time.perf_counter()
    returns = data.evaluate(policy)
    wall = time.perf_counter() - start
    print(f"[{protocol} evaluation] {len(returns)} episodes, {policy.steps} env steps in {wall:.2f} s")
    return policy.steps / wall


def run_eval_plain(args) -> float:
    """The official code's kind of evaluation loop: one gymnasium env, one batch-1 forward per step."""
    from tensordict import TensorDict
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    from mrq_lightning.envs import make_gymnasium_env

    env, info = make_gymnasium_env(args.env, args.seed + 100, evaluation=True)
    policy = _fresh_policy(info)
    steps, start = 0, time.perf_counter()
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(args.episodes):
            obs, done = env.reset()[0], False
            while not done:
                action = policy(TensorDict(observation=torch.as_tensor(obs)))["action"]
                action = action.argmax().numpy() if info.discrete else action.numpy()
                obs, _, terminated, truncated, _ = env.step(action)
                done, steps = terminated or truncated, steps + 1
    wall = time.perf_counter() - start
    print(f"[plain loop evaluation] {args.episodes} episodes, {steps} env steps in {wall:.2f} s")
    return steps / wall


def bare_step_ms(args, steps: int = 2000) -> float:
    """The simulator's own step (the gymnasium-level preset, random actions): what collection cannot go below."""
    import numpy as np

    from mrq_lightning.envs import make_gymnasium_env

    env, _ = make_gymnasium_env(args.env, args.seed)
    env.reset()
    actions = [env.action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(np.asarray(action))
        if terminated or truncated:
            env.reset()
    return 1000 * (time.perf_counter() - start) / steps


def _report(name: str, r: dict) -> float:
    wall, steps = r["wall"], r["steps"]
    rate = steps / wall
    parts = {
        "env + collector": r["collect"],
        "replay sampling": r["sample"],
        "encoder updates": r["encoder"],
        "value + policy updates": r["rl"],
    }
    overhead = wall - sum(parts.values())
    print(f"[{name}] {steps} env steps in {wall:.2f} s")
    for k, v in parts.items():
        print(f"  {k:<24s} {1000 * v / steps:8.2f} ms/step  {100 * v / wall:5.1f}%")
    print(f"  {'framework overhead':<24s} {1000 * overhead / steps:8.2f} ms/step  {100 * overhead / wall:5.1f}%")
    if "collect_env" in r:
        act, env = r["collect_act"], r["collect_env"]
        rest = r["collect"] - act - env
        print(f"  env + collector split: acting {1000 * act / steps:.2f}, env step/reset {1000 * env / steps:.2f}, "
              f"transition + replay write + bookkeeping {1000 * rest / steps:.2f} ms/step")
    return rate


def prepare(threads: int) -> None:
    """The common start of the benchmark scripts: Lightning quiet, headless MuJoCo, ``threads`` torch threads."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    os.environ.setdefault("MUJOCO_GL", "egl")
    torch.set_num_threads(threads)


def whole_cycles(steps: int) -> int:
    """``steps`` rounded up to whole 250-step cycles (each holds one encoder burst), at least one."""
    return max(250, -(-steps // 250) * 250)


def main() -> None:
    args = _parse()
    prepare(args.threads)
    if args.eval:
        rate = run_eval(args)
        if args.baseline:
            if not args.sequential:
                sequential = run_eval(argparse.Namespace(**{**vars(args), "sequential": True}))
                print(f"sequential eval steps/s {sequential:.0f}; ratio parallel/sequential {rate / sequential:.2f}")
            base = run_eval_plain(args)
            print(f"plain loop eval steps/s {base:.0f}; ratio ours/plain {rate / base:.2f}")
        print(f"eval steps/s {rate:.0f}")
        return
    timed = whole_cycles(args.steps)
    result = run_lightning(args, timed)
    rate = _report(f"lightning, {args.collector} collector", result)
    bare = bare_step_ms(args)
    print(f"  bare simulator step {bare:.2f} ms/step; env + collector - bare = {1000 * result['collect'] / timed - bare:.2f} ms/step")
    if args.baseline:
        base = _report("plain loop", run_plain(args, timed))
        print(f"ratio lightning/plain {rate / base:.3f}")
    print(f"steps/s {rate:.2f}")


if __name__ == "__main__":
    main()
