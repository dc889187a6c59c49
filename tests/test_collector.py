"""``StepCollector`` (mrq_lightning/collector.py) against TorchRL's ``Collector`` as the trainer configured it: the
same transitions bit for bit (random phase, acting with exploration noise, episode ends) and the same torch RNG."""

from __future__ import annotations

import pytest
import torch
from torchrl.collectors import Collector, BaseCollector

import tests.toy_envs  # noqa: F401 (registers ToyCatch-v0, a discrete pixel env)
from mrq_lightning.collector import StepCollector, supports
from mrq_lightning.envs import make_env
from mrq_lightning.envs.custom import custom_env_spec
from mrq_lightning.modules.builders import make_acting_policy, make_mrq_networks

RANDOM_STEPS, STEPS = 25, 260


def _policy(info):
    torch.manual_seed(11)
    nets = make_mrq_networks(info.obs_shape, info.action_dim, discrete=info.discrete, pixels=info.pixels,
                             zs_dim=32, za_dim=16, zsa_dim=32, hidden_dim=32)  # fmt: skip
    return make_acting_policy(nets)


def _stream(name: str, lean: bool):
    env, info = make_env(name, 4)
    policy = _policy(info)
    torch.manual_seed(5)
    if lean:
        collector = StepCollector(env, policy)
    else:
        collector = Collector(env, policy, frames_per_batch=1, total_frames=-1, track_traj_ids=False,
                              auto_register_policy_transforms=False)  # fmt: skip
    iterator = iter(collector)
    transitions = []
    for step in range(STEPS):
        collector.init_random_frames = float("inf") if step < RANDOM_STEPS else 0  # the trainer's switch
        transitions.append(next(iterator))
    return transitions, torch.get_rng_state()


KEYS = ["observation", "action", ("next", "observation"), ("next", "reward"), ("next", "terminated"),
        ("next", "truncated"), ("next", "done")]  # fmt: skip


@pytest.mark.parametrize("name", ["Gym-Pendulum-v1", "Gym-CartPole-v1", "Gym-ToyCatch-v0"])
def test_step_collector_yields_the_torchrl_collectors_transitions_and_rng(name):
    """Pendulum: continuous, 200-step truncations; CartPole: discrete, terminations; ToyCatch: uint8 frame stacks."""
    lean, lean_rng = _stream(name, lean=True)
    reference, reference_rng = _stream(name, lean=False)
    for step, (mine, theirs) in enumerate(zip(lean, reference)):
        assert mine.batch_size == theirs.batch_size == torch.Size([1])
        for key in KEYS:
            a, b = mine.get(key), theirs.get(key)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (step, key)
    assert torch.equal(lean_rng, reference_rng)
    dones = sum(bool(t["next", "done"]) for t in lean)
    assert dones >= 1  # episode ends (and the resets after them) were compared


def test_step_collector_is_a_torchrl_collector_and_refuses_other_envs():
    env, info = make_env("Gym-Pendulum-v1", 0)
    collector = StepCollector(env, _policy(info))
    assert isinstance(collector, BaseCollector) and supports(env)
    first = collector.carrier["observation"]
    assert torch.equal(first, make_env("Gym-Pendulum-v1", 0)[0].reset()["observation"])
    collector.carrier = collector.carrier.apply(lambda x: x * 0)  # a restored observation is acted on next
    assert torch.equal(next(iter(collector))["observation"], torch.zeros(1, 3))
    # GymWrapper options that change the step (frame skip, index actions) are left to TorchRL's Collector.
    from torchrl.envs import GymWrapper

    from mrq_lightning.envs import make_gymnasium_env

    assert not supports(GymWrapper(make_gymnasium_env("Gym-CartPole-v1", 0)[0], categorical_action_encoding=True))
    assert not supports(GymWrapper(make_gymnasium_env("Gym-Pendulum-v1", 0)[0], frame_skip=2))
    # set_seed: the seeded reset's episode is the one acted in next (as Collector.set_seed leaves the env).
    collector.set_seed(9)
    assert torch.equal(collector.carrier["observation"], make_env("Gym-Pendulum-v1", 9)[0].reset()["observation"])
    torchrl_env = make_env(custom_env_spec({"class_path": "tests.toy_envs.make_torchrl_cartpole"}), 0)[0]
    assert not supports(torchrl_env)
    with pytest.raises(ValueError, match="use torchrl's Collector"):
        StepCollector(torchrl_env, _policy(info))
