"""Tests for ``mrq_lightning.functional`` (algorithm §4, §5, §6, §8, §12, §16 Q3/Q8, §18 items 2 and 7).

Every expected value below is derived from the algorithm's formulas by hand (or with an independent reference
computation written here), never pasted from the code's output.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mrq_lightning import functional as MF

# ----------------------------------------------------------------------------------------------------------------
# Reward bins (algorithm §4)
# ----------------------------------------------------------------------------------------------------------------


def _reference_bins_f64() -> torch.Tensor:
    """b_k = symexp(-10 + 20 k / 64), k = 0..64, computed independently in float64."""
    vals = []
    for k in range(65):
        x = -10.0 + 20.0 * k / 64.0
        vals.append(math.copysign(math.expm1(abs(x)), x))
    return torch.tensor(vals, dtype=torch.float64)


def test_symexp_symlog_are_inverse_and_match_definition():
    x = torch.tensor([-10.0, -1.0, -0.25, 0.0, 0.25, 1.0, 10.0], dtype=torch.float64)
    expected = torch.sign(x) * (torch.exp(x.abs()) - 1.0)
    torch.testing.assert_close(MF.symexp(x), expected)
    torch.testing.assert_close(MF.symlog(MF.symexp(x)), x)


def test_bins_count_symmetry_and_landmarks():
    b = MF.two_hot_bins()
    assert b.shape == (65,)
    assert b.dtype == torch.float32
    # b_32 = symexp(0) = 0 exactly.
    assert b[32].item() == 0.0
    # symmetric: b_k = -b_{64-k}
    torch.testing.assert_close(b, -b.flip(0), rtol=0, atol=0)
    # innermost neighbours: symexp(20/64) = e^0.3125 - 1 ≈ 0.36684
    assert b[33].item() == pytest.approx(math.expm1(0.3125), rel=1e-6)
    assert b[33].item() == pytest.approx(0.3668, abs=1e-4)
    assert b[31].item() == pytest.approx(-0.3668, abs=1e-4)
    # outermost: e^10 - 1 ≈ 22025.4658
    assert b[64].item() == pytest.approx(22025.47, abs=0.01)
    assert b[0].item() == pytest.approx(-22025.47, abs=0.01)
    # strictly increasing
    assert torch.all(b[1:] > b[:-1])
    torch.testing.assert_close(b.double(), _reference_bins_f64(), rtol=1e-6, atol=0)


def test_bins_float64_match_reference():
    b = MF.two_hot_bins(dtype=torch.float64)
    torch.testing.assert_close(b, _reference_bins_f64(), rtol=1e-12, atol=1e-12)
    assert b[32].item() == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Two-hot encoding (algorithm §4, §16 Q8, §18 item 2)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bins() -> torch.Tensor:
    return MF.two_hot_bins()


@pytest.fixture(scope="module")
def bins64() -> torch.Tensor:
    return MF.two_hot_bins(dtype=torch.float64)


def test_two_hot_zero_reward_all_mass_on_middle_bin(bins):
    t = MF.two_hot(torch.zeros(1, 1), bins)
    assert t.shape == (1, 65)
    expected = torch.zeros(1, 65)
    expected[0, 32] = 1.0
    torch.testing.assert_close(t, expected, rtol=0, atol=0)


@pytest.mark.parametrize("k", [0, 1, 5, 20, 31, 32, 33, 47, 63, 64])
def test_two_hot_exactly_on_bin_gives_mass_one(bins, k):
    t = MF.two_hot(bins[k].reshape(1, 1), bins)
    expected = torch.zeros(1, 65)
    expected[0, k] = 1.0
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-6)


def test_two_hot_on_every_bin_batched(bins):
    t = MF.two_hot(bins.clone(), bins)
    torch.testing.assert_close(t, torch.eye(65), rtol=0, atol=1e-6)


@pytest.mark.parametrize("k,frac", [(0, 0.5), (10, 0.25), (31, 0.75), (32, 0.1), (40, 0.9), (63, 0.3)])
def test_two_hot_between_bins_splits_linearly(bins64, k, frac):
    lo, hi = bins64[k], bins64[k + 1]
    r = lo + frac * (hi - lo)
    t = MF.two_hot(r.reshape(1, 1), bins64)
    expected = torch.zeros(1, 65, dtype=torch.float64)
    expected[0, k] = 1.0 - frac
    expected[0, k + 1] = frac
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-9)


def test_two_hot_small_positive_reward_neighbours(bins64):
    # r = 0.1 lies between b_32 = 0 and b_33 = e^0.3125 - 1: w = 0.1 / b_33.
    t = MF.two_hot(torch.tensor([[0.1]], dtype=torch.float64), bins64)
    w = 0.1 / math.expm1(0.3125)
    assert t[0, 32].item() == pytest.approx(1.0 - w, abs=1e-12)
    assert t[0, 33].item() == pytest.approx(w, abs=1e-12)
    assert t[0].sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (t[0] != 0).sum().item() == 2


def test_two_hot_negative_reward_neighbours(bins64):
    # r = -1: between b_k <= -1 < b_{k+1}. symlog(-1) = -log 2 ≈ -0.693 -> grid position (x + 10) * 64 / 20 ≈ 29.78
    t = MF.two_hot(torch.tensor([[-1.0]], dtype=torch.float64), bins64)
    ref = _reference_bins_f64()
    lo, hi = ref[29], ref[30]
    assert lo < -1.0 < hi
    w = (-1.0 - lo) / (hi - lo)
    assert t[0, 29].item() == pytest.approx(1.0 - w.item(), abs=1e-12)
    assert t[0, 30].item() == pytest.approx(w.item(), abs=1e-12)


def test_two_hot_sums_to_one_and_recovers_expected_value(bins, bins64):
    g = torch.Generator().manual_seed(0)
    # many rewards across the whole range, on a symlog scale and near zero
    r64 = torch.cat(
        [
            MF.symexp(torch.rand(2000, generator=g, dtype=torch.float64) * 20 - 10),
            torch.rand(500, generator=g, dtype=torch.float64) * 4 - 2,
            torch.tensor([0.0, 1.0, -1.0, 1e-6, -1e-6, 22025.0, -22025.0], dtype=torch.float64),
        ]
    )
    t64 = MF.two_hot(r64, bins64)
    assert t64.shape == (r64.numel(), 65)
    assert torch.all(t64 >= 0)
    torch.testing.assert_close(t64.sum(-1), torch.ones_like(r64), rtol=0, atol=1e-12)
    # at most two non-zero entries, and adjacent
    nz = (t64 > 0).sum(-1)
    assert torch.all(nz <= 2)
    torch.testing.assert_close((t64 * bins64).sum(-1), r64, rtol=1e-10, atol=1e-10)

    # float32 too (within fp32 error relative to the bin magnitudes)
    r32 = r64.float()
    t32 = MF.two_hot(r32, bins)
    torch.testing.assert_close(t32.sum(-1), torch.ones_like(r32), rtol=0, atol=1e-5)
    torch.testing.assert_close((t32 * bins).sum(-1), r32, rtol=1e-5, atol=1e-5)


def test_two_hot_trailing_singleton_shape(bins):
    r = torch.tensor([[0.0], [1.5], [-3.0]])
    t = MF.two_hot(r, bins)
    assert t.shape == (3, 65)
    r2 = torch.zeros(4, 5)
    assert MF.two_hot(r2, bins).shape == (4, 5, 65)


@pytest.mark.parametrize("r,edge", [(1e6, 64), (22026.0, 64), (1e30, 64), (-1e6, 0), (-22026.0, 0), (-1e30, 0)])
def test_two_hot_out_of_range_clamps_to_edge_bin(bins, r, edge):
    # Algorithm §4 / §16 Q8: clamp r to [b_0, b_64] first -> all the mass on the edge bin; no index error, no NaN.
    t = MF.two_hot(torch.tensor([[r]]), bins)
    assert torch.isfinite(t).all()
    expected = torch.zeros(1, 65)
    expected[0, edge] = 1.0
    torch.testing.assert_close(t, expected, rtol=0, atol=1e-6)


def test_two_hot_out_of_range_mixed_batch(bins):
    r = torch.tensor([-5e4, -1.0, 0.0, 3.0, 5e4])
    t = MF.two_hot(r, bins)
    assert torch.isfinite(t).all()
    torch.testing.assert_close(t.sum(-1), torch.ones(5), rtol=0, atol=1e-6)
    assert t[0, 0].item() == pytest.approx(1.0)
    assert t[-1, 64].item() == pytest.approx(1.0)
    assert t[2, 32].item() == pytest.approx(1.0)


def test_cross_entropy_on_bin_equals_neg_log_softmax(bins):
    g = torch.Generator().manual_seed(1)
    idx = torch.tensor([0, 5, 31, 32, 33, 50, 64])
    logits = torch.randn(len(idx), 65, generator=g)
    target = bins[idx].unsqueeze(-1)  # [B, 1]
    ce = MF.two_hot_cross_entropy(logits, target, bins)
    assert ce.shape == (len(idx), 1)
    expected = -F.log_softmax(logits, -1).gather(-1, idx.unsqueeze(-1))
    torch.testing.assert_close(ce, expected, rtol=1e-5, atol=1e-5)
    # a flat target [B] gives the same per-sample [B, 1] result
    torch.testing.assert_close(MF.two_hot_cross_entropy(logits, bins[idx], bins), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("horizon", [3, 1])
def test_cross_entropy_shape_follows_logits(bins, horizon):
    # Documented contract: result shape is logits.shape[:-1] + (1,), one CE per (sample, step) -- algorithm §4 "per
    # sample". A [B, H] reward target with H == 1 must not be confused with a trailing singleton of a [B] target.
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, horizon, 65, generator=g)
    idx = torch.randint(0, 65, (4, horizon), generator=g)
    ce = MF.two_hot_cross_entropy(logits, bins[idx], bins)
    assert ce.shape == (4, horizon, 1)
    expected = -F.log_softmax(logits, -1).gather(-1, idx.unsqueeze(-1))
    torch.testing.assert_close(ce, expected, rtol=1e-5, atol=1e-5)


def test_cross_entropy_between_bins_is_weighted(bins64):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 65, generator=g, dtype=torch.float64)
    r = bins64[40] + 0.3 * (bins64[41] - bins64[40])
    ce = MF.two_hot_cross_entropy(logits, r.reshape(1, 1), bins64)
    lsm = F.log_softmax(logits, -1)[0]
    expected = -(0.7 * lsm[40] + 0.3 * lsm[41])
    assert ce.shape == (1, 1)
    assert ce.item() == pytest.approx(expected.item(), abs=1e-6)


def test_cross_entropy_out_of_range_is_finite(bins):
    logits = torch.zeros(2, 65)
    ce = MF.two_hot_cross_entropy(logits, torch.tensor([[1e7], [-1e7]]), bins)
    assert torch.isfinite(ce).all()
    # uniform logits: CE = log(65) for any one-hot target
    torch.testing.assert_close(ce, torch.full((2, 1), math.log(65.0)), rtol=1e-5, atol=1e-5)


def test_cross_entropy_is_float32_under_bf16_autocast(bins):
    g = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(8, 65)
    x = torch.randn(4, 8, generator=g)
    target = torch.tensor([[0.0], [1.0], [100.0], [-20000.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        assert logits.dtype == torch.bfloat16  # sanity: autocast is really active
        ce = MF.two_hot_cross_entropy(logits, target, bins)
    assert ce.dtype == torch.float32
    assert ce.shape == (4, 1)
    expected = MF.two_hot_cross_entropy(logits.float(), target, bins)
    torch.testing.assert_close(ce, expected)


def test_two_hot_decode_expected_value(bins):
    # softmax putting all mass on one bin decodes to that bin
    logits = torch.full((2, 65), -1e4)
    logits[0, 40] = 0.0
    logits[1, 32] = 0.0
    dec = MF.two_hot_decode(logits, bins)
    assert dec.shape == (2, 1)
    torch.testing.assert_close(dec, torch.stack([bins[40], bins[32]]).unsqueeze(-1))
    # uniform logits -> mean of symmetric bins = 0
    assert MF.two_hot_decode(torch.zeros(1, 65), bins).abs().item() < 1e-2


# ----------------------------------------------------------------------------------------------------------------
# Multi-step return (algorithm §6, §16 Q3)
# ----------------------------------------------------------------------------------------------------------------

G = 0.9


def _r(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_multi_step_return_no_terminal_both_formulas():
    r = _r([1.0, 2.0, 4.0])
    n = _r([1.0, 1.0, 1.0])
    for quirks in (False, True):
        R, D = MF.multi_step_return(r, n, G, official_quirks=quirks)
        assert R.shape == (1, 1) and D.shape == (1, 1)
        # 1 + 0.9 * 2 + 0.81 * 4 = 6.04
        assert R.item() == pytest.approx(6.04, abs=1e-12)
        assert D.item() == 1.0


def test_multi_step_return_correct_formula_terminals():
    r = _r([1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [3.0, 0.0, 5.0])
    n = _r([0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    R, D = MF.multi_step_return(r, n, G)
    assert R.shape == (4, 1) and D.shape == (4, 1)
    # terminal at 0: only r_0 (terminal reward counted, later ones excluded)
    # terminal at 1: r_0 + γ r_1 = 1 + 1.8
    # terminal at 2: r_0 + γ r_1 + γ² r_2 = 6.04
    # Q3 example window [T, T+1, T+2] starting at the terminal: correct gives r_T = 3
    torch.testing.assert_close(R, _r([1.0], [2.8], [6.04], [3.0]), rtol=0, atol=1e-12)
    torch.testing.assert_close(D, torch.zeros(4, 1, dtype=torch.float64), rtol=0, atol=0)


def test_multi_step_return_official_formula_terminals():
    r = _r([1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [1.0, 2.0, 4.0], [3.0, 0.0, 5.0])
    n = _r([0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    R, D = MF.multi_step_return(r, n, G, official_quirks=True)
    # official: sum_t γ^t r_t n_t (terminal reward dropped, post-terminal rewards kept)
    # terminal at 0: 0.9 * 2 + 0.81 * 4 = 5.04
    # terminal at 1: 1 + 0.81 * 4 = 4.24
    # terminal at 2: 1 + 0.9 * 2 = 2.8
    # Q3 example: γ² r_{next-ep,0} = 0.81 * 5 = 4.05 instead of r_T = 3
    torch.testing.assert_close(R, _r([5.04], [4.24], [2.8], [4.05]), rtol=0, atol=1e-12)
    torch.testing.assert_close(D, torch.zeros(4, 1, dtype=torch.float64), rtol=0, atol=0)


def test_multi_step_return_default_gamma_and_bootstrap():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.5, -2.0, 3.0]])
    n = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    R, D = MF.multi_step_return(r, n, 0.99)
    expected = torch.tensor([[1 + 0.99 + 0.99**2], [0.5 - 2 * 0.99 + 3 * 0.99**2]])
    torch.testing.assert_close(R, expected)
    torch.testing.assert_close(D, torch.ones(2, 1))


def test_multi_step_return_bootstrap_is_product_of_flags():
    n = _r([1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 0])
    r = torch.zeros_like(n)
    for quirks in (False, True):
        _, D = MF.multi_step_return(r, n, G, official_quirks=quirks)
        torch.testing.assert_close(D, _r([1.0], [0.0], [0.0], [0.0], [0.0]), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# LAP priorities (algorithm §6, §8)
# ----------------------------------------------------------------------------------------------------------------


def test_lap_priority_floor_and_exponent():
    y = torch.tensor([[10.0], [0.0], [5.0], [-3.0]])
    q = torch.tensor(
        [
            [10.5, 9.7],  # |δ| = (0.5, 0.3) -> floor 1 -> 1^0.4 = 1
            [32.0, 2.0],  # max |δ| = 32 -> 32^0.4 = 4
            [6.0, 5.0 - 243.0],  # max |δ| = 243 -> 243^0.4 = 9
            [-3.0, -3.0],  # |δ| = 0 -> 1
        ]
    )
    p = MF.lap_priority(q, y)
    assert p.shape == (4,)
    torch.testing.assert_close(p, torch.tensor([1.0, 4.0, 9.0, 1.0]), rtol=1e-6, atol=1e-6)


def test_lap_priority_uses_max_over_critics_not_mean():
    y = torch.zeros(1, 1)
    q = torch.tensor([[1.0, -32.0]])
    assert MF.lap_priority(q, y).item() == pytest.approx(4.0, rel=1e-6)
    q = torch.tensor([[-32.0, 1.0]])
    assert MF.lap_priority(q, y).item() == pytest.approx(4.0, rel=1e-6)


def test_lap_priority_always_at_least_one():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1000, 2, generator=g) * 3
    y = torch.randn(1000, 1, generator=g) * 3
    p = MF.lap_priority(q, y)
    assert torch.all(p >= 1.0)
    expected = torch.clamp((q - y).abs().amax(-1), min=1.0) ** 0.4
    torch.testing.assert_close(p, expected)


# ----------------------------------------------------------------------------------------------------------------
# Realign (algorithm §6 step 4)
# ----------------------------------------------------------------------------------------------------------------


def test_realign_continuous_clips():
    a = torch.tensor([[-1.5, 0.3, 2.0, -0.99, 1.0]])
    out = MF.realign_action(a, discrete=False)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.3, 1.0, -0.99, 1.0]]))


def test_realign_discrete_one_hot_argmax():
    a = torch.tensor([[0.1, 0.7, 0.2], [0.5, -0.2, 0.55], [1.2, 0.0, -0.1]])
    out = MF.realign_action(a, discrete=True)
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(out, expected)
    assert out.dtype == a.dtype


# ----------------------------------------------------------------------------------------------------------------
# Random shift (algorithm §12, §18 item 7)
# ----------------------------------------------------------------------------------------------------------------


def _padded(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    return F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")


def _all_crops(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """[9, 9, N, C, H, W]: crop (dy, dx) of the replicate-padded float images."""
    n, c, h, w = images.shape
    p = _padded(images, pad)
    return torch.stack(
        [torch.stack([p[:, :, dy : dy + h, dx : dx + w] for dx in range(2 * pad + 1)]) for dy in range(2 * pad + 1)]
    )


def _identify_offsets(images: torch.Tensor, shifted: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """For each image, the unique (dy, dx) whose padded crop equals the output (all channels); asserts it exists."""
    crops = _all_crops(images, pad)  # [9, 9, N, C, H, W]
    match = (crops == shifted.float().unsqueeze(0).unsqueeze(0)).flatten(3).all(-1)  # [9, 9, N]
    counts = match.flatten(0, 1).sum(0)
    assert torch.all(counts == 1), "each output must equal exactly one replicate-padded crop (same for all channels)"
    flat = match.flatten(0, 1).float().argmax(0)
    return torch.stack([flat // (2 * pad + 1), flat % (2 * pad + 1)], -1)


def _rand_images(n, c, h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    return torch.rand(n, c, h, w, generator=g) * 255


def test_random_shift_center_offset_is_identity():
    x = _rand_images(3, 9, 84, 84)
    out = MF.random_shift(x, pad=4, offsets=torch.full((3, 2), 4))
    torch.testing.assert_close(out, x, rtol=0, atol=0)


def test_random_shift_zero_offset_is_top_left_crop_of_replicate_pad():
    x = _rand_images(2, 3, 84, 84, seed=1)
    out = MF.random_shift(x, pad=4, offsets=torch.zeros(2, 2, dtype=torch.long))
    ref = _padded(x)[:, :, 0:84, 0:84]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # the top-left 4x4 block is the replicated corner pixel
    assert torch.all(out[:, :, :5, :5] == x[:, :, :1, :1])


def test_random_shift_max_offset_is_bottom_right_crop():
    x = _rand_images(2, 3, 84, 84, seed=2)
    out = MF.random_shift(x, pad=4, offsets=torch.full((2, 2), 8))
    ref = _padded(x)[:, :, 8:92, 8:92]
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_random_shift_asymmetric_offsets_are_dy_dx():
    # The documented order of `offsets` is (dy, dx): rows first.
    x = _rand_images(2, 2, 20, 24, seed=3)
    offs = torch.tensor([[2, 6], [7, 1]])
    out = MF.random_shift(x, pad=4, offsets=offs)
    p = _padded(x)
    torch.testing.assert_close(out[0], p[0, :, 2:22, 6:30], rtol=0, atol=0)
    torch.testing.assert_close(out[1], p[1, :, 7:27, 1:25], rtol=0, atol=0)


def test_random_shift_uint8_preserved_and_exact():
    x = _rand_images(4, 4, 84, 84, seed=4, dtype=torch.uint8)
    offs = torch.tensor([[0, 0], [8, 8], [3, 5], [4, 4]])
    out = MF.random_shift(x, offsets=offs)
    assert out.dtype == torch.uint8
    assert out.shape == x.shape
    p = _padded(x)
    for i, (dy, dx) in enumerate(offs.tolist()):
        torch.testing.assert_close(out[i].float(), p[i, :, dy : dy + 84, dx : dx + 84], rtol=0, atol=0)
    # random offsets on uint8 work too
    out2 = MF.random_shift(x, generator=torch.Generator().manual_seed(0))
    assert out2.dtype == torch.uint8
    _identify_offsets(x, out2)


def test_random_shift_all_channels_share_one_shift():
    x = _rand_images(64, 9, 16, 16, seed=5)
    out = MF.random_shift(x, generator=torch.Generator().manual_seed(1))
    # _identify_offsets requires one crop to match *all* channels of the image
    offs = _identify_offsets(x, out)
    assert torch.all((offs >= 0) & (offs <= 8))


def test_random_shift_independent_per_image():
    # the same image repeated: every copy gets its own shift
    base = _rand_images(1, 3, 12, 12, seed=6)
    x = base.expand(300, -1, -1, -1).contiguous()
    out = MF.random_shift(x, generator=torch.Generator().manual_seed(2))
    offs = _identify_offsets(x, out)
    # offsets drawn uniformly from {0..8}^2: with 300 images every dy and every dx value appears
    # (P(a given value missing) = (8/9)^300 ≈ 4e-16)
    assert set(offs[:, 0].tolist()) == set(range(9))
    assert set(offs[:, 1].tolist()) == set(range(9))
    assert len({tuple(o) for o in offs.tolist()}) > 60  # of 81 possible pairs (expected ≈ 79)
    # dy and dx are not tied together
    assert (offs[:, 0] != offs[:, 1]).float().mean() > 0.7
    # roughly uniform: mean offset ≈ 4
    assert abs(offs.float().mean().item() - 4.0) < 0.5


# ----------------------------------------------------------------------------------------------------------------
# Masked mean (algorithm §5)
# ----------------------------------------------------------------------------------------------------------------


def test_masked_mean_counts_masked_entries_in_denominator():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    m = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # (1 + 3) / 4 = 1, not (1 + 3) / 2 = 2
    assert MF.masked_mean(v, m).item() == pytest.approx(1.0)
    v2 = torch.tensor([[2.0, 4.0], [6.0, 8.0]])
    m2 = torch.tensor([[1.0], [0.0]])  # broadcast over the last dim
    assert MF.masked_mean(v2, m2).item() == pytest.approx((2 + 4) / 4)
    assert MF.masked_mean(v, torch.zeros(4)).item() == 0.0
