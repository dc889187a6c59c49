"""Evaluation videos (README "Evaluation videos"): the ``--video.*`` options, always-on callback.

``fit``: after every ``every_n_evals``-th evaluation (the one at env step 0 included) and the final one, one episode
is played on a fresh rendering copy of the evaluation env (seed + 100, algorithm §14) and logged as a video per view
(``eval/video/<view>``: TensorBoard as an animated GIF, W&B as a video) at that env step; with ``save_dir`` also as
mp4 files. The episode draws from a copy of the torch RNG and touches neither the training nor the evaluation env,
so training, evaluation returns and resume are the same with videos on or off.

``test --video.save_dir DIR``: the checkpoint's evaluation episodes are played again on rendering copies of the
evaluation envs (side by side under the parallel protocol, as the test played them) and written as ``DIR/<env>_step<k>_episode<i>_<view>.mp4``; their returns equal the test's.
"""

from __future__ import annotations

import contextlib
import random
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torchrl.envs.utils import ExplorationType

from mrq_lightning.errors import ConfigurationError
from mrq_lightning.third_party import open_tensorboard_file_writer
from mrq_lightning.video import (
    Mp4Writer,
    NothingToRender,
    gif_bytes,
    record_episodes,
    record_in_parallel,
    render_source,
    write_mp4,
)

__all__ = ["EvaluationVideos"]


class EvaluationVideos(Callback):
    """Record evaluation episodes as videos.

    Args:
        every_n_evals: record after every this many evaluations (and after the first and the last); 0 turns videos
            off. At the default 10 a video costs well under 2% of a run (docs/benchmarks.md, "Evaluation videos").
        max_steps: at most this many env steps per logged video (its length; the mp4 files of ``test`` hold whole
            episodes).
        save_dir: also write mp4 files here (``fit``: one per video; ``test``: one per evaluation episode and view).
    """

    def __init__(self, every_n_evals: int = 10, max_steps: int = 1_000, save_dir: str | None = None) -> None:
        if isinstance(every_n_evals, bool) or every_n_evals < 0 or isinstance(max_steps, bool) or max_steps < 1:
            raise ConfigurationError(
                f"--video.every_n_evals must be >= 0 (0: no videos) and --video.max_steps >= 1; got "
                f"every_n_evals={every_n_evals}, max_steps={max_steps}"
            )
        self.every_n_evals = every_n_evals
        self.max_steps = max_steps
        self.save_dir = Path(save_dir).absolute() if save_dir else None
        self.seconds = 0.0  # total wall-clock time spent on videos (rendering, encoding, writing)
        self._seen_eval: int | None = None
        self._unsupported = False

    # ------------------------------------------------------------------ fit
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = getattr(pl_module, "evaluated_at", None)
        if self.every_n_evals == 0 or step is None or step == self._seen_eval or not trainer.is_global_zero:
            return
        self._seen_eval = step
        datamodule = trainer.datamodule
        index = step // datamodule.eval_every
        if step != datamodule.total_steps and index % self.every_n_evals != 0:
            return
        t0 = time.perf_counter()
        frames: dict[str, list] = {}

        def collect(views):
            for name, frame in views.items():
                frames.setdefault(name, []).append(frame)

        recorded = self._record(pl_module, datamodule, lambda _: collect, episodes=1, max_steps=self.max_steps)
        if recorded is None:
            return
        fps = recorded[1]
        for name, clip in frames.items():
            log_video(trainer.loggers, f"eval/video/{name}", clip, fps, step)
            if self.save_dir is not None:
                write_mp4(self._file(datamodule, step, None, name), clip, fps)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        for logger in trainer.loggers:
            logger.log_metrics({"perf/video_seconds": seconds}, step=step)

    # ------------------------------------------------------------------ test
    def on_test_end(self, trainer, pl_module) -> None:
        if self.save_dir is None or not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        step = pl_module.env_steps
        writers: list[dict[str, Mp4Writer]] = []

        def open_sink(episode: int):
            writers.append({})

            def write(views):
                for name, frame in views.items():
                    if name not in writers[-1]:
                        writers[-1][name] = Mp4Writer(self._file(datamodule, step, episode, name), self._fps)
                    writers[-1][name].append(frame)

            return write

        try:
            recorded = self._record(pl_module, datamodule, open_sink, episodes=datamodule.eval_episodes, max_steps=None)
        finally:
            for episode in writers:
                for writer in episode.values():
                    writer.close()
        if recorded is None:
            return
        for k, ((ret, steps, _), episode) in enumerate(zip(recorded[0], writers)):
            files = ", ".join(str(w.path) for w in episode.values())
            rank_zero_info(f"MR.Q test video: episode {k} return {ret:.4f} ({steps} env steps) -> {files}")

    # ------------------------------------------------------------------ shared
    def _record(self, pl_module, datamodule, open_sink, episodes: int, max_steps: int | None):
        """Play ``episodes`` on a fresh rendering copy of the evaluation env: ``(results, fps)``, or ``None`` when
        the env shows nothing or rendering fails (warned once; training goes on without videos)."""
        if self._unsupported:
            return None
        off = "--video.every_n_evals 0" if pl_module.trainer.state.fn == "fit" else "no --video.save_dir"
        was_training = pl_module.training
        # Building, seeding and closing an env may draw from (or, by TorchRL's set_seed convention, reseed) the
        # global random generators: all of them are put back, so training is the same with videos on or off.
        with _random_state_kept(pl_module.device):
            envs = []
            try:
                # test under the parallel protocol: fresh rendering copies of all eval envs, played side by side as
                # the test played them; otherwise one rendering copy of the first eval env (seed + 100).
                parallel = pl_module.trainer.state.fn == "test" and datamodule.eval_protocol == "parallel"
                for seed in datamodule.eval_seeds if parallel else [datamodule.seed + 100]:
                    envs.append(datamodule.make_eval_env(seed, render=True))
                source = render_source(envs[0])
                if source is None:
                    raise NothingToRender(f"{type(envs[0]).__name__} has no render_views()")
                self._fps = source.video_fps
                pl_module.eval()
                policy, rule = pl_module.acting_policy, ExplorationType.DETERMINISTIC
                with torch.autocast(pl_module.device.type, enabled=False):  # fp32, as evaluation
                    if parallel:
                        results = record_in_parallel(envs, policy, open_sink, exploration=rule, max_steps=max_steps)
                    else:
                        results = record_episodes(envs[0], policy, open_sink, episodes, exploration=rule, max_steps=max_steps)
                return results, self._fps
            except NothingToRender as err:
                self._unsupported = True
                rank_zero_warn(
                    f"{datamodule.env_name} cannot render ({err}): no videos. Fix: give the env an rgb_array "
                    f"render mode, or run with {off}."
                )
            except Exception as err:  # a GL backend missing, a render() that raises ...: never stop training
                self._unsupported = True
                rank_zero_warn(f"{datamodule.env_name}: video recording failed, no more videos in this run "
                               f"({type(err).__name__}: {err}). Fix: install what it names, set MUJOCO_GL=egl or osmesa for MuJoCo, or run "
                               f"with {off}.")  # fmt: skip
            finally:
                pl_module.train(was_training)
                for env in envs:
                    env.close()
        return None

    def _file(self, datamodule, step: int, episode: int | None, view: str) -> Path:
        self.save_dir.mkdir(parents=True, exist_ok=True)
        env = re.sub(r"[^A-Za-z0-9._-]+", "_", datamodule.env_name)  # e.g. Gym-my_pkg.envs:MyEnv-v0
        name = f"{env}_step{step}" + (f"_episode{episode}" if episode is not None else "")
        return self.save_dir / f"{name}_{view}.mp4"


