"""Evaluation videos: play episodes on a rendering env and hand each frame's views to a sink (algorithm §14).

Framework-free (no Lightning): used by the training callback (TensorBoard / W&B videos), by ``test --video.save_dir``
(mp4 files) and directly from plain TorchRL code. Every preset's gymnasium-level env has ``render_views()``
(view name -> (H, W, 3) uint8 frame) and ``video_fps``; ``make_env(..., render=True)`` builds one that renders.

Encoding uses kept libraries, no hand-written encoder: Pillow for the animated GIFs TensorBoard shows, imageio with
imageio-ffmpeg's bundled ffmpeg for mp4 files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp

from mrq_lightning.evaluation import play_in_parallel, policy_device, policy_rng_fork
from mrq_lightning.third_party import torchrl_wrapped_env

__all__ = ["FrameSink", "NothingToRender", "gif_bytes", "record_episodes", "record_in_parallel", "render_source", "write_mp4"]

FrameSink = Callable[[dict[str, np.ndarray]], None]
GIF_MAX_WIDTH = 160  # pixels: TensorBoard GIFs of larger views are scaled down (size of the event file)
GIF_MAX_FPS = 50  # GIF delays are whole 1/100 s and browsers slow down shorter ones: faster clips drop frames


class NothingToRender(ValueError):
    """The env shows nothing: its first frame after reset has no views (no rgb_array render, no image state)."""

    @classmethod
    def of(cls, source) -> "NothingToRender":
        return cls(f"{type(source).__name__} has no rgb_array render mode and no image observations")


def render_source(env: EnvBase):
    """The gymnasium-level preset inside a TorchRL ``GymWrapper`` (it renders), or ``None`` when it cannot render."""
    base = torchrl_wrapped_env(env) or env
    return base if callable(getattr(base, "render_views", None)) else None


@torch.no_grad()
def record_episodes(
    env: EnvBase,
    policy,
    open_sink: Callable[[int], FrameSink],
    episodes: int = 1,
    *,
    exploration: ExplorationType = ExplorationType.DETERMINISTIC,
    max_steps: int | None = None,
) -> list[tuple[float, int, bool]]:
    """Play ``episodes`` episodes one after another on ``env`` and pass every frame's views to ``open_sink(k)``.

    The acting and the env calls are those of :func:`~mrq_lightning.evaluation.evaluate_policy` (reset, then
    policy and step until done; the torch RNG forked the same way), so on a fresh env built like the evaluation env
    the episodes, and their returns, are the evaluation's. ``max_steps`` stops an episode early (a video length
    cap). Returns ``(return, steps, finished)`` per episode; the first frame is the reset state.
    """
    source = render_source(env)
    if source is None:
        raise ValueError(f"{type(torchrl_wrapped_env(env) or env).__name__} has no render_views(): build it with make_env")
    device = policy_device(policy)
    results = []
    with policy_rng_fork(policy), set_exploration_type(exploration):
        for k in range(episodes):
            sink = open_sink(k)
            td = env.reset()
            views = source.render_views()
            if not views:
                raise NothingToRender.of(source)
            sink(views)
            total, steps, done = 0.0, 0, False
            while not done and (max_steps is None or steps < max_steps):
                td = env.step(policy(td.to(device)).to(env.device))
                total += float(td.get(("next", "reward")).sum())
                steps += 1
                done = bool(td.get(("next", "done")).any())
                sink(source.render_views())
                td = step_mdp(td)
            results.append((total, steps, done))
    return results


def record_in_parallel(
    envs: Sequence[EnvBase],
    policy,
    open_sink: Callable[[int], FrameSink],
    *,
    exploration: ExplorationType = ExplorationType.DETERMINISTIC,
    max_steps: int | None = None,
) -> list[tuple[float, int, bool]]:
    """One episode per env, played side by side as :func:`~mrq_lightning.evaluation.evaluate_in_parallel` plays
    them (so on fresh rendering copies of the parallel protocol's eval envs, the returns are the evaluation's);
    env ``k``'s views go to ``open_sink(k)``. Returns ``(return, steps, finished)`` per episode."""
    counts = [0] * len(envs)

    def counting(k: int) -> FrameSink:
        sink = open_sink(k)

        def take(views):
            if counts[k] == 0 and not views:
                raise NothingToRender.of(render_source(envs[k]))
            counts[k] += 1
            sink(views)

        return take

    if any(render_source(env) is None for env in envs):
        raise ValueError("every env must have render_views(): build them with make_env")
    limit = max_steps if max_steps is not None else 1_000_000
    returns, finished = play_in_parallel(envs, policy, exploration, limit, sinks=[counting(k) for k in range(len(envs))])
    return [(ret, n - 1, done) for ret, n, done in zip(returns, counts, finished)]


def gif_bytes(frames: Sequence[np.ndarray], fps: float, max_width: int = GIF_MAX_WIDTH) -> bytes:
    """An endlessly looping animated GIF of ``frames`` ((H, W, 3) uint8), as TensorBoard shows videos.

    Clips faster than ``GIF_MAX_FPS`` keep every k-th frame. Frames wider than ``max_width`` are scaled down (area
    averaging) and quantised to 256 colours each with Pillow's fast octree: a 500-frame 240x320 camera clip is then
    about 1.5 MB instead of 16 MB (Pillow's default median-cut GIF writer), encoded in a fraction of a second.
    Full-size videos: the mp4 files of ``Mp4Writer``.
    """
    import cv2
    from PIL import Image

    stride = math.ceil(fps / GIF_MAX_FPS)  # e.g. Hopper's 125 fps: every 3rd frame, at 41.7 fps
    frames, fps = frames[::stride], fps / stride
    height, width = frames[0].shape[:2]
    size = (max_width, round(height * max_width / width)) if width > max_width else None
    images = [
        Image.fromarray(cv2.resize(f, size, interpolation=cv2.INTER_AREA) if size else f).quantize(
            colors=256, method=Image.Quantize.FASTOCTREE
        )
        for f in frames
    ]
    # Delays in whole 10 ms (GIF stores 1/100 s), rounded cumulatively: a 15 fps clip alternates 70 and 60 ms and
    # keeps its real-time length.
    ends = [10 * round((k + 1) * 100 / fps) for k in range(len(images))]
    delays = [end - start for start, end in zip([0, *ends[:-1]], ends)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=delays, loop=0)
    return buffer.getvalue()


class Mp4Writer:
    """A sink that appends each frame of one view to an mp4 file (H.264 via imageio-ffmpeg), streaming: a long
    Atari episode is never held in memory."""

    def __init__(self, path: str | Path, fps: float) -> None:
        import imageio.v2 as imageio

        self.path = Path(path)
        # macro_block_size 2: H.264 in yuv420p needs even sides; every preset's view has them (no rescaling).
        self._writer = imageio.get_writer(self.path, fps=fps, codec="libx264", macro_block_size=2, quality=7)

    def append(self, frame: np.ndarray) -> None:
        self._writer.append_data(frame)

    def close(self) -> None:
        self._writer.close()


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Write ``frames`` ((H, W, 3) uint8) to an mp4 file."""
    writer = Mp4Writer(path, fps)
    try:
        for frame in frames:
            writer.append(frame)
    finally:
        writer.close()
    return writer.path
