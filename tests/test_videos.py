"""Evaluation videos (README "Evaluation videos"): what each preset shows, that playing an episode for a video is the
evaluation's episode and changes nothing else, and the encoders (GIF for TensorBoard, mp4)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import gif_summary

from mrq_lightning.envs import make_env
from mrq_lightning.errors import ConfigurationError
from mrq_lightning.evaluation import evaluate_policy
from mrq_lightning.video import gif_bytes, record_episodes, write_mp4


def _mrq_actor(env_name: str, seed: int = 0, **env_kwargs):
    from mrq_lightning.training import MRQ

    _, info = make_env(env_name, 0, **env_kwargs)
    torch.manual_seed(seed)
    model = MRQ(zs_dim=32, za_dim=16, zsa_dim=32, hidden_dim=32)
    model.configure_networks(info)
    return model.acting_policy


def _collector(store: dict):
    def sink(views):
        for name, frame in views.items():
            store.setdefault(name, []).append(frame)

    return sink


@pytest.mark.envs
def test_a_recorded_episode_is_the_evaluation_episode_and_leaves_the_rng_alone():
    """Atari (discrete: MR.Q's evaluation rule samples actions, so the torch RNG matters): two episodes played for a
    video on a fresh rendering copy of the eval env have the returns evaluate_policy gets on a fresh eval env; the
    caller's torch RNG is left as it was; one (210, 160, 3) screen per env step plus the reset frame."""
    policy = _mrq_actor("Atari-Pong-v5")
    eval_env, _ = make_env("Atari-Pong-v5", 100, evaluation=True, max_frames=400)
    expected = evaluate_policy(eval_env, policy, episodes=2)

    video_env, _ = make_env("Atari-Pong-v5", 100, evaluation=True, render=True, max_frames=400)
    clips: list[dict] = []
    rng_before = torch.get_rng_state()

    def open_sink(episode: int):
        clips.append({})
        return _collector(clips[episode])

    results = record_episodes(video_env, policy, open_sink, episodes=2)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert [r for r, _, _ in results] == expected
    assert [done for _, _, done in results] == [True, True] and [steps for _, steps, _ in results] == [100, 100]
    for clip in clips:
        assert list(clip) == ["screen"] and len(clip["screen"]) == 101
        assert clip["screen"][0].shape == (210, 160, 3) and clip["screen"][0].dtype == np.uint8
    # A step cap ends the clip early (reported as unfinished).
    (capped,) = record_episodes(video_env, policy, lambda k: (lambda views: None), max_steps=7)
    assert capped[1:] == (7, False)


@pytest.mark.envs
def test_dmc_visual_views_are_the_agent_frame_and_the_camera_and_rendering_changes_nothing():
    plain, _ = make_env("Dmc-visual-cartpole-balance", 3)
    rendering, _ = make_env("Dmc-visual-cartpole-balance", 3, render=True)
    source = rendering._env
    td_plain, td_render = plain.reset(), rendering.reset()
    for step in range(4):
        views = source.render_views()
        assert sorted(views) == ["agent_view", "camera"] and views["camera"].shape == (240, 320, 3)
        newest = td_render["observation"][-3:].permute(1, 2, 0).numpy()  # the state's newest 84x84 RGB frame
        np.testing.assert_array_equal(views["agent_view"], newest)
        assert torch.equal(td_plain["observation"], td_render["observation"])
        action = torch.full((1,), 0.5 - 0.3 * step)
        td_plain = plain.step(td_plain.set("action", action))["next"]
        td_render = rendering.step(td_render.set("action", action))["next"]
    assert source.video_fps == pytest.approx(50.0)  # real time: control timestep 0.01 s x action repeat 2


@pytest.mark.envs
def test_gym_views_need_a_render_mode_or_image_observations():
    rendering, _ = make_env("Gym-HalfCheetah-v4", 0, render=True)
    rendering.reset()
    views = rendering._env.render_views()
    assert list(views) == ["render"] and views["render"].shape == (240, 320, 3)
    plain, _ = make_env("Gym-HalfCheetah-v4", 0)
    assert plain._env.render_views() == {}  # built without render=True: nothing is rendered in training
    catch, _ = make_env("Gym-tests.toy_envs:ToyCatch-v0", 0, render=True)  # its constructor takes no render_mode
    td = catch.reset()
    (view,) = catch._env.render_views().values()
    np.testing.assert_array_equal(view, td["observation"][-3:].permute(1, 2, 0).numpy())


def test_gif_for_tensorboard_is_scaled_to_160_wide_and_mp4_keeps_every_frame(tmp_path):
    import imageio.v3 as iio
    from PIL import Image

    rng = np.random.default_rng(0)
    frames = [np.full((240, 320, 3), 10 * t, np.uint8) for t in range(12)]
    frames[3] = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    image = Image.open(io.BytesIO(gif_bytes(frames, fps=25)))
    assert (image.n_frames, image.size, image.info["duration"], image.info["loop"]) == (12, (160, 120), 40, 0)
    image.seek(5)
    assert np.abs(np.asarray(image.convert("RGB")).astype(int) - 50).max() <= 2  # a flat frame stays flat
    small = gif_bytes([np.full((84, 84, 3), v, np.uint8) for v in (0, 0, 9)], fps=20)
    # Narrow views keep their size; an unchanged frame is merged into the one before it, its time kept.
    assert gif_summary(small, fps=20) == (3, (84, 84)) and Image.open(io.BytesIO(small)).n_frames == 2
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=25)
    decoded = iio.imread(path)
    assert decoded.shape == (12, 240, 320, 3)
    assert np.abs(decoded[7].astype(int) - 70).max() <= 3  # H.264 is lossy, but not on a flat frame


def test_gif_delays_keep_real_time_and_fast_clips_drop_frames():
    from PIL import Image

    frames = [np.full((8, 8, 3), 10 * t, np.uint8) for t in range(9)]
    image = Image.open(io.BytesIO(gif_bytes(frames, fps=15)))  # Atari: 66.7 ms per frame
    delays = []
    for index in range(image.n_frames):
        image.seek(index)
        delays.append(image.info["duration"])
    assert delays == [70, 60, 70, 70, 60, 70, 70, 60, 70] and sum(delays) == 600  # 9 frames at 15 fps: 0.6 s
    fast = Image.open(io.BytesIO(gif_bytes(frames, fps=125)))  # Hopper: every 3rd frame, at 41.7 fps
    assert fast.n_frames == 3 and gif_summary(gif_bytes(frames, fps=125), fps=125 / 3) == (3, (8, 8))


@pytest.mark.envs
def test_an_env_that_shows_nothing_is_said_after_its_reset():
    from mrq_lightning.video import NothingToRender

    reach, _ = make_env("Gym-tests.toy_envs:ToyReach-v0", 0, render=True)  # vector state, no render_mode
    with pytest.raises(NothingToRender, match="no rgb_array render mode and no image observations"):
        record_episodes(reach, _mrq_actor("Gym-tests.toy_envs:ToyReach-v0"), lambda k: (lambda views: None))


def test_video_options_are_checked_in_one_line():
    from mrq_lightning.training.videos import EvaluationVideos

    for bad in ({"every_n_evals": -1}, {"max_steps": 0}, {"every_n_evals": True}):
        with pytest.raises(ConfigurationError, match=r"--video.every_n_evals must be >= 0 \(0: no videos\)") as err:
            EvaluationVideos(**bad)
        assert "\n" not in str(err.value)
