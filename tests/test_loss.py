"""Tests for ``mrq_lightning.objectives.mrq_loss.MRQLoss`` (algorithm §5, §6, §7, §9, §16 Q3).

Small networks throughout (the algorithm's sizes are checked in test_networks.py). Expected values are computed by
hand or by a reference implementation of the algorithm's formulas written here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from mrq_lightning import functional as MF
from mrq_lightning.modules.networks import Encoder, Policy, TwinCritic
from mrq_lightning.objectives.mrq_loss import MRQLoss

OBS = 5
ZS = 16
DIMS = dict(zs_dim=ZS, za_dim=8, zsa_dim=16, hidden_dim=16)
GAMMA = 0.99


def make_loss(action_dim: int = 3, discrete: bool = False, seed: int = 0, obs_shape=(OBS,), pixels=False, **kw):
    torch.manual_seed(seed)
    enc = Encoder(obs_shape, action_dim, pixels=pixels, **DIMS)
    critic = TwinCritic(zsa_dim=16, hidden_dim=16)
    policy = Policy(action_dim, discrete=discrete, zs_dim=ZS, hidden_dim=16)
    return MRQLoss(enc, critic, policy, **kw)


def make_batch(
    batch: int = 6,
    horizon: int = 5,
    action_dim: int = 3,
    discrete: bool = False,
    intermediate: bool = True,
    terminated: torch.Tensor | None = None,
    seed: int = 0,
    obs_shape=(OBS,),
) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    if len(obs_shape) == 3:
        obs = torch.randint(0, 256, (batch, *obs_shape), generator=g, dtype=torch.uint8)
        nobs_shape = (batch, horizon, *obs_shape) if intermediate else (batch, *obs_shape)
        next_obs = torch.randint(0, 256, nobs_shape, generator=g, dtype=torch.uint8)
    else:
        obs = torch.randn(batch, *obs_shape, generator=g)
        nobs_shape = (batch, horizon, *obs_shape) if intermediate else (batch, *obs_shape)
        next_obs = torch.randn(nobs_shape, generator=g)
    if discrete:
        idx = torch.randint(0, action_dim, (batch, horizon), generator=g)
        action = F.one_hot(idx, action_dim).float()
    else:
        action = torch.rand(batch, horizon, action_dim, generator=g) * 2 - 1
    reward = torch.randn(batch, horizon, generator=g) * 2
    if terminated is None:
        terminated = torch.zeros(batch, horizon)
    return TensorDict(
        {
            "observation": obs,
            "action": action,
            "next": {"reward": reward, "terminated": terminated.float(), "observation": next_obs},
        },
        batch_size=[batch],
    )


def _grad_nonzero(p: torch.Tensor) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


def _clear_grads(loss: MRQLoss) -> None:
    for m in (loss.encoder, loss.critic, loss.policy, loss.target_encoder, loss.target_critic, loss.target_policy):
        for p in m.parameters():
            p.grad = None


def _ref_bins() -> torch.Tensor:
    return torch.tensor(
        [math.copysign(math.expm1(abs(-10 + 20 * k / 64)), -10 + 20 * k / 64) for k in range(65)], dtype=torch.float64
    )


def _ref_two_hot(r: torch.Tensor) -> torch.Tensor:
    """Independent two-hot reference (algorithm §4) for a 1-D tensor of in-range rewards."""
    b = _ref_bins()
    out = torch.zeros(r.numel(), 65, dtype=torch.float64)
    for i, x in enumerate(r.double().tolist()):
        x = min(max(x, b[0].item()), b[-1].item())
        below = [k for k in range(65) if b[k] < x]
        k = below[-1] if below else 0
        k = min(k, 63)
        w = (x - b[k].item()) / (b[k + 1] - b[k]).item()
        out[i, k] += 1 - w
        out[i, k + 1] += w
    return out


def _ref_ce(logits: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return -(_ref_two_hot(r) * F.log_softmax(logits.double(), -1)).sum(-1)


def reference_encoder_loss(loss: MRQLoss, td: TensorDict, env_terminates: bool = True, unmasked_denominator=False):
    """Algorithm §5 written out step by step, with masked means over the full B (or B x zs)."""
    enc, tgt = loss.encoder, loss.target_encoder
    obs, act = td["observation"], td["action"]
    rew, term, nobs = td["next", "reward"], td["next", "terminated"], td["next", "observation"]
    B, H = rew.shape
    with torch.no_grad():
        zbar = tgt.encode_state(nobs).double()
        mu = torch.ones(B, dtype=torch.float64)
        z = enc.encode_state(obs)
        total = torch.zeros((), dtype=torch.float64)
        for i in range(H):
            d, z, logits = enc.predict(enc.encode_state_action(z, act[:, i]))
            denom = mu.sum().clamp(min=1) if unmasked_denominator else B
            dyn = (mu[:, None] * (z.double() - zbar[:, i]) ** 2).sum() / (denom * ZS)
            rwd = (mu * _ref_ce(logits, rew[:, i])).sum() / denom
            trm = (mu * (d[:, 0].double() - term[:, i].double()) ** 2).sum() / denom
            total = total + 1.0 * dyn + 0.1 * rwd + (0.1 * trm if env_terminates else 0.0)
            mu = mu * (1.0 - term[:, i].double())
    return total


# ----------------------------------------------------------------------------------------------------------------
# Gradient isolation (algorithm §1 table, §5-§7)
# ----------------------------------------------------------------------------------------------------------------


def test_encoder_loss_grads_only_in_encoder():
    loss = make_loss()
    td = make_batch(terminated=torch.tensor([[0, 1, 0, 0, 0]] + [[0] * 5] * 5))
    _clear_grads(loss)
    value, _ = loss.encoder_loss(td)
    value.backward()
    assert all(_grad_nonzero(p) for p in loss.encoder.parameters())
    for m in (loss.critic, loss.policy, loss.target_encoder, loss.target_critic, loss.target_policy):
        assert all(p.grad is None for p in m.parameters())


def test_value_loss_grads_only_in_critic():
    loss = make_loss()
    # odd batch: an output bias's Huber gradient is a sum of clipped residuals and cannot cancel to 0 by symmetry
    td = make_batch(batch=7, horizon=3, intermediate=False)
    _clear_grads(loss)
    value, _ = loss.value_loss(td)
    value.backward()
    assert all(p.grad is not None for p in loss.critic.parameters())
    assert all(_grad_nonzero(p) for n, p in loss.critic.named_parameters() if n.endswith("weight"))
    for m in (loss.encoder, loss.policy, loss.target_encoder, loss.target_critic, loss.target_policy):
        assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("discrete", [False, True])
def test_actor_loss_grads_only_in_policy(discrete):
    loss = make_loss(discrete=discrete)
    td = make_batch(horizon=3, intermediate=False, discrete=discrete)
    loss.value_loss(td)  # writes state_embedding, as in training
    _clear_grads(loss)
    value, _ = loss.actor_loss(td)
    value.backward()
    assert all(_grad_nonzero(p) for p in loss.policy.parameters())
    for m in (loss.encoder, loss.critic, loss.target_encoder, loss.target_critic, loss.target_policy):
        assert all(not _grad_nonzero(p) for p in m.parameters())
    # encoder / critic parameters are trainable again afterwards
    assert all(p.requires_grad for p in loss.encoder.parameters())
    assert all(p.requires_grad for p in loss.critic.parameters())


@pytest.mark.parametrize("discrete", [False, True])
def test_actor_gradient_flows_through_g_and_q_into_action(discrete):
    # with no pre-activation penalty the only path to the policy is through the action -> g -> Q
    loss = make_loss(discrete=discrete, pre_activation_weight=0.0)
    td = make_batch(horizon=3, intermediate=False, discrete=discrete)
    _clear_grads(loss)
    value, _ = loss.actor_loss(td)  # no state_embedding: encodes the observation itself
    value.backward()
    assert all(_grad_nonzero(p) for p in loss.policy.parameters())
    assert all(not _grad_nonzero(p) for p in loss.encoder.parameters())
    assert all(not _grad_nonzero(p) for p in loss.critic.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Targets and reward scales (algorithm §3.9, §9)
# ----------------------------------------------------------------------------------------------------------------


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_targets_frozen_until_sync_then_equal_online():
    loss = make_loss()
    pairs = [
        (loss.encoder, loss.target_encoder),
        (loss.critic, loss.target_critic),
        (loss.policy, loss.target_policy),
    ]
    for online, target in pairs:
        assert _equal(_snapshot(online), _snapshot(target))  # initialised as copies
        assert all(not p.requires_grad for p in target.parameters())
        assert {id(p) for p in online.parameters()}.isdisjoint({id(p) for p in target.parameters()})
    before = [_snapshot(t) for _, t in pairs]
    # the optimizer a training loop would build from the loss module, with weight decay
    opt = torch.optim.AdamW(loss.parameters(), lr=1e-2, weight_decay=1e-2)
    td = make_batch()
    for _ in range(2):
        opt.zero_grad()
        total = loss.encoder_loss(td)[0] + loss.value_loss(td, horizon=3)[0] + loss.actor_loss(td)[0]
        total.backward()
        opt.step()
    for (online, target), snap in zip(pairs, before):
        assert _equal(_snapshot(target), snap), "target changed before sync_targets()"
        assert not _equal(_snapshot(online), snap), "online network did not train"
    loss.sync_targets()
    for online, target in pairs:
        assert _equal(_snapshot(online), _snapshot(target))
    # hard copy, not aliasing: another step moves online away again
    opt.zero_grad()
    loss.encoder_loss(td)[0].backward()
    opt.step()
    assert not _equal(_snapshot(loss.encoder), _snapshot(loss.target_encoder))


def test_reward_scale_initial_values_and_sync():
    loss = make_loss()
    assert loss.reward_scale.item() == 1.0
    assert loss.target_reward_scale.item() == 0.0
    loss.sync_targets(5.0)
    assert loss.target_reward_scale.item() == 1.0  # first sync: r̄' = 1
    assert loss.reward_scale.item() == 5.0
    loss.sync_targets(0.0)
    assert loss.target_reward_scale.item() == 5.0
    assert loss.reward_scale.item() == pytest.approx(1e-8)  # max(x, 1e-8)
    loss.sync_targets(torch.tensor(2.5))
    assert loss.target_reward_scale.item() == pytest.approx(1e-8)
    assert loss.reward_scale.item() == 2.5


# ----------------------------------------------------------------------------------------------------------------
# Encoder loss (algorithm §5)
# ----------------------------------------------------------------------------------------------------------------


def _perturb_weights(loss: MRQLoss, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loss.encoder.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_encoder_loss_matches_manual_computation_full_b_denominator():
    loss = make_loss()
    _perturb_weights(loss)  # online != target so the dynamics term is not trivial
    term = torch.zeros(6, 5)
    term[0, 1] = 1.0
    term[1, 0] = 1.0
    term[2, 4] = 1.0
    td = make_batch(terminated=term)
    value, metrics = loss.encoder_loss(td)
    expected = reference_encoder_loss(loss, td)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["loss_encoder"].item() == pytest.approx(expected.item(), rel=1e-5)
    # the test discriminates: dividing by the number of unmasked entries gives a different number
    wrong = reference_encoder_loss(loss, td, unmasked_denominator=True)
    assert abs(wrong.item() - expected.item()) > 1e-3 * abs(expected.item())


def test_encoder_loss_post_terminal_steps_are_ignored():
    loss = make_loss()
    _perturb_weights(loss)
    term = torch.zeros(4, 5)
    term[0, 1] = 1.0  # row 0 terminates at window position 1 -> positions 2..4 excluded
    td = make_batch(batch=4, terminated=term, seed=1)
    base = loss.encoder_loss(td)[0].item()

    garbage = td.clone()
    g = torch.Generator().manual_seed(9)
    garbage["next", "reward"][0, 2:] = torch.tensor([1e4, -7e3, 555.0])
    garbage["next", "observation"][0, 2:] = torch.randn(3, OBS, generator=g) * 100
    garbage["next", "terminated"][0, 2:] = torch.tensor([1.0, 0.0, 1.0])
    garbage["action"][0, 2:] = torch.randn(3, 3, generator=g) * 50
    assert loss.encoder_loss(garbage)[0].item() == pytest.approx(base, rel=1e-6)

    # the terminal transition itself still counts in all three terms
    for key, pos, new in (
        (("next", "reward"), 1, torch.tensor(40.0)),
        (("next", "observation"), 1, torch.full((OBS,), 3.0)),
        (("action",), 1, torch.full((3,), 0.9)),
    ):
        changed = td.clone()
        changed[key][0, pos] = new
        assert changed[key][0, pos].ne(td[key][0, pos]).any()
        assert loss.encoder_loss(changed)[0].item() != pytest.approx(base, rel=1e-6), key
    # and so do the steps before it in other rows
    changed = td.clone()
    changed["next", "reward"][1, 4] = 40.0
    assert loss.encoder_loss(changed)[0].item() != pytest.approx(base, rel=1e-6)


def test_encoder_loss_terminal_term_weight_and_env_terminates_flag():
    loss = make_loss()
    _perturb_weights(loss)
    term = torch.zeros(6, 5)
    term[3, 2] = 1.0
    td = make_batch(terminated=term, seed=2)
    with_term, m1 = loss.encoder_loss(td, env_terminates=True)
    without_term, m2 = loss.encoder_loss(td, env_terminates=False)
    assert without_term.item() == pytest.approx(reference_encoder_loss(loss, td, env_terminates=False).item(), rel=1e-5)
    assert with_term.item() == pytest.approx(reference_encoder_loss(loss, td, env_terminates=True).item(), rel=1e-5)
    # L = dyn + 0.1 reward + 0.1 terminal
    assert (with_term - without_term).item() == pytest.approx(0.1 * m1["loss_terminal"].item(), rel=1e-4)
    assert m2["loss_encoder"].item() == pytest.approx(
        m2["loss_dynamics"].item() + 0.1 * m2["loss_reward"].item(), rel=1e-5
    )
    # with env_terminates=False the terminal labels do not matter at all
    flipped = td.clone()
    flipped["next", "terminated"][:, 0] = 1.0 - flipped["next", "terminated"][:, 0]
    flipped["next", "terminated"][:, 1:] = 0.0
    # (all rows terminate at position 0 now: the mask changes, so compare against the reference)
    assert loss.encoder_loss(flipped, env_terminates=False)[0].item() == pytest.approx(
        reference_encoder_loss(loss, flipped, env_terminates=False).item(), rel=1e-5
    )


@pytest.mark.parametrize("horizon", [2, 1])
def test_encoder_loss_other_horizons_match_reference(horizon):
    # The loss unrolls over the batch's horizon; the algorithm's formula holds for any H (H_enc = 5 by default).
    loss = make_loss()
    _perturb_weights(loss)
    td = make_batch(batch=4, horizon=horizon, seed=14)
    value, _ = loss.encoder_loss(td)
    assert value.item() == pytest.approx(reference_encoder_loss(loss, td).item(), rel=1e-5)


def test_encoder_loss_pixels_runs_and_matches_reference_shapes():
    loss = make_loss(action_dim=4, discrete=True, obs_shape=(3, 84, 84), pixels=True)
    td = make_batch(batch=2, action_dim=4, discrete=True, obs_shape=(3, 84, 84))
    value, _ = loss.encoder_loss(td)
    assert value.shape == ()
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(reference_encoder_loss(loss, td).item(), rel=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Value loss (algorithm §6, §8, §16 Q3)
# ----------------------------------------------------------------------------------------------------------------


def _manual_q(loss: MRQLoss, td: TensorDict) -> torch.Tensor:
    with torch.no_grad():
        zs = loss.encoder.encode_state(td["observation"])
        return loss.critic(loss.encoder.encode_state_action(zs, td["action"][:, 0]))


def _hand_return(r, n, gamma, quirks=False):
    """Σ γ^t r_t Π_{k<t} n_k (or Σ γ^t r_t n_t with quirks) and D = Π n, for python lists."""
    R, alive = 0.0, 1.0
    for t, (rt, nt) in enumerate(zip(r, n)):
        R += gamma**t * rt * (nt if quirks else alive)
        alive *= nt
    return R, alive


def test_value_target_by_hand_with_reward_scales():
    loss = make_loss()
    loss.sync_targets(3.0)  # r̄' = 1, r̄ = 3
    loss.sync_targets(2.0)  # r̄' = 3, r̄ = 2
    rewards = [[1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [0.5, -1.0, 3.0], [3.0, 0.0, 5.0]]
    not_done = [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    td = make_batch(batch=4, horizon=3, intermediate=False, terminated=1 - torch.tensor(not_done))
    td["next", "reward"] = torch.tensor(rewards)
    q_next = torch.tensor([[40.0, 50.0], [10.0, -5.0], [7.0, 8.0], [100.0, 90.0]])
    loss.target_critic.forward = lambda zsa: q_next.clone()
    loss.policy.forward = lambda zs: (_ for _ in ()).throw(AssertionError("online policy used in the target"))

    y = []
    for r, n, qn in zip(rewards, not_done, q_next.tolist()):
        R, D = _hand_return(r, n, GAMMA)
        y.append((R + D * GAMMA**3 * 3.0 * min(qn)) / 2.0)
    y = torch.tensor(y).unsqueeze(-1)
    # row 0: (1 + 1.98 + 4 * 0.9801 + 0.970299 * 3 * 40) / 2
    assert y[0].item() == pytest.approx((1 + 1.98 + 3.9204 + 0.970299 * 120) / 2)

    q = _manual_q(loss, td)
    value, metrics = loss.value_loss(td)
    expected_loss = F.smooth_l1_loss(q, y.expand(-1, 2))  # Huber δ=1, mean over B x 2
    assert value.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    expected_priority = torch.clamp((q - y).abs().amax(-1), min=1.0) ** 0.4
    torch.testing.assert_close(td["priority"], expected_priority, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(td["priority"], MF.lap_priority(q, y), rtol=1e-5, atol=1e-5)
    assert metrics["target_mean"].item() == pytest.approx(y.mean().item(), rel=1e-5)


def test_value_target_at_init_is_return_only_and_quirk_switch():
    # Initially r̄ = 1 and r̄' = 0: y = R exactly, whatever the target critic says.
    rewards = [[5.0, 7.0, 11.0], [5.0, 7.0, 11.0], [5.0, 7.0, 11.0], [3.0, 0.0, 5.0], [1.0, 2.0, 4.0]]
    not_done = [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    for quirks in (False, True):
        loss = make_loss(official_quirks=quirks)
        td = make_batch(batch=5, horizon=3, intermediate=False, terminated=1 - torch.tensor(not_done), seed=3)
        td["next", "reward"] = torch.tensor(rewards)
        y = torch.tensor([[_hand_return(r, n, GAMMA, quirks)[0]] for r, n in zip(rewards, not_done)])
        if quirks:
            # Q3: terminal at 0 drops r_0 and keeps the post-terminal ones; the §16 Q3 window gives γ² r_next
            assert y[0].item() == pytest.approx(7 * 0.99 + 11 * 0.9801)
            assert y[3].item() == pytest.approx(0.9801 * 5.0)
        else:
            assert y[0].item() == pytest.approx(5.0)
            assert y[3].item() == pytest.approx(3.0)
        q = _manual_q(loss, td)
        value, _ = loss.value_loss(td)
        assert value.item() == pytest.approx(F.smooth_l1_loss(q, y.expand(-1, 2)).item(), rel=1e-5)
        torch.testing.assert_close(td["priority"], MF.lap_priority(q, y), rtol=1e-5, atol=1e-5)


def test_value_loss_encoder_mode_batch_bootstraps_from_position_h_minus_1():
    loss = make_loss()
    td = make_batch(batch=4, horizon=5, intermediate=True, seed=4)
    seen = []
    original = loss.target_encoder.encode_state
    loss.target_encoder.encode_state = lambda obs: (seen.append(obs.clone()), original(obs))[1]
    loss.value_loss(td, horizon=3)
    assert len(seen) == 1
    # s_{j+3} is the successor of window position 2
    torch.testing.assert_close(seen[0], td["next", "observation"][:, 2], rtol=0, atol=0)


def _clipped_normal_std(sigma: float, clip: float) -> float:
    c = clip / sigma
    phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    p_in = math.erf(c / math.sqrt(2))
    return sigma * math.sqrt(p_in - 2 * c * phi + c * c * (1 - p_in))


def test_target_policy_noise_continuous():
    loss = make_loss(action_dim=2)
    B = 6000
    td = make_batch(batch=B, horizon=3, intermediate=False, action_dim=2, seed=5)
    loss.target_policy.forward = lambda zs: (torch.zeros(zs.shape[0], 2), torch.zeros(zs.shape[0], 2))
    seen = []
    original = loss.target_encoder.encode_state_action
    loss.target_encoder.encode_state_action = lambda zs, a: (seen.append(a.clone()), original(zs, a))[1]
    torch.manual_seed(0)
    loss.value_loss(td)
    a = seen[0]
    # ε ~ N(0, 0.2²) clipped to ±0.3, added to a zero action, then clipped to [-1, 1]
    assert a.abs().max().item() == pytest.approx(0.3, abs=1e-6)
    assert ((a.abs() - 0.3).abs() < 1e-6).float().mean().item() == pytest.approx(0.1336, abs=0.02)  # P(|Z|>1.5)
    assert a.std().item() == pytest.approx(_clipped_normal_std(0.2, 0.3), rel=0.05)
    assert abs(a.mean().item()) < 0.01


def test_target_policy_noise_halved_for_discrete():
    loss = make_loss(action_dim=2, discrete=True)
    assert loss.target_policy_noise == pytest.approx(0.1)
    assert loss.target_noise_clip == pytest.approx(0.15)
    B = 6000
    td = make_batch(batch=B, horizon=3, intermediate=False, action_dim=2, discrete=True, seed=6)
    seen = []
    original = loss.target_encoder.encode_state_action
    loss.target_encoder.encode_state_action = lambda zs, a: (seen.append(a.clone()), original(zs, a))[1]

    def flip_fraction(delta: float) -> float:
        soft = torch.tensor([[0.5 + delta / 2, 0.5 - delta / 2]])
        loss.target_policy.forward = lambda zs: (soft.expand(zs.shape[0], 2), soft.expand(zs.shape[0], 2))
        seen.clear()
        loss.value_loss(td)
        a = seen[0]
        # realign: one-hot of the argmax
        assert torch.all((a == 0) | (a == 1)) and torch.all(a.sum(-1) == 1)
        return a[:, 1].mean().item()

    torch.manual_seed(1)
    # with clip 0.15 per entry, noise can move the gap by at most 0.3: a gap of 0.31 never flips ...
    assert flip_fraction(0.31) == 0.0
    # ... a gap of 0.29 sometimes does (needs both entries near the clip; P ≈ 0.006)
    assert flip_fraction(0.29) > 0.0
    # gap 0.2: P(N(0, 2 * 0.1²) > 0.2) ≈ 0.079 (the undivided σ=0.2 would give ≈ 0.24)
    assert flip_fraction(0.2) == pytest.approx(0.079, abs=0.025)


# ----------------------------------------------------------------------------------------------------------------
# Actor loss (algorithm §7)
# ----------------------------------------------------------------------------------------------------------------


def test_actor_loss_continuous_matches_manual():
    loss = make_loss()
    td = make_batch(horizon=3, intermediate=False, seed=7)
    value, metrics = loss.actor_loss(td)
    with torch.no_grad():
        zs = loss.encoder.encode_state(td["observation"])
        a, u = loss.policy(zs)
        q = loss.critic(loss.encoder.encode_state_action(zs, a))
    expected = -q.mean() + 1e-5 * (u**2).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    # both critics averaged, not Q1 only as in TD3
    q1_only = -q[:, 0].mean() + 1e-5 * (u**2).mean()
    assert abs(q1_only.item() - expected.item()) > 1e-4
    assert metrics["loss_policy"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


def test_actor_loss_pre_activation_penalty_coefficient():
    loss = make_loss()
    with torch.no_grad():
        [m for m in loss.policy.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(20.0)
    loss.critic.forward = lambda zsa: torch.zeros(zsa.shape[0], 2) + 0.0 * zsa.sum(-1, keepdim=True)
    td = make_batch(horizon=3, intermediate=False, seed=8)
    value, _ = loss.actor_loss(td)
    with torch.no_grad():
        _, u = loss.policy(loss.encoder.encode_state(td["observation"]))
    assert value.item() == pytest.approx(1e-5 * (u**2).mean().item(), rel=1e-5)


def test_actor_loss_uses_state_embedding_from_value_loss():
    loss = make_loss()
    td = make_batch(horizon=3, intermediate=False, seed=9)
    loss.value_loss(td)
    zs = td["state_embedding"]
    torch.testing.assert_close(zs, loss.encoder.encode_state(td["observation"]).detach())
    assert not zs.requires_grad
    # a different embedding in the tensordict changes the actor loss
    first = loss.actor_loss(td)[0].item()
    td["state_embedding"] = zs + 1.0
    assert loss.actor_loss(td)[0].item() != pytest.approx(first, rel=1e-6)


def test_actor_loss_discrete_matches_manual_with_same_gumbel_draw():
    loss = make_loss(action_dim=4, discrete=True)
    td = make_batch(horizon=3, intermediate=False, action_dim=4, discrete=True, seed=10)
    torch.manual_seed(123)
    value, _ = loss.actor_loss(td)
    with torch.no_grad():
        zs = loss.encoder.encode_state(td["observation"])
        torch.manual_seed(123)
        a, u = loss.policy(zs)
        q = loss.critic(loss.encoder.encode_state_action(zs, a))
    assert torch.all(a > 0) and torch.all(a < 1)  # the soft sample is what g sees
    expected = -q.mean() + 1e-5 * (u**2).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# TorchRL entry points: forward, set_keys, state_dict
# ----------------------------------------------------------------------------------------------------------------


def test_forward_returns_three_losses():
    loss = make_loss()
    td = make_batch(seed=11)
    out = loss(td.clone())
    for key in ("loss_encoder", "loss_value", "loss_policy"):
        assert key in out.keys()
        assert out[key].shape == ()
        assert torch.isfinite(out[key])
    assert set(loss.out_keys) >= {"loss_encoder", "loss_value", "loss_policy"}
    assert out["loss_encoder"].item() == pytest.approx(loss.encoder_loss(td)[0].item(), rel=1e-6)
    assert out["loss_encoder"].requires_grad and out["loss_value"].requires_grad and out["loss_policy"].requires_grad
    td2 = td.clone()
    loss.value_loss(td2, horizon=3)
    assert out["loss_policy"].item() == pytest.approx(loss.actor_loss(td2)[0].item(), rel=1e-5)


def test_set_keys_remaps_and_gives_same_losses():
    loss = make_loss()
    td = make_batch(seed=12)
    enc_default = loss.encoder_loss(td)[0].item()
    torch.manual_seed(0)
    val_default = loss.value_loss(td, horizon=3)[0].item()
    act_default = loss.actor_loss(td)[0].item()
    prio_default = td["priority"].clone()

    renamed = TensorDict(
        {
            "pixels_state": td["observation"],
            "act": td["action"],
            "next": {
                "rew": td["next", "reward"],
                "term": td["next", "terminated"],
                "pixels_state": td["next", "observation"],
            },
        },
        batch_size=td.batch_size,
    )
    loss.set_keys(
        observation="pixels_state",
        action="act",
        reward=("next", "rew"),
        terminated=("next", "term"),
        next_observation=("next", "pixels_state"),
        priority="td_priority",
    )
    assert loss.tensor_keys.observation == "pixels_state"
    assert loss.encoder_loss(renamed)[0].item() == pytest.approx(enc_default, rel=1e-6)
    torch.manual_seed(0)
    assert loss.value_loss(renamed, horizon=3)[0].item() == pytest.approx(val_default, rel=1e-6)
    assert loss.actor_loss(renamed)[0].item() == pytest.approx(act_default, rel=1e-6)
    torch.testing.assert_close(renamed["td_priority"], prio_default)
    assert "priority" not in renamed.keys()
    out = loss(renamed.clone())
    assert torch.isfinite(out["loss_encoder"]) and torch.isfinite(out["loss_value"])
    assert "pixels_state" in loss.in_keys


def test_state_dict_round_trip_restores_targets_and_reward_scales():
    loss = make_loss(seed=0)
    opt = torch.optim.AdamW(loss.parameters(), lr=1e-2)
    td = make_batch(seed=13)
    opt.zero_grad()
    (loss.encoder_loss(td)[0] + loss.value_loss(td, horizon=3)[0]).backward()
    opt.step()
    loss.sync_targets(4.0)  # r̄' = 1, r̄ = 4
    opt.zero_grad()
    (loss.encoder_loss(td)[0] + loss.value_loss(td, horizon=3)[0] + loss.actor_loss(td)[0]).backward()
    opt.step()  # online != target now

    sd = loss.state_dict()
    keys = list(sd.keys())
    assert "reward_scale" in keys and "target_reward_scale" in keys
    for prefix in ("_target_encoder.", "_target_critic.", "_target_policy."):
        assert any(k.startswith(prefix) for k in keys), prefix

    other = make_loss(seed=99)
    assert other.reward_scale.item() == 1.0 and other.target_reward_scale.item() == 0.0
    other.load_state_dict(sd)
    assert other.reward_scale.item() == 4.0
    assert other.target_reward_scale.item() == 1.0
    for a, b in (
        (loss.target_encoder, other.target_encoder),
        (loss.target_critic, other.target_critic),
        (loss.target_policy, other.target_policy),
        (loss.encoder, other.encoder),
        (loss.critic, other.critic),
        (loss.policy, other.policy),
    ):
        assert _equal(_snapshot(a), _snapshot(b))
    assert not _equal(_snapshot(other.encoder), _snapshot(other.target_encoder))
    # the restored loss computes the same values
    assert other.encoder_loss(td)[0].item() == pytest.approx(loss.encoder_loss(td)[0].item(), rel=1e-6)
