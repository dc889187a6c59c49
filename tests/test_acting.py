"""Acting and evaluation rules (algorithm §10, §14, §16 Q2 and Q10) on the real networks and the real datamodule.

The policy's output layer is set to zero weights and a chosen bias, so its logits u are known for every state; the
action frequencies of each rule are then compared with the rule written out independently here.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torchrl.envs.utils import ExplorationType, set_exploration_type

from mrq_lightning.modules.builders import MRQActor, make_mrq_networks

LOGITS = torch.tensor([2.0, 1.0, 0.0, -1.0])
SAMPLES = 20_000


def _actor(logits: torch.Tensor, discrete: bool, exploration_noise: float = 0.2, obs_dim: int = 3) -> MRQActor:
    nets = make_mrq_networks((obs_dim,), logits.numel(), discrete=discrete, zs_dim=16, za_dim=8, zsa_dim=16, hidden_dim=16)
    output_layer = nets.policy.mlp[-1]
    with torch.no_grad():
        output_layer.weight.zero_()
        output_layer.bias.copy_(logits)
    return MRQActor(nets.encoder, nets.policy, exploration_noise)


def _frequencies(actor: MRQActor, exploration: ExplorationType | None) -> torch.Tensor:
    observations = torch.randn(SAMPLES, 3)
    if exploration is None:
        actions = actor(observations)
    else:
        with set_exploration_type(exploration):
            actions = actor(observations)
    assert actions.dtype == torch.float32 and actions.shape == (SAMPLES, 4)
    assert torch.equal(actions.sum(-1), torch.ones(SAMPLES))  # one-hot
    return actions.mean(0)


def _reference_exploration(logits: torch.Tensor, tau: float, sigma: float) -> torch.Tensor:
    """Algorithm §10, discrete: argmax(softmax((u + Gumbel) / tau) + N(0, sigma^2)), simulated from scratch."""
    generator = torch.Generator().manual_seed(123)
    gumbel = -torch.log(-torch.log(torch.rand(4 * SAMPLES, 4, generator=generator)))
    scores = torch.softmax((logits + gumbel) / tau, -1) + sigma * torch.randn(4 * SAMPLES, 4, generator=generator)
    return F.one_hot(scores.argmax(-1), 4).float().mean(0)


def test_discrete_exploration_halves_the_noise():
    torch.manual_seed(0)
    actor = _actor(LOGITS, discrete=True)
    assert actor.exploration_noise == pytest.approx(0.1)
    expected = _reference_exploration(LOGITS, tau=10.0, sigma=0.1)
    for rule in (None, ExplorationType.RANDOM):  # collectors act with RANDOM; no context is exploration too
        assert torch.allclose(_frequencies(actor, rule), expected, atol=0.015)
    # The un-halved noise would give a visibly flatter distribution: the check above can tell them apart.
    assert (expected - _reference_exploration(LOGITS, tau=10.0, sigma=0.2)).abs().max() > 0.05


def test_discrete_evaluation_samples_softmax_and_greedy_takes_the_argmax():
    torch.manual_seed(0)
    actor = _actor(LOGITS, discrete=True)
    # DETERMINISTIC = MR.Q's evaluation rule: argmax of a Gumbel-softmax sample, i.e. a draw from softmax(u) (Q10).
    assert torch.allclose(_frequencies(actor, ExplorationType.DETERMINISTIC), torch.softmax(LOGITS, -1), atol=0.015)
    assert torch.equal(_frequencies(actor, ExplorationType.MODE), torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_continuous_acting_rules():
    torch.manual_seed(0)
    u = torch.tensor([0.3, -0.2, 3.0, -3.0])
    actor = _actor(u, discrete=False)
    observations = torch.randn(SAMPLES, 3)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert torch.allclose(actor(observations), torch.tanh(u).expand(SAMPLES, 4), atol=1e-6)
    explored = actor(observations)
    assert explored.min() >= -1.0 and explored.max() <= 1.0
    # Unclipped dimensions: tanh(u) + N(0, 0.2^2).
    noise = explored[:, :2] - torch.tanh(u[:2])
    assert noise.mean(0).abs().max() < 0.01 and torch.allclose(noise.std(0), torch.tensor([0.2, 0.2]), atol=0.01)
    # tanh(3) = 0.995: about half the draws clip at the bound.
    assert 0.4 < (explored[:, 2] == 1.0).float().mean() < 0.6 and 0.4 < (explored[:, 3] == -1.0).float().mean() < 0.6


# ----------------------------------------------------------------------------------------------------------------
# The datamodule: random-phase action storage (Q2) and the greedy metric's own eval env (Q10)
# ----------------------------------------------------------------------------------------------------------------
def _fit_cartpole(official_quirks: bool, total_steps: int = 10, random_steps: int = 6):
    from mrq_lightning.training import MRQ, MRQDataModule

    torch.manual_seed(0)
    module = MRQ(batch_size=4, zs_dim=16, za_dim=8, zsa_dim=16, hidden_dim=16, target_update_period=2,
                 log_every_n_env_steps=10**9, official_quirks=official_quirks)  # fmt: skip
    data = MRQDataModule(env="Gym-CartPole-v1", total_steps=total_steps, random_steps=random_steps, eval_episodes=0,
                         eval_every=10**9, buffer_capacity=100, official_quirks=official_quirks)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, datamodule=data)
    return data.buffer.gather(torch.arange(total_steps), horizon=1)["action"][:, 0]


def test_random_phase_actions_one_hot_by_default_and_index_broadcast_with_the_quirk():
    fixed = _fit_cartpole(official_quirks=False)
    assert torch.equal(fixed.sum(-1), torch.ones(10)) and set(fixed.unique().tolist()) <= {0.0, 1.0}
    # Algorithm §16 Q2 reproduced: the 6 random-phase actions are stored as the index in every dimension ([k, k]);
    # the policy's actions after them are one-hot.
    official = _fit_cartpole(official_quirks=True)
    random_phase, policy_phase = official[:6], official[6:]
    assert torch.equal(random_phase[:, 0], random_phase[:, 1]) and set(random_phase[:, 0].tolist()) <= {0.0, 1.0}
    assert torch.equal(policy_phase.sum(-1), torch.ones(4))
    # Same seed, same random actions: the two layouts hold the same action indices.
    assert torch.equal(random_phase[:, 0], fixed[:6].argmax(-1).float())


def test_greedy_metric_leaves_the_official_eval_stream_alone():
    """Greedy episodes run on their own eval env (seeded alike), so the official rule's episodes see the env random
    streams they would see without the extra metric."""
    from tensordict.nn import TensorDictModule

    from mrq_lightning.envs.state import get_env_state
    from mrq_lightning.training import MRQDataModule

    def plain(value):  # nested state -> comparable python values
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value.tolist() if hasattr(value, "tolist") else value

    def env_state(env):
        return plain(get_env_state(env))

    data = MRQDataModule(env="Gym-CartPole-v1", eval_episodes=3)
    data.setup("fit")
    policy = TensorDictModule(_actor(torch.zeros(2), discrete=True, obs_dim=4), ["observation"], ["action"])
    official_before, greedy_before = env_state(data.eval_env), env_state(data.greedy_eval_env)
    assert official_before == greedy_before  # same seed (seed + 100), same starting state
    assert len(data.evaluate(policy, ExplorationType.MODE)) == 3
    assert env_state(data.eval_env) == official_before and env_state(data.greedy_eval_env) != greedy_before
    data.evaluate(policy)
    assert env_state(data.eval_env) != official_before
