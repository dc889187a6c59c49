"""The parallel evaluation protocol (algorithm §14): episodes side by side, one env each, equal to the same seeded
episodes played one at a time through TorchRL's rollout when the policy is batch-invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule

from mrq_lightning.envs import make_env
from mrq_lightning.envs.custom import custom_env_spec
from mrq_lightning.errors import ConfigurationError
from mrq_lightning.evaluation import episode_seeds, evaluate_in_parallel, evaluate_policy
from mrq_lightning.training import MRQDataModule


class RowWise(torch.nn.Module):
    """A fixed policy computed row by row (elementwise ops and a per-row reduction): batch-invariant, unlike a GEMM.
    Continuous: tanh of a fixed mix of the observation; discrete: a one-hot of a fixed score's argmax."""

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.register_buffer("weight", torch.randn(obs_dim, action_dim, generator=generator))
        self.discrete = discrete

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        single = observation.dim() == 1
        rows = observation.reshape(1 if single else observation.shape[0], -1).float()
        scores = (rows.unsqueeze(-1) * self.weight).sum(1)
        action = torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).float() if self.discrete else torch.tanh(scores)
        return action[0] if single else action


def _policy(info) -> TensorDictModule:
    obs_dim = int(np.prod(info.obs_shape))
    return TensorDictModule(RowWise(obs_dim, info.action_dim, info.discrete), ["observation"], ["action"])


def test_episode_seeds_start_at_the_evaluation_seed_and_differ():
    seeds = episode_seeds(100, 10)
    assert seeds[0] == 100 and len(set(seeds)) == 10 and all(0 <= s < 2**31 for s in seeds)
    assert episode_seeds(100, 3) == seeds[:3]  # a longer evaluation extends, never reshuffles, the seeds
    assert episode_seeds(101, 3)[1:] != seeds[1:3] and episode_seeds(100, 0) == []


@pytest.mark.parametrize("name", ["Gym-Pendulum-v1", "Gym-CartPole-v1"])
def test_parallel_episodes_equal_the_same_seeded_episodes_played_one_at_a_time(name):
    """CartPole's episodes end at different steps: the batch shrinks as episodes finish."""
    seeds = episode_seeds(100, 4)
    envs = [make_env(name, seed, evaluation=True)[0] for seed in seeds]
    policy = _policy(make_env(name, 0)[1])
    rng_before = torch.get_rng_state()
    parallel = evaluate_in_parallel(envs, policy)
    assert torch.equal(torch.get_rng_state(), rng_before)
    one_at_a_time = [evaluate_policy(make_env(name, seed, evaluation=True)[0], policy, 1)[0] for seed in seeds]
    assert parallel == one_at_a_time
    assert len(set(parallel)) == 4  # four different episodes
    # The envs continue: a second evaluation plays each env's next episode, as one env playing two would.
    again = evaluate_in_parallel(envs, policy)
    for seed, first, second in zip(seeds, parallel, again):
        assert evaluate_policy(make_env(name, seed, evaluation=True)[0], policy, 2) == [first, second]


def test_a_torchrl_env_of_your_own_plays_its_episode_through_rollout():
    spec = custom_env_spec({"class_path": "tests.toy_envs.make_torchrl_cartpole", "max_episode_steps": 30})
    seeds = episode_seeds(5, 2)
    envs = [make_env(spec, seed)[0] for seed in seeds]
    policy = _policy(make_env(spec, 0)[1])
    assert evaluate_in_parallel(envs, policy) == [evaluate_policy(make_env(spec, s)[0], policy, 1)[0] for s in seeds]


def test_the_datamodule_builds_one_seeded_env_per_episode_and_the_official_protocol_on_request():
    parallel = MRQDataModule(env="Gym-CartPole-v1", seed=3, eval_episodes=3, buffer_capacity=100, random_steps=0)
    sequential = MRQDataModule(env="Gym-CartPole-v1", seed=3, eval_episodes=3, eval_protocol="sequential",
                               buffer_capacity=100, random_steps=0)  # fmt: skip
    parallel.setup("fit")
    sequential.setup("fit")
    assert parallel.eval_seeds == episode_seeds(103, 3) and len(parallel.eval_envs) == len(parallel.greedy_eval_envs) == 3
    assert sequential.eval_seeds == [103] and len(sequential.eval_envs) == 1
    for env, seed in zip(parallel.eval_envs, parallel.eval_seeds):
        assert torch.equal(env.reset()["observation"], make_env("Gym-CartPole-v1", seed)[0].reset()["observation"])
    fresh = MRQDataModule(env="Gym-CartPole-v1", seed=3, eval_episodes=3, buffer_capacity=100, random_steps=0)
    fresh.setup("fit")
    policy = _policy(fresh.env_info)
    expected = [evaluate_policy(make_env("Gym-CartPole-v1", s, evaluation=True)[0], policy, 1)[0] for s in fresh.eval_seeds]
    assert fresh.evaluate(policy) == expected
    official = MRQDataModule(env="Gym-CartPole-v1", seed=3, eval_episodes=3, eval_protocol="sequential",
                             buffer_capacity=100, random_steps=0)  # fmt: skip
    official.setup("fit")
    assert official.evaluate(policy) == evaluate_policy(make_env("Gym-CartPole-v1", 103, evaluation=True)[0], policy, 3)


def test_an_unknown_protocol_is_refused_in_one_line():
    with pytest.raises(ConfigurationError, match="data.eval_protocol='batched' is not a protocol: use parallel"):
        MRQDataModule(env="Gym-CartPole-v1", eval_protocol="batched")
