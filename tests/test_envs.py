"""Env presets on real simulators: names, EnvInfo, Gym, DMC proprio and DMC visual (algorithm §13.1-13.3)."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import COLD_IMPORT_TIMEOUT

from mrq_lightning.envs import EnvInfo, make_env, make_gymnasium_env, parse_env_name
from mrq_lightning.envs.dmc_suite import DMC_TASKS, camera_for, check_task

pytestmark = pytest.mark.envs

FORMS = ("Gym-<gymnasium id>", "Dmc-<domain>-<task>", "Dmc-visual-<domain>-<task>", "Atari-<Game>-v5")


# ----------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "name, expected",
    [
        ("Gym-HalfCheetah-v4", ("gym", ("HalfCheetah-v4",), False)),
        ("Gym-ALE/Pong-v5", ("gym", ("ALE/Pong-v5",), False)),
        ("Dmc-cartpole-balance", ("dmc", ("cartpole", "balance"), False)),
        ("Dmc-ball_in_cup-catch", ("dmc", ("ball_in_cup", "catch"), False)),
        ("Dmc-cartpole-balance_sparse", ("dmc", ("cartpole", "balance_sparse"), False)),
        ("Dmc-visual-finger-turn_easy", ("dmc", ("finger", "turn_easy"), True)),
        ("Atari-Pong-v5", ("atari", ("Pong",), True)),
        ("Atari-MontezumaRevenge-v5", ("atari", ("MontezumaRevenge",), True)),
    ],
)
def test_parse_valid_names(name, expected):
    assert tuple(parse_env_name(name)) == expected


@pytest.mark.parametrize(
    "name",
    ["", "HalfCheetah-v4", "gym-HalfCheetah-v4", "Gym-", "Dmc-cartpole", "Dmc-visual-cartpole",
     "Dmc-cartpole-balance-x", "Dmc-visual", "Atari-Pong", "Atari-Pong-v4", "Mujoco-Ant-v4", 3],
)
def test_malformed_names_list_valid_forms(name):
    with pytest.raises(ValueError) as exc:
        make_env(name, 0)
    msg = str(exc.value)
    for form in FORMS:
        assert form in msg


def test_unknown_dmc_domain_and_task_list_valid_choices():
    with pytest.raises(ValueError, match="valid domains") as exc:
        make_env("Dmc-cartpol-balance", 0)
    assert "cartpole" in str(exc.value) and "Dmc-<domain>-<task>" in str(exc.value)
    with pytest.raises(ValueError, match="valid tasks") as exc:
        make_env("Dmc-visual-cartpole-balanc", 0)
    assert "balance_sparse" in str(exc.value) and "swingup" in str(exc.value)


def test_all_28_paper_dmc_tasks_are_known():
    assert len(set(DMC_TASKS)) == 28
    for domain, task in DMC_TASKS:
        check_task(domain, task)


def test_unknown_gym_id_is_a_clear_value_error():
    with pytest.raises(ValueError, match="HalfCheetah") as exc:
        make_env("Gym-HalfCheetahh-v4", 0)
    assert "gymnasium cannot make 'HalfCheetahh-v4'" in str(exc.value)


def _needs_a_missing_package(**kwargs):
    raise gym.error.DependencyNotInstalled('FakePhysics is not installed, run `pip install "fakephysics"`')


def test_gym_id_with_a_missing_package_names_the_install_command():
    from mrq_lightning.errors import EnvironmentSetupError

    gym.register("MRQMissingPackage-v0", entry_point=_needs_a_missing_package)
    try:
        with pytest.raises(EnvironmentSetupError) as exc:
            make_env("Gym-MRQMissingPackage-v0", 0)
    finally:
        gym.registry.pop("MRQMissingPackage-v0")
    message = str(exc.value)
    # gymnasium's own install hint, and no "did you mean" list for an id that exists.
    assert message.startswith("Gym-MRQMissingPackage-v0: ") and 'pip install "fakephysics"' in message
    assert "Close registered ids" not in message


# ----------------------------------------------------------------------------------------------- Gym
def _collect(env, frames=16):
    from torchrl.collectors import Collector

    collector = Collector(env, None, frames_per_batch=frames, total_frames=frames,
                          auto_register_policy_transforms=False)
    batch = next(iter(collector))
    collector.shutdown()
    return batch


def _check_contract(td, n, obs_shape, obs_dtype):
    assert td["observation"].shape == (n, *obs_shape) and td["observation"].dtype == obs_dtype
    assert td["next", "observation"].shape == (n, *obs_shape)
    assert td["next", "reward"].shape == (n, 1) and td["next", "reward"].dtype == torch.float32
    for key in ("terminated", "truncated", "done"):
        assert td["next", key].shape == (n, 1) and td["next", key].dtype == torch.bool
    assert torch.equal(td["next", "done"], td["next", "terminated"] | td["next", "truncated"])


def test_gym_halfcheetah_info_and_collector():
    env, info = make_env("Gym-HalfCheetah-v4", 0)
    assert info == EnvInfo("Gym-HalfCheetah-v4", (17,), 6, False, False, 1, 17, 1.0, 1000)
    td = _collect(env)
    _check_contract(td, 16, (17,), torch.float32)
    act = td["action"]
    assert act.shape == (16, 6) and act.dtype == torch.float32
    assert act.abs().max() <= 1.0 and act.abs().max() > 0.1


def test_gym_seeding_matches_raw_gymnasium():
    raw = gym.make("HalfCheetah-v4")
    raw.reset(seed=5)  # once at construction...
    first = raw.reset()[0]  # ...then the first episode starts from an unseeded reset
    env, _ = make_env("Gym-HalfCheetah-v4", 5)
    np.testing.assert_array_equal(env.reset()["observation"].numpy(), first.astype(np.float32))
    # a seeded reset reproduces a fresh env's first reset; set_seed(s) is that seeded reset
    fresh, _ = make_env("Gym-HalfCheetah-v4", 7)
    first7, second7 = fresh.reset()["observation"], fresh.reset()["observation"]
    assert torch.equal(env.reset(seed=7)["observation"], first7)
    env.set_seed(7)
    assert torch.equal(env.reset()["observation"], second7)


def test_gym_humanoid_scales_actions_by_max_action():
    genv, info = make_gymnasium_env("Gym-Humanoid-v4", 0)
    assert info.max_action == pytest.approx(0.4) and info.action_dim == 17 and info.obs_shape == (376,)
    seen = []
    inner_step = genv.env.step
    genv.env.step = lambda a: (seen.append(np.array(a)), inner_step(a))[1]
    a = np.linspace(-1, 1, 17, dtype=np.float32)
    obs, *_ = genv.step(a)
    np.testing.assert_allclose(seen[0], a * np.float32(info.max_action))
    assert obs.dtype == np.float32 and obs.shape == (376,)


def test_gym_cartpole_is_discrete_one_hot():
    env, info = make_env("Gym-CartPole-v1", 0)
    assert info == EnvInfo("Gym-CartPole-v1", (4,), 2, True, False, 1, 4, 1.0, 500)
    td = _collect(env, 32)
    _check_contract(td, 32, (4,), torch.float32)
    act = td["action"]
    assert act.shape == (32, 2) and act.dtype == torch.int64
    assert torch.equal(act.sum(-1), torch.ones(32, dtype=torch.int64))
    assert set(act.argmax(-1).tolist()) == {0, 1}


class _AsymmetricBoxEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2, 2), np.float64)
    action_space = gym.spaces.Box(np.array([0.0, -3.0]), np.array([2.0, 1.0]), dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros((2, 2)), {}

    def step(self, action):
        self.last_action = np.array(action)
        return np.ones((2, 2)), 1, False, False, {}


def test_gym_asymmetric_bounds_map_affinely_and_obs_is_flat_float32():
    gym.register("MrqTest/Asym-v0", entry_point=_AsymmetricBoxEnv, max_episode_steps=7)
    genv, info = make_gymnasium_env("Gym-MrqTest/Asym-v0", 0)
    assert info == EnvInfo("Gym-MrqTest/Asym-v0", (4,), 2, False, False, 1, 4, 2.0, 7)
    obs, *_ = genv.step(np.array([-1.0, 1.0], np.float32))
    np.testing.assert_allclose(genv.env.unwrapped.last_action, [0.0, 1.0])
    genv.step(np.array([1.0, -1.0], np.float32))
    np.testing.assert_allclose(genv.env.unwrapped.last_action, [2.0, -3.0])
    assert obs.dtype == np.float32 and obs.shape == (4,)


@pytest.mark.parametrize(
    "name", ["Gym-HalfCheetah-v4", "Gym-CartPole-v1", "Dmc-cartpole-balance", "Dmc-visual-cartpole-balance"]
)
def test_torchrl_specs_are_consistent(name):
    from torchrl.envs.utils import check_env_specs

    env, _ = make_env(name, 0)
    check_env_specs(env)


# ----------------------------------------------------------------------------------------------- DMC
def _raw_dmc(domain, task, seed):
    from dm_control import suite

    return suite.load(domain, task, task_kwargs={"random": seed})


def _flat(ts):
    return np.concatenate([np.ravel(v) for v in ts.observation.values()]).astype(np.float32)


def test_dmc_proprio_matches_raw_dm_control_and_truncates_at_500():
    env, info = make_env("Dmc-cartpole-balance", 3)
    assert info == EnvInfo("Dmc-cartpole-balance", (5,), 1, False, False, 1, 5, 1.0, 500)
    td = env.rollout(600, break_when_any_done=True)
    assert td.batch_size == (500,)
    _check_contract(td, 500, (5,), torch.float32)
    assert not td["next", "terminated"].any()
    assert not td["next", "truncated"][:-1].any() and td["next", "truncated"][-1].item()
    actions = td["action"]
    assert actions.dtype == torch.float32 and actions.abs().max() <= 1.0

    raw = _raw_dmc("cartpole", "balance", 3)
    np.testing.assert_array_equal(td["observation"][0].numpy(), _flat(raw.reset()))
    rewards, obs = [], []
    for a in actions.numpy():
        r = 0.0
        for _ in range(2):
            ts = raw.step(a)
            r += ts.reward
        rewards.append(r)
        obs.append(_flat(ts))
    assert ts.last()  # raw env also ends at exactly 1000 physics steps
    np.testing.assert_allclose(td["next", "reward"][:, 0].numpy(), np.array(rewards, np.float32), rtol=0, atol=0)
    np.testing.assert_array_equal(td["next", "observation"].numpy(), np.stack(obs))
    assert float(td["next", "reward"].max()) > 1.0  # one sub-step gives at most 1: two were summed


def test_dmc_seeded_reset_rebuilds_like_fresh_env():
    env, _ = make_env("Dmc-ball_in_cup-catch", 0)
    fresh, _ = make_env("Dmc-ball_in_cup-catch", 11)
    first11, second11 = fresh.reset()["observation"], fresh.reset()["observation"]
    assert not torch.equal(first11, second11)
    assert torch.equal(env.reset(seed=11)["observation"], first11)
    env.set_seed(11)
    assert torch.equal(env.reset()["observation"], second11)


def test_dmc_visual_stacks_renders_once_per_agent_step():
    env, info = make_env("Dmc-visual-cartpole-balance", 1)
    assert info == EnvInfo("Dmc-visual-cartpole-balance", (9, 84, 84), 1, False, True, 3, 3, 1.0, 500)
    genv = env._env  # the gymnasium-level env under GymWrapper
    calls = []
    physics = genv.physics
    render = physics.render
    physics.render = lambda *a, **k: (calls.append(k), render(*a, **k))[1]

    raw = _raw_dmc("cartpole", "balance", 1)
    raw_frame = lambda: raw.physics.render(height=84, width=84, camera_id=0).transpose(2, 0, 1)  # noqa: E731

    td = env.reset()
    obs = td["observation"]
    assert obs.shape == (9, 84, 84) and obs.dtype == torch.uint8
    raw.reset()
    first = raw_frame()
    for i in range(3):  # reset: first frame repeated
        np.testing.assert_array_equal(obs[3 * i: 3 * i + 3].numpy(), first)
    assert len(calls) == 1 and calls[0]["camera_id"] == 0 and calls[0]["height"] == 84

    prev = obs
    for step in range(1, 4):
        action = torch.tensor([0.9 if step % 2 else -0.7])
        td = env.step(td.set("action", action))
        nxt = td["next", "observation"]
        raw.step(action.numpy())
        raw.step(action.numpy())
        assert len(calls) == 1 + step  # one render per agent step, none per physics sub-step
        np.testing.assert_array_equal(nxt[6:9].numpy(), raw_frame())  # newest last
        assert torch.equal(nxt[:6], prev[3:])  # oldest first, shifted by one frame
        td = td["next"].clone()
        prev = nxt
    assert not torch.equal(prev[0:3], prev[6:9])


def test_dmc_visual_camera_choice():
    assert camera_for("quadruped") == 2 and camera_for("walker") == 0
    genv, info = make_gymnasium_env("Dmc-visual-quadruped-walk", 4)
    assert info.obs_shape == (9, 84, 84) and info.action_dim == 12
    obs, _ = genv.reset()
    raw = _raw_dmc("quadruped", "walk", 4)
    raw.reset()
    cam2 = raw.physics.render(height=84, width=84, camera_id=2).transpose(2, 0, 1)
    cam0 = raw.physics.render(height=84, width=84, camera_id=0).transpose(2, 0, 1)
    np.testing.assert_array_equal(obs[6:9], cam2)
    assert not np.array_equal(cam0, cam2)
    # quadruped bounds are not ±1: [-1, 1] actions are rescaled to the actuator ranges
    obs, reward, terminated, truncated, _ = genv.step(np.ones(12, np.float32))
    hi = raw.action_spec().maximum
    assert not np.all(hi == 1.0)
    np.testing.assert_allclose(genv.physics.data.ctrl, hi)
    assert not terminated and not truncated


def test_dmc_visual_without_gl_backend_names_the_fix():
    code = (
        "from mrq_lightning.envs import make_gymnasium_env\n"
        "try:\n"
        "    make_gymnasium_env('Dmc-visual-cartpole-balance', 0)\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
    )
    envvars = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    envvars["MUJOCO_GL"] = "glfw"  # no display here: context creation fails
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=envvars,
                         timeout=COLD_IMPORT_TIMEOUT, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "ERR" in out.stdout, out.stdout + out.stderr
    assert "MUJOCO_GL=egl" in out.stdout and "libosmesa6" in out.stdout


def test_dmc_visual_renders_headless_with_egl_when_mujoco_gl_is_unset():
    code = (
        "import os\n"
        "from mrq_lightning.envs import make_gymnasium_env\n"
        "env, info = make_gymnasium_env('Dmc-visual-cartpole-balance', 0)\n"
        "state, _ = env.reset()\n"
        "print('GL', os.environ['MUJOCO_GL'], state.shape, int(state.max()) > 0)\n"
    )
    envvars = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=envvars,
                         timeout=COLD_IMPORT_TIMEOUT, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "GL egl (9, 84, 84) True" in out.stdout, out.stdout + out.stderr
