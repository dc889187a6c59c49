"""Tests for ``mrq_lightning.modules.networks`` (algorithm §3, §18 item 1).

Parameter-count tests build the full-size networks; behaviour tests use small dims where the algorithm's sizes are
not what is being checked.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mrq_lightning.modules.networks import Encoder, PixelStateEncoder, Policy, TwinCritic


def _count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Parameter counts (algorithm §3.10)
# ----------------------------------------------------------------------------------------------------------------


def test_param_count_halfcheetah():
    enc, critic, policy = Encoder((17,), 6), TwinCritic(), Policy(6)
    assert _count(enc) == 1_751_874
    assert _count(critic) == 1_576_962
    assert _count(policy) == 528_390
    assert _count(enc, critic, policy) == 3_857_226


def test_param_count_atari_18_actions():
    enc, critic, policy = Encoder((4, 84, 84), 18, pixels=True), TwinCritic(), Policy(18, discrete=True)
    assert _count(enc) == 2_052_674
    assert _count(critic) == 1_576_962
    assert _count(policy) == 534_546
    assert _count(enc, critic, policy) == 4_164_182


def test_param_count_dmc_visual():
    enc, critic, policy = Encoder((9, 84, 84), 6, pixels=True), TwinCritic(), Policy(6)
    assert _count(enc) == 2_051_042
    assert _count(enc, critic, policy) == 4_156_394


def test_param_count_humanoid():
    enc, critic, policy = Encoder((376,), 17), TwinCritic(), Policy(17)
    assert _count(enc) == 1_938_498
    assert _count(policy) == 534_033
    assert _count(enc, critic, policy) == 4_049_493


def test_param_count_dmc_dog():
    enc, critic, policy = Encoder((223,), 38), TwinCritic(), Policy(38)
    assert _count(enc) == 1_865_538
    assert _count(policy) == 544_806
    assert _count(enc, critic, policy) == 3_987_306


def test_conv_flat_dim_at_84():
    enc = PixelStateEncoder((4, 84, 84))
    assert enc.flat_dim == 32 * 7 * 7 == 1568
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4
    x = torch.zeros(1, 4, 84, 84)
    sizes = []
    for conv in convs:
        x = conv(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(32, 41, 41), (32, 20, 20), (32, 9, 9), (32, 7, 7)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (2, 2), (1, 1)]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    # flat dim is recomputed for other sizes: 64 -> 31 -> 15 -> 7 -> 5
    assert PixelStateEncoder((3, 64, 64)).flat_dim == 32 * 5 * 5


# ----------------------------------------------------------------------------------------------------------------
# Conventions: non-affine LayerNorm, Xavier-uniform gain sqrt(2), zero bias (algorithm §3.1)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_size_sets():
    torch.manual_seed(0)
    return {
        "halfcheetah": (Encoder((17,), 6), TwinCritic(), Policy(6)),
        "atari": (Encoder((4, 84, 84), 18, pixels=True), TwinCritic(), Policy(18, discrete=True)),
    }


def test_layernorms_have_no_affine_params(full_size_sets):
    for nets in full_size_sets.values():
        n_ln = 0
        for net in nets:
            for m in net.modules():
                if isinstance(m, nn.LayerNorm):
                    n_ln += 1
                    assert not m.elementwise_affine
                    assert m.weight is None and m.bias is None
                    assert m.eps == pytest.approx(1e-5)
                assert not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm))
        assert n_ln > 0
    # every parameter belongs to a Linear or Conv2d
    for nets in full_size_sets.values():
        for net in nets:
            owned = {id(p) for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) for p in m.parameters()}
            assert all(id(p) in owned for p in net.parameters())


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def test_xavier_uniform_gain_sqrt2_and_zero_bias(full_size_sets):
    n_layers = 0
    for nets in full_size_sets.values():
        for net in nets:
            for m in net.modules():
                if not isinstance(m, (nn.Linear, nn.Conv2d)):
                    continue
                n_layers += 1
                assert m.bias is not None
                assert torch.all(m.bias == 0), f"non-zero bias in {m}"
                fan_in, fan_out = _fans(m.weight)
                bound = math.sqrt(2.0) * math.sqrt(6.0 / (fan_in + fan_out))
                w = m.weight.detach()
                assert w.abs().max().item() <= bound * (1 + 1e-6), f"{m}: weight outside the Xavier bound"
                n = w.numel()
                # uniform(-bound, bound): std = bound / sqrt(3); max |w| gets close to the bound
                tol = 0.1 if n < 2000 else 0.05
                assert w.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=tol), f"{m}: std off"
                assert w.mean().abs().item() < 4 * bound / math.sqrt(3.0 * n) + 1e-8
                assert w.abs().max().item() >= bound * 0.9
    # HalfCheetah: enc (3 f + 1 emb + 3 g + 1 head) + critics 2*4 + policy 3 = 19
    # Atari: enc (4 conv + 1 proj + 1 emb + 3 g + 1 head) + 8 + 3 = 21
    assert n_layers == 19 + 21


# ----------------------------------------------------------------------------------------------------------------
# Encoder behaviour (algorithm §3.2-§3.6)
# ----------------------------------------------------------------------------------------------------------------

SMALL = dict(zs_dim=32, za_dim=16, zsa_dim=32, hidden_dim=32)


def _last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


def test_vector_zs_is_layernorm_then_elu():
    torch.manual_seed(1)
    enc = Encoder((17,), 6, **SMALL)
    s = torch.randn(64, 17) * 3
    zs = enc.encode_state(s)
    assert zs.shape == (64, 32)
    # ELU output is > -1
    assert torch.all(zs > -1.0)
    assert (zs < 0).any()
    # invert ELU: pre = zs for zs > 0, log(1 + zs) otherwise; the pre-activation must be layer-normalised
    pre = torch.where(zs > 0, zs, torch.log1p(zs.double()).float())
    torch.testing.assert_close(pre.mean(-1), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(pre.var(-1, unbiased=False), torch.ones(64), atol=1e-3, rtol=0)
    # no input normalisation: the first Linear sees the raw observation
    lin = [m for m in enc.state_encoder.modules() if isinstance(m, nn.Linear)][0]
    seen = []
    h = lin.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    enc.encode_state(s)
    h.remove()
    torch.testing.assert_close(seen[0], s, rtol=0, atol=0)


def test_vector_encoder_manual_forward():
    torch.manual_seed(2)
    enc = Encoder((5,), 3, **SMALL)
    lins = [m for m in enc.state_encoder.modules() if isinstance(m, nn.Linear)]
    assert len(lins) == 3
    s = torch.randn(4, 5)
    h = s
    for lin in lins:
        h = F.elu(F.layer_norm(F.linear(h, lin.weight, lin.bias), (lin.out_features,), eps=1e-5))
    torch.testing.assert_close(enc.encode_state(s), h)


def test_zsa_is_raw_linear_output():
    torch.manual_seed(3)
    enc = Encoder((8,), 4, **SMALL)
    zs = enc.encode_state(torch.randn(128, 8))
    a = torch.rand(128, 4) * 2 - 1
    with torch.no_grad():
        for p in enc.parameters():  # non-zero biases so the check is not vacuous
            p.add_(0.05 * torch.randn_like(p))
        zsa = enc.encode_state_action(zs, a)
        assert zsa.shape == (128, 32)
        # If z_sa is the raw output of the last Linear, scaling that layer's weight and bias scales z_sa exactly.
        # A LayerNorm after it would make z_sa invariant; an ELU would not be linear.
        last = _last_linear(enc.state_action_encoder)
        last.weight.mul_(3.0)
        last.bias.mul_(3.0)
        zsa3 = enc.encode_state_action(zs, a)
    torch.testing.assert_close(zsa3, 3.0 * zsa, rtol=1e-5, atol=1e-5)
    # with the larger scale, values far below -1 appear (impossible after an ELU), rows not normalised
    assert zsa3.min().item() < -1.0
    assert (zsa3.var(-1, unbiased=False) - 1).abs().max().item() > 0.1


def test_zsa_can_be_below_minus_one_at_init_full_size():
    torch.manual_seed(4)
    enc = Encoder((17,), 6)
    with torch.no_grad():
        zs = enc.encode_state(torch.randn(64, 17))
        zsa = enc.encode_state_action(zs, torch.rand(64, 6) * 2 - 1)
    assert zsa.shape == (64, 512)
    assert zsa.min().item() < -1.0


def test_state_action_encoder_manual_forward():
    torch.manual_seed(5)
    enc = Encoder((6,), 3, **SMALL)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    zs = torch.randn(4, 32)
    a = torch.rand(4, 3) * 2 - 1
    sae = enc.state_action_encoder
    lins = [m for m in sae.modules() if isinstance(m, nn.Linear)]
    emb, l1, l2, l3 = lins
    assert emb.in_features == 3 and emb.out_features == 16
    za = F.elu(F.linear(a, emb.weight, emb.bias))  # no LayerNorm on the action embedding
    h = torch.cat([zs, za], -1)
    h = F.elu(F.layer_norm(F.linear(h, l1.weight, l1.bias), (32,)))
    h = F.elu(F.layer_norm(F.linear(h, l2.weight, l2.bias), (32,)))
    expected = F.linear(h, l3.weight, l3.bias)
    torch.testing.assert_close(enc.encode_state_action(zs, a), expected)


def test_mdp_head_split_sizes_and_order_full_size():
    torch.manual_seed(6)
    enc = Encoder((17,), 6)
    zsa = torch.randn(3, 512)
    done, next_zs, logits = enc.predict(zsa)
    assert done.shape == (3, 1)
    assert next_zs.shape == (3, 512)
    assert logits.shape == (3, 65)
    head = _last_linear(enc.mdp_head)
    assert (head.in_features, head.out_features) == (512, 578)
    with torch.no_grad():
        head.bias.copy_(torch.arange(578, dtype=torch.float32))
        done, next_zs, logits = enc.predict(torch.zeros(1, 512))
    # index 0 -> done, 1..512 -> next zs, 513..577 -> reward logits; all raw
    assert done.item() == 0.0
    torch.testing.assert_close(next_zs[0], torch.arange(1, 513, dtype=torch.float32))
    torch.testing.assert_close(logits[0], torch.arange(513, 578, dtype=torch.float32))


def _manual_pixel_forward(enc: Encoder, obs_uint8: torch.Tensor) -> torch.Tensor:
    convs = [m for m in enc.state_encoder.modules() if isinstance(m, nn.Conv2d)]
    proj = _last_linear(enc.state_encoder)
    x = obs_uint8.to(torch.float32) / 255.0 - 0.5
    for conv, stride in zip(convs, (2, 2, 2, 1)):
        x = F.elu(F.conv2d(x, conv.weight, conv.bias, stride=stride))
    x = x.flatten(1)
    assert x.shape[1] == 1568
    return F.elu(F.layer_norm(F.linear(x, proj.weight, proj.bias), (proj.out_features,)))


def test_pixel_encoder_scales_uint8_and_matches_manual_forward():
    torch.manual_seed(7)
    enc = Encoder((4, 84, 84), 18, pixels=True, zs_dim=32, za_dim=16, zsa_dim=32, hidden_dim=32)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.01 * torch.randn_like(p))
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    zs = enc.encode_state(obs)
    assert zs.shape == (3, 32)
    assert zs.dtype == torch.float32
    torch.testing.assert_close(zs, _manual_pixel_forward(enc, obs), rtol=1e-5, atol=1e-5)
    # all-128 frames are (128/255 - 0.5) ≈ 0.002 after scaling, NOT 128 or 0.5
    mid = torch.full((1, 4, 84, 84), 128, dtype=torch.uint8)
    torch.testing.assert_close(enc.encode_state(mid), _manual_pixel_forward(enc, mid), rtol=1e-5, atol=1e-5)
    # scaling is x/255 - 0.5 (not x/255): distinguishable on a constant image
    convs = [m for m in enc.state_encoder.modules() if isinstance(m, nn.Conv2d)]
    x = mid.float() / 255.0  # missing "- 0.5"
    for conv, stride in zip(convs, (2, 2, 2, 1)):
        x = F.elu(F.conv2d(x, conv.weight, conv.bias, stride=stride))
    proj = _last_linear(enc.state_encoder)
    unshifted = F.elu(F.layer_norm(F.linear(x.flatten(1), proj.weight, proj.bias), (32,)))
    assert not torch.allclose(enc.encode_state(mid), unshifted, atol=1e-3)


def test_pixel_encoder_extra_batch_dims():
    torch.manual_seed(8)
    enc = Encoder((3, 84, 84), 2, pixels=True, **SMALL)
    obs = torch.randint(0, 256, (2, 5, 3, 84, 84), dtype=torch.uint8)
    zs = enc.encode_state(obs)
    assert zs.shape == (2, 5, 32)
    torch.testing.assert_close(zs[1, 3], enc.encode_state(obs[1, 3:4])[0], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Critic (algorithm §3.7)
# ----------------------------------------------------------------------------------------------------------------


def test_twin_critic_shape_and_independence():
    torch.manual_seed(9)
    critic = TwinCritic(zsa_dim=32, hidden_dim=32)
    zsa = torch.randn(10, 32)
    q = critic(zsa)
    assert q.shape == (10, 2)
    assert not torch.allclose(q[:, 0], q[:, 1])  # two independent copies
    # each critic: 3 dense blocks (ELU) + Linear(->1)
    lins = [m for m in critic.modules() if isinstance(m, nn.Linear)]
    assert len(lins) == 8
    h = zsa
    for lin in lins[:3]:
        h = F.elu(F.layer_norm(F.linear(h, lin.weight, lin.bias), (32,)))
    q1 = F.linear(h, lins[3].weight, lins[3].bias)
    torch.testing.assert_close(q[:, :1], q1)


# ----------------------------------------------------------------------------------------------------------------
# Policy (algorithm §3.8)
# ----------------------------------------------------------------------------------------------------------------


def test_continuous_policy_is_tanh_of_pre_activation():
    torch.manual_seed(10)
    policy = Policy(6, zs_dim=32, hidden_dim=32)
    with torch.no_grad():
        _last_linear(policy).weight.mul_(5.0)  # push some pre-activations well past ±1
    zs = torch.randn(50, 32)
    a, u = policy(zs)
    assert a.shape == u.shape == (50, 6)
    torch.testing.assert_close(a, torch.tanh(u))
    assert torch.all(a.abs() <= 1.0)
    assert torch.all(a[u.abs() < 8].abs() < 1.0)  # open interval wherever fp32 tanh has not saturated
    assert u.abs().max().item() > 1.0
    # ReLU hidden activations, plain output layer
    lins = [m for m in policy.modules() if isinstance(m, nn.Linear)]
    h = zs
    for lin in lins[:2]:
        h = F.relu(F.layer_norm(F.linear(h, lin.weight, lin.bias), (32,)))
    torch.testing.assert_close(u, F.linear(h, lins[2].weight, lins[2].bias))
    # deterministic
    a2, _ = policy(zs)
    torch.testing.assert_close(a, a2, rtol=0, atol=0)


def test_discrete_policy_is_soft_stochastic_distribution():
    torch.manual_seed(11)
    policy = Policy(5, discrete=True, zs_dim=32, hidden_dim=32)
    zs = torch.randn(20, 32)
    a1, u1 = policy(zs)
    a2, u2 = policy(zs)
    assert a1.shape == (20, 5)
    torch.testing.assert_close(a1.sum(-1), torch.ones(20))
    assert torch.all(a1 > 0) and torch.all(a1 < 1)  # soft, not one-hot
    assert a1.max().item() < 0.99
    torch.testing.assert_close(u1, u2, rtol=0, atol=0)  # same logits ...
    assert not torch.allclose(a1, a2)  # ... fresh Gumbel noise on every call


def test_discrete_policy_gumbel_temperature_is_10():
    # a = softmax((u + g) / tau) => tau * (log a_i - log a_j) = (u_i - u_j) + (g_i - g_j),
    # and g_i - g_j (i.i.d. Gumbel(0,1)) has mean 0 and variance pi^2 / 3.
    torch.manual_seed(12)
    policy = Policy(3, discrete=True, zs_dim=16, hidden_dim=16)
    assert policy.gumbel_tau == 10
    zs = torch.randn(1, 16).expand(20000, 16)
    with torch.no_grad():
        a, u = policy(zs)
    d = 10.0 * (a[:, 0].log() - a[:, 1].log()) - (u[:, 0] - u[:, 1])
    assert d.mean().abs().item() < 0.08  # s.e. ≈ 1.81 / sqrt(20000) ≈ 0.013
    assert d.var().item() == pytest.approx(math.pi**2 / 3, rel=0.06)