def log_video(loggers, tag: str, frames: list, fps: float, step: int) -> None:
    """Log one clip ((H, W, 3) uint8 frames) to every logger that shows videos: TensorBoard (an animated GIF in an
    image summary, what ``SummaryWriter.add_video`` writes; done here because add_video needs moviepy < 2, whose
    ``moviepy.editor`` moviepy 2 removed) and W&B (an mp4). Other loggers (CSV, MLflow) have no video type."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            from tensorboard.compat.proto.summary_pb2 import Summary

            height, width, channels = frames[0].shape
            image = Summary.Image(
                height=height, width=width, colorspace=channels, encoded_image_string=gif_bytes(frames, fps)
            )
            logger.experiment  # noqa: B018 (opens the SummaryWriter if nothing was logged yet)
            open_tensorboard_file_writer(logger).add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        elif isinstance(logger, WandbLogger):
            # An mp4 file (wandb copies it into the run): wandb.Video would need moviepy to encode raw frames.
            with tempfile.TemporaryDirectory() as tmp:
                path = write_mp4(Path(tmp) / f"{tag.replace('/', '_')}.mp4", frames, fps)
                logger.log_video(tag, [str(path)], step=step)


@contextlib.contextmanager
def _random_state_kept(device: torch.device):
    """The torch (CPU and the module's CUDA device), numpy and Python random states are as they were afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
