"""Pure tensor functions for MR.Q's math.

Every function here is stateless and framework-free (no Lightning, no TorchRL): the two-hot reward
representation (algorithm §4), the multi-step return (algorithm §6, quirk Q3), LAP priorities (algorithm §8), the
target-action realign step (algorithm §6), the DrQ random shift (algorithm §12) and the masked means of the
encoder loss (algorithm §5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "symexp",
    "symlog",
    "two_hot_bins",
    "two_hot",
    "two_hot_cross_entropy",
    "two_hot_decode",
    "multi_step_return",
    "lap_priority",
    "realign_action",
    "random_shift",
    "masked_mean",
]


def symexp(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * (exp(|x|) - 1), the inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def two_hot_bins(
    num_bins: int = 65,
    lower: float = -10.0,
    upper: float = 10.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Reward bin locations b_k = symexp(lower + (upper - lower) * k / (num_bins - 1)) (algorithm §4).

    With the defaults the bins are symmetric, ``b[32] == 0`` exactly and ``b[0] = -b[64] ≈ -22025.47``.
    """
    # linspace in float64 so that the middle bin is exactly 0 and the grid is symmetric.
    grid = torch.linspace(lower, upper, num_bins, dtype=torch.float64)
    return symexp(grid).to(device=device, dtype=dtype)


def two_hot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot encoding of scalars ``x`` (any shape, trailing singleton allowed) over ``bins``.

    k is the largest bin strictly below x (k = 0 when x equals the lowest bin); mass 1 - w goes to b_k and w to
    b_{k+1}, with w = (x - b_k) / (b_{k+1} - b_k). A value exactly on a bin puts all of its mass there. Values
    outside [b_0, b_last] are clamped first (the official code indexes out of range there: quirk Q8).

    Returns:
        Tensor of shape ``x.shape + (len(bins),)``, or ``x.shape[:-1] + (len(bins),)`` when x's last dim is 1
        (a column of rewards).
    """
    if x.dim() > 0 and x.shape[-1] == 1:
        x = x.squeeze(-1)
    return _two_hot(x, bins)


def _two_hot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot of every element of ``x``: output ``x.shape + (len(bins),)`` (no squeezing)."""
    bins = bins.to(dtype=x.dtype)
    x = x.clamp(bins[0], bins[-1])
    # searchsorted(left) = index of the first bin >= x, so minus one is the largest bin strictly below x.
    k = (torch.searchsorted(bins, x.contiguous(), right=False) - 1).clamp(0, bins.numel() - 2)
    lo, hi = bins[k], bins[k + 1]
    w = (x - lo) / (hi - lo)
    out = torch.zeros(*x.shape, bins.numel(), dtype=x.dtype, device=x.device)
    out.scatter_(-1, k.unsqueeze(-1), (1.0 - w).unsqueeze(-1))
    out.scatter_add_(-1, (k + 1).unsqueeze(-1), w.unsqueeze(-1))
    return out


def two_hot_cross_entropy(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy between reward logits ``[..., num_bins]`` and two-hot(target) (algorithm §4).

    Always evaluated in float32, whatever autocast is active: the outer bins reach ±22,025.

    Returns:
        Tensor of shape ``logits.shape[:-1] + (1,)``.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float()
        # One scalar target per logits row: [B, 1] or [B] targets for [B, bins] logits both work.
        target_dist = _two_hot(target.float().reshape(logits.shape[:-1]), bins.float())
        return -(target_dist * F.log_softmax(logits, dim=-1)).sum(-1, keepdim=True)


def two_hot_decode(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected value sum_k softmax(logits)_k * b_k, shape ``[..., 1]``. Not used in training (algorithm §4)."""
    return (F.softmax(logits.float(), dim=-1) * bins.float()).sum(-1, keepdim=True)


def multi_step_return(
    reward: torch.Tensor,
    not_done: torch.Tensor,
    gamma: float,
    official_quirks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """H-step discounted reward sum and bootstrap mask from ``[B, H]`` rewards and not-done flags (algorithm §6).

    Correct (default, paper Eq. 19): ``R = sum_t gamma^t r_t prod_{k<t} n_k``; the terminal transition's reward
    counts and nothing after it does. With ``official_quirks`` (quirk Q3) each reward is masked by its *own*
    flag instead: ``R = sum_t gamma^t r_t n_t``. The bootstrap mask is ``D = prod_t n_t`` in both cases.

    Returns:
        ``(R, D)``, each of shape ``[B, 1]``.
    """
    horizon = reward.shape[-1]
    discounts = gamma ** torch.arange(horizon, device=reward.device, dtype=reward.dtype)
    if official_quirks:
        weights = not_done
    else:
        # alive_t = prod_{k<t} n_k: 1 at t = 0, then the running product of the earlier flags.
        weights = torch.cumprod(torch.cat([torch.ones_like(not_done[..., :1]), not_done[..., :-1]], -1), -1)
    ret = (reward * weights * discounts).sum(-1, keepdim=True)
    bootstrap = not_done.prod(-1, keepdim=True)
    return ret, bootstrap


def lap_priority(
    q: torch.Tensor, target: torch.Tensor, alpha: float = 0.4, min_priority: float = 1.0
) -> torch.Tensor:
    """LAP priority ``max(max_i |Q_i - y|, min_priority) ** alpha`` per sample (algorithm §8).

    Args:
        q: ``[B, n_critics]`` critic predictions (before the optimizer step).
        target: ``[B, 1]`` TD target.

    Returns:
        ``[B]`` priorities, >= ``min_priority ** alpha``.
    """
    td = (q.float() - target.float()).abs().amax(dim=-1)
    return td.clamp(min=min_priority).pow(alpha)


def realign_action(action: torch.Tensor, discrete: bool) -> torch.Tensor:
    """Map a noisy target action back onto the action set (algorithm §6 step 4).

    Continuous: clip to [-1, 1]. Discrete: one-hot of the argmax.
    """
    if discrete:
        return F.one_hot(action.argmax(-1), action.shape[-1]).to(action.dtype)
    return action.clamp(-1.0, 1.0)


def random_shift(
    images: torch.Tensor, pad: int = 4, offsets: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """DrQ random shift: replicate-pad by ``pad`` then take an integer ``H x W`` crop (algorithm §12).

    Works on any dtype (uint8 frames included) because an integer crop of an edge-replicated image only copies
    pixels; this equals the official bilinear ``grid_sample`` at integer offsets. All channels (stacked frames)
    of one image share its shift.

    Args:
        images: ``[N, C, H, W]``.
        pad: padding on each side; offsets are drawn from ``{0, ..., 2 * pad}``.
        offsets: optional ``[N, 2]`` integer (dy, dx) offsets; ``(pad, pad)`` is the identity.
        generator: optional RNG for the offsets.
    """
    n, c, h, w = images.shape
    device = images.device
    if offsets is None:
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), device=device, generator=generator)
    offsets = offsets.to(device=device, dtype=torch.long)
    # Row y of the crop reads padded row y + dy, i.e. source row clamp(y + dy - pad) (edge replication).
    rows = (torch.arange(h, device=device) + offsets[:, :1] - pad).clamp(0, h - 1)  # [N, H]
    cols = (torch.arange(w, device=device) + offsets[:, 1:] - pad).clamp(0, w - 1)  # [N, W]
    flat_index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, flat_index).reshape(n, c, h, w)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values * mask`` over *all* entries: masked entries count in the denominator (algorithm §5)."""
    return (values * mask).mean()
