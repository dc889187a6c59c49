"""What evaluation videos cost in a default-config run, measured in one process on this machine.

    python benchmarks/video_cost.py --env Dmc-cheetah-run

Measures, with MR.Q's full-size networks:

* one video as the ``fit`` callback makes it: a fresh rendering copy of the evaluation env, one episode (at most
  ``--max_steps`` env steps) with every view rendered, GIF encoding, written to a TensorBoard event file;
* one evaluation (``eval_episodes`` episodes of the preset, played side by side as the trainer does by default);
* training env steps per second after the random phase (the Lightning path of ``benchmarks/throughput.py``).

and prints the share of a whole default run that videos take at the default cadence (a video after every 10th
evaluation and after the last), e.g. for DMC: 500k env steps, evaluations every 5k, 11 videos:

    video cost <percent>% of a default run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PRESETS = {  # (total steps, random steps, eval every, eval episodes): configs/<benchmark>.yaml
    "Dmc": (500_000, 10_000, 5_000, 10),
    "Gym": (1_000_000, 10_000, 5_000, 10),
    "Atari": (2_500_000, 10_000, 100_000, 10),
}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Dmc-cheetah-run")
    p.add_argument("--every_n_evals", type=int, default=10, help="the video cadence (default: the option's default)")
    p.add_argument("--max_steps", type=int, default=1000, help="env steps per video (default: the option's default)")
    p.add_argument("--train_steps", type=int, default=250, help="timed training env steps (whole 250-step cycles)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def time_video(env_name: str, policy, max_steps: int) -> tuple[float, int]:
    """Seconds for one video as training/videos.py makes it, and its length in env steps."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from mrq_lightning.envs import make_env
    from mrq_lightning.training.videos import log_video
    from mrq_lightning.video import record_episodes, render_source

    with tempfile.TemporaryDirectory() as tmp:
        logger = TensorBoardLogger(tmp, name="video_cost")
        t0 = time.perf_counter()
        env, _ = make_env(env_name, 100, evaluation=True, render=True)
        frames: dict[str, list] = {}

        def collect(views):
            for name, frame in views.items():
                frames.setdefault(name, []).append(frame)

        ((_, steps, _),) = record_episodes(env, policy, lambda _: collect, max_steps=max_steps)
        for name, clip in frames.items():
            log_video([logger], f"eval/video/{name}", clip, render_source(env).video_fps, 0)
        logger.experiment.flush()
        env.close()
        return time.perf_counter() - t0, steps


def main() -> None:
    args = _parse()
    from throughput import prepare, run_lightning, whole_cycles

    prepare(args.threads)

    from mrq_lightning.envs import make_env
    from mrq_lightning.evaluation import episode_seeds, evaluate_in_parallel
    from mrq_lightning.training import MRQ

    total, random_steps, eval_every, eval_episodes = PRESETS[args.env.split("-")[0]]
    _, info = make_env(args.env, 0)
    model = MRQ()
    model.configure_networks(info)
    policy = model.acting_policy

    video_s, video_steps = time_video(args.env, policy, args.max_steps)
    eval_envs = [make_env(args.env, seed, evaluation=True)[0] for seed in episode_seeds(100, eval_episodes)]
    t0 = time.perf_counter()
    evaluate_in_parallel(eval_envs, policy)  # the default (parallel) evaluation protocol
    eval_s = time.perf_counter() - t0

    timed = whole_cycles(args.train_steps)
    train = run_lightning(argparse.Namespace(env=args.env, seed=0, warmup=1000, device="cpu", precision="32-true",
                                             compile=False, collector="lean"), timed)
    train_rate = train["steps"] / train["wall"]

    evaluations = total // eval_every + 1  # at 0, every eval_every, and the last at `total`
    videos = len({i for i in range(evaluations) if i % args.every_n_evals == 0} | {evaluations - 1})
    run_s = (total - random_steps) / train_rate + evaluations * eval_s  # random-phase steps are ~free next to these
    print(f"{args.env}: one video ({video_steps} env steps, rendered, encoded, written) {video_s:.2f} s; one evaluation "
          f"({eval_episodes} episodes) {eval_s:.2f} s; training {train_rate:.2f} env steps/s")
    print(f"default run: {total:,} env steps, {evaluations} evaluations ({evaluations * eval_s / 3600:.2f} h), "
          f"{videos} videos every {args.every_n_evals} evaluations ({videos * video_s:.0f} s), run {run_s / 3600:.1f} h")
    print(f"video cost {100 * videos * video_s / run_s:.3f}% of a default run")
    per_interval = args.every_n_evals * (eval_every / train_rate + eval_s)
    print(f"per video interval: {100 * video_s / per_interval:.3f}% (a video every {args.every_n_evals * eval_every:,} "
          "env steps)")


if __name__ == "__main__":
    main()
