"""Train MR.Q in a plain TorchRL loop: TorchRL collector, MRQReplayBuffer, MRQUpdater, evaluate_policy, TorchRL's
TensorBoard logger. No Lightning is imported.

    python examples/train_mrq_torchrl.py --env Dmc-cartpole-balance --total_steps 20000
    tensorboard --logdir logs/torchrl

Every agent hyperparameter of algorithm §2.1 is an option (``--batch_size``, ``--hidden_dim`` ...), defaulting
to the paper's value. With the same options and seed this loop produces bit-identical parameters to
``python -m mrq_lightning fit`` on CPU (``tests/test_example.py`` checks it): it seeds, builds and steps in the
same order, with the same update object.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import asdict, fields

import numpy as np
import torch
from torchrl.collectors import Collector
from torchrl.record.loggers import TensorboardLogger

from mrq_lightning.agent import MRQUpdater, Warmup, metric_tag
from mrq_lightning.data import MRQReplayBuffer
from mrq_lightning.envs import make_env
from mrq_lightning.evaluation import evaluate_policy
from mrq_lightning.hyperparameters import MODEL_GROUPS, REPLAY, LossHParams, NetworkHParams, UpdateHParams, pick
from mrq_lightning.modules.builders import make_acting_policy, make_mrq_networks
from mrq_lightning.objectives.mrq_loss import MRQLoss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Dmc-cartpole-balance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="networks and replay buffer (e.g. cuda); envs run on the CPU")
    parser.add_argument("--total_steps", type=int, default=20_000, help="environment steps")
    parser.add_argument("--random_steps", type=int, default=REPLAY.random_steps)
    parser.add_argument("--buffer_capacity", type=int, default=REPLAY.capacity)
    parser.add_argument("--eval_every", type=int, default=5_000)
    parser.add_argument("--eval_episodes", type=int, default=10)
    parser.add_argument("--log_every", type=int, default=1_000)
    parser.add_argument("--logdir", default="logs/torchrl")
    parser.add_argument("--save", help="write the loss module (networks, targets) and updater state to this file")
    for group in MODEL_GROUPS:  # --batch_size, --hidden_dim, ... with the paper's defaults
        for field in fields(group):
            parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    options = vars(args)
    random.seed(args.seed)  # the three seeds Lightning's seed_everything sets
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    env, info = make_env(args.env, args.seed)
    eval_env, _ = make_env(args.env, args.seed + 100, evaluation=True)  # algorithm §14
    nets = make_mrq_networks(info.obs_shape, info.action_dim, discrete=info.discrete, pixels=info.pixels,
                             **asdict(pick(NetworkHParams, options)))  # fmt: skip
    loss = MRQLoss(nets.encoder, nets.critic, nets.policy, num_bins=args.num_bins, **asdict(pick(LossHParams, options)))
    loss.to(args.device)  # moves the networks in place: the optimizers below and the policy see the same parameters
    updater = MRQUpdater(loss, **asdict(pick(UpdateHParams, options)))
    buffer = MRQReplayBuffer(capacity=args.buffer_capacity, obs_shape=info.obs_shape, action_dim=info.action_dim,
                             pixels=info.pixels, history=info.history, device=args.device,
                             **updater.replay_settings())  # fmt: skip
    policy = make_acting_policy(nets, args.exploration_noise)  # TensorDictModule: "observation" -> "action"
    warmup = Warmup(args.random_steps)  # learning starts after the random phase (init_random_frames below)
    collector = Collector(env, policy, frames_per_batch=1, total_frames=args.total_steps,
                          init_random_frames=args.random_steps or None, policy_device=args.device, env_device="cpu",
                          storing_device=args.device, track_traj_ids=False,
                          auto_register_policy_transforms=False)  # fmt: skip
    logger = TensorboardLogger(exp_name=f"{args.env}_seed{args.seed}", log_dir=args.logdir)

    def evaluate(env_step: int) -> float:
        returns = evaluate_policy(eval_env, policy, args.eval_episodes)  # MR.Q's evaluation rule, own RNG copy
        logger.log_scalar("eval/return", sum(returns) / len(returns), step=env_step)
        print(f"env step {env_step:>8}: eval return {sum(returns) / len(returns):8.1f}", flush=True)
        return sum(returns) / len(returns)

    last_eval = evaluate(0) if args.eval_episodes else float("nan")
    episode_return, metrics = 0.0, {}
    for env_step, transition in enumerate(collector, start=1):
        buffer.extend(transition)  # one transition of one env, in time order (algorithm §11)
        episode_return += float(transition["next", "reward"].sum())
        if transition["next", "done"].any():
            logger.log_scalar("train/episode_return", episode_return, step=env_step)
            episode_return = 0.0
        if warmup.learns(env_step, len(buffer)):
            metrics.update(updater.step(buffer))  # encoder burst when due, value + policy update, priorities
        if args.eval_episodes and (env_step % args.eval_every == 0 or env_step == args.total_steps):
            last_eval = evaluate(env_step)
        if env_step % args.log_every == 0:
            for name, value in metrics.items():
                logger.log_scalar(metric_tag(name), float(value), step=env_step)  # "loss/value" as fit
    collector.shutdown()

    if args.save:
        torch.save({"loss_module": loss.state_dict(), "updater": updater.state_dict()}, args.save)
    return {"eval_return": last_eval, "rl_updates": updater.rl_updates}


if __name__ == "__main__":
    main()
