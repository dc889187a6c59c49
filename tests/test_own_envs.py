"""A user's own gymnasium environments (tests/toy_envs.py): the ``Gym-<module>:<EnvId>`` form, MR.Q's generic
handling of vector and image observations, Box and Discrete actions, one-line refusals of other spaces, and a smoke
``fit`` through the CLI for each toy env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from conftest import CONFIGS, REPO, run_ok, tensorboard_scalars, tensorboard_videos

from mrq_lightning.envs import make_env
from mrq_lightning.envs.registry import make_gymnasium_env
from mrq_lightning.errors import EnvironmentNameError, EnvironmentSetupError

REACH, CATCH, DICT = (f"Gym-tests.toy_envs:{name}" for name in ("ToyReach-v0", "ToyCatch-v0", "ToyDict-v0"))


@pytest.fixture(autouse=True)
def _importable_from_the_repository_root(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # `tests.toy_envs`, as a user's `my_pkg.envs`


def test_vector_env_with_asymmetric_box_actions():
    env, info = make_env(REACH, 0)
    assert (info.obs_shape, info.action_dim, info.discrete, info.pixels, info.max_episode_steps) == ((2,), 2, False, False, 50)
    inner, _ = make_gymnasium_env(REACH, 0)
    before = inner.env.unwrapped.x.copy()
    inner.step(np.array([-1.0, 1.0], np.float32))  # [-1, 1] maps affinely onto [0, 2]: the env sees [0, 2]
    assert np.allclose(inner.env.unwrapped.x, np.clip(before + 0.2 * np.array([-1.0, 1.0]), -1, 1))
    rollout = env.rollout(60, break_when_any_done=True)
    assert rollout["observation"].dtype == torch.float32 and rollout.shape[0] == 50  # the 50-step time limit
    assert rollout["next", "truncated"][-1].item() and not rollout["next", "terminated"].any()


def test_image_env_is_resized_and_stacked_like_dmc_visual():
    env, info = make_env(CATCH, 0)
    assert (info.obs_shape, info.history, info.frame_channels, info.pixels, info.discrete) == ((9, 84, 84), 3, 3, True, True)
    rollout = env.rollout(10, break_when_any_done=True)
    obs = rollout["observation"]
    assert obs.dtype == torch.uint8 and rollout.shape[0] == 7  # the ball falls 7 rows, then the episode terminates
    assert torch.equal(obs[0, :3], obs[0, 3:6]) and torch.equal(obs[0, 3:6], obs[0, 6:])  # first state: 3 copies
    assert torch.equal(obs[1, :6], obs[0, 3:]) and not torch.equal(obs[1, 6:], obs[0, 6:])  # oldest frame first
    assert rollout["next", "terminated"][-1].item() and rollout["next", "reward"][-1].abs().item() == 1.0


def test_an_env_without_a_state_api_reports_no_state():
    # The toy env keeps its state in attributes of its own: a resumed run starts a new episode (README).
    inner, _ = make_gymnasium_env(CATCH, 0)
    inner.reset()
    inner.step(1)
    assert inner.get_state() is None


def test_unsupported_spaces_are_refused_in_one_line():
    with pytest.raises(EnvironmentSetupError) as err:
        make_env(DICT, 0)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{DICT}: unsupported observation space Dict(")
    assert "MR.Q supports observations: a Box of numbers (vector) or a uint8 0-255 Box image" in message


@pytest.mark.slow
@pytest.mark.parametrize("env, budget", [(REACH, 600), (CATCH, 200)])  # pixel updates cost more: a shorter run
def test_smoke_fit_on_an_own_env(env, budget, tmp_path):
    proc = run_ok(["fit", "--config", str(CONFIGS / "gym.yaml"), "--config", str(CONFIGS / "smoke.yaml"),
                   "--data.env", env, "--data.total_steps", str(budget), "--trainer.default_root_dir", str(tmp_path),
                   "--progress_bar.refresh_rate", "0", "--video.every_n_evals", "1", "--video.max_steps", "20"], REPO)  # fmt: skip
    run_dir = tmp_path / "logs" / "mrq" / "version_0"
    scalars = tensorboard_scalars(run_dir)
    evaluations = sorted({*range(0, budget + 1, 300), budget})  # every 300 env steps and at the end
    assert [step for step, _ in scalars["eval/return"]] == evaluations
    assert scalars["buffer/size"][-1][0] == budget and "loss/value" in scalars and "loss/encoder" in scalars
    videos = tensorboard_videos(run_dir)
    if env == CATCH:  # image observations: the agent's 84x84 view (the env itself cannot render)
        assert sorted(videos) == ["eval/video/agent_view"]
        assert [step for step, _ in videos["eval/video/agent_view"]] == evaluations
    else:  # vector observations and no rgb_array render mode: nothing to show, said once
        assert videos == {} and proc.stderr.count(f"{env} cannot render") == 1


class _ReusedChannelsFirstFrames(gym.Env):
    """Channels-first 84x84 RGB frames written into one buffer that the env refills every step (value = step)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, (3, 84, 84), np.uint8)
        self.action_space = spaces.Discrete(2)
        self.buffer = np.zeros((3, 84, 84), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.buffer[:] = 0
        return self.buffer, {}

    def step(self, action):
        self.t += 1
        self.buffer[:] = self.t
        return self.buffer, 0.0, self.t == 5, False, {}


def test_channels_first_frames_in_a_reused_buffer_are_stacked_by_value():
    if "ToyReusedFrames-v0" not in gym.registry:
        gym.register("ToyReusedFrames-v0", entry_point=_ReusedChannelsFirstFrames)
    env, info = make_gymnasium_env("Gym-ToyReusedFrames-v0", 0)
    assert (info.obs_shape, info.frame_channels, info.pixels) == ((9, 84, 84), 3, True)
    env.reset()
    for _ in range(2):
        obs, *_ = env.step(0)
    assert [int(obs[3 * i : 3 * i + 3].mean()) for i in range(3)] == [0, 1, 2]  # not [2, 2, 2]: frames are copied


def test_a_missing_module_is_one_line():
    with pytest.raises(EnvironmentNameError) as err:
        make_env("Gym-no_such_pkg.envs:MyEnv-v0", 0)
    assert "\n" not in str(err.value) and "cannot import 'no_such_pkg.envs' (No module named 'no_such_pkg'" in str(err.value)


# ---------------------------------------------------------------------- the class_path form (envs/custom.py)
REACH_CLASS = {"class_path": "tests.toy_envs.ToyReach", "init_args": {"step_size": 0.1}, "max_episode_steps": 40}
CARTPOLE_TORCHRL = {"class_path": "tests.toy_envs.make_torchrl_cartpole"}


def test_class_path_gymnasium_class_gets_the_gym_handling_with_its_init_args():
    env, info = make_env(REACH_CLASS, 5)
    assert info.name == "Custom-tests.toy_envs.ToyReach(step_size=0.1, max_episode_steps=40)"
    assert (info.obs_shape, info.action_dim, info.discrete, info.max_episode_steps) == ((2,), 2, False, 40)
    inner = env._env.env.unwrapped
    assert inner.step_size == 0.1
    rollout = env.rollout(100, break_when_any_done=True)
    assert rollout.shape == (40,) and rollout["next", "truncated"][-1].item()  # the time limit truncates
    assert not rollout["next", "terminated"].any()
    # Seeded like a preset: the same seed gives the same first observation, another seed another one.
    first = make_env(REACH_CLASS, 5)[0].reset()["observation"]
    assert torch.equal(first, make_env(REACH_CLASS, 5)[0].reset()["observation"])
    assert not torch.equal(first, make_env(REACH_CLASS, 6)[0].reset()["observation"])


def test_class_path_torchrl_factory_is_used_as_it_is_and_seeded():
    env, info = make_env(CARTPOLE_TORCHRL, 3)
    assert info == make_env(CARTPOLE_TORCHRL, 4)[1]
    assert (info.obs_shape, info.action_dim, info.discrete, info.pixels) == ((4,), 2, True, False)
    again, _ = make_env(CARTPOLE_TORCHRL, 3)
    assert torch.equal(env.reset()["observation"], again.reset()["observation"])
    from mrq_lightning.envs.state import get_env_state

    assert get_env_state(make_env({**CARTPOLE_TORCHRL, "max_episode_steps": 9}, 0)[0]) is None  # no state API
    limited, _ = make_env({**CARTPOLE_TORCHRL, "max_episode_steps": 3}, 0)
    assert limited.rollout(10, break_when_any_done=True).shape[0] <= 3


@pytest.mark.parametrize(
    "env, message",
    [
        ({"class_path": "tests.toy_envs.ToyReach", "init": {}}, "data.env as a mapping takes class_path (module.Name)"),
        ({"class_path": "tests.toy_envs.NoSuchEnv"}, "class_path 'tests.toy_envs.NoSuchEnv' cannot be imported"),
        ({"class_path": "no_such_pkg.Env"}, "class_path 'no_such_pkg.Env' cannot be imported"),
        ({**REACH_CLASS, "max_episode_steps": 0}, "max_episode_steps a positive integer"),
        ({"class_path": "tests.toy_envs.REACH_LIMIT"}, "is not a class or function"),
    ],
)
def test_class_path_mistakes_are_one_line_before_any_env_starts(env, message):
    from mrq_lightning.training import MRQDataModule

    with pytest.raises(EnvironmentNameError) as err:
        MRQDataModule(env=env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_class_path_targets_outside_the_contract_are_refused_in_one_line():
    with pytest.raises(EnvironmentSetupError) as err:
        make_env({"class_path": "tests.toy_envs.make_torchrl_pendulum"}, 0)
    assert str(err.value).startswith(
        "Custom-tests.toy_envs.make_torchrl_pendulum: action spec BoundedContinuous (1,) in [-2, 2]. MR.Q needs")
    with pytest.raises(EnvironmentSetupError, match="returned a float, not a gymnasium.Env or a TorchRL EnvBase"):
        make_env({"class_path": "tests.toy_envs.not_an_env"}, 0)
    with pytest.raises(EnvironmentSetupError, match="is a TorchRL env: build it with make_env"):
        make_gymnasium_env(CARTPOLE_TORCHRL, 0)


@pytest.mark.slow
@pytest.mark.parametrize("env", [REACH_CLASS, CARTPOLE_TORCHRL], ids=["gymnasium-class", "torchrl-factory"])
def test_smoke_fit_with_a_class_path_env_from_yaml(env, tmp_path):
    import yaml

    config = tmp_path / "env.yaml"
    config.write_text(yaml.safe_dump({"data": {"init_args": {"env": env}}}))
    run_ok(["fit", "--config", str(CONFIGS / "gym.yaml"), "--config", str(CONFIGS / "smoke.yaml"), "--config",
            str(config), "--data.total_steps", "300", "--trainer.default_root_dir", str(tmp_path),
            "--progress_bar.refresh_rate", "0"], REPO)  # fmt: skip
    scalars = tensorboard_scalars(tmp_path / "logs" / "mrq" / "version_0")
    assert [step for step, _ in scalars["eval/return"]] == [0, 300] and "loss/value" in scalars
    saved = yaml.safe_load((tmp_path / "logs" / "mrq" / "version_0" / "config.yaml").read_text())
    assert saved["data"]["init_args"]["env"] == env  # the run's config keeps the mapping as written
