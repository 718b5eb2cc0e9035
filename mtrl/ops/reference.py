"""Plain-PyTorch reference of the categorical TD target and loss: the documented semantics.

These functions are the executable specification the fused kernels (``mtrl.ops.td_target``) are
tested against (brc-spec §2.2 critic update, §3.2 C51 projection, §3.3 read-out). They are written
the way a careful PyTorch user would (softmax, ``scatter_add_`` along the atoms, log-softmax
cross-entropy), so they also serve as the fair baseline of ``benchmarks/bench_td_target.py``.

Shapes: ``E`` ensemble members, ``B`` batch, ``K`` atoms; atoms ``z_j = v_min + j (v_max - v_min)
/ (K - 1)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "categorical_cross_entropy_reference",
    "categorical_projection",
    "categorical_td_target_reference",
    "hl_gauss_target_reference",
]

HL_GAUSS_SIGMA_BINS = 0.75
"""Default HL-Gauss standard deviation in bin widths (Farebrother et al. 2024)."""


def categorical_projection(atoms: Tensor, probs: Tensor, v_min: float, v_max: float) -> Tensor:
    """C51 projection of mass ``probs`` at positions ``atoms`` (both (B, K)) onto the support.

    Positions are clipped to [v_min, v_max]; b = (z - v_min) / dz, l = floor(b), u = ceil(b);
    bin l gets p (u - b) plus p on an exact hit (l == u), bin u gets p (b - l) (spec §3.2).
    Returns (B, K) in the dtype of ``probs``.
    """
    num_atoms = probs.shape[-1]
    delta = (v_max - v_min) / (num_atoms - 1)
    b = ((atoms.clamp(v_min, v_max) - v_min) / delta).clamp(0, num_atoms - 1)
    # A NaN position (e.g. from a NaN reward) keeps its NaN mass but indexes bin 0, so the NaN
    # shows up in the target row instead of as an out-of-range scatter index.
    b_index = torch.nan_to_num(b, nan=0.0)
    lower, upper = b_index.floor(), b_index.ceil()
    mass_lower = probs * (upper - b) + probs * (lower == upper).to(probs.dtype)
    mass_upper = probs * (b - lower)
    target = torch.zeros_like(probs)
    target.scatter_add_(-1, lower.long(), mass_lower)
    target.scatter_add_(-1, upper.long(), mass_upper)
    return target


def hl_gauss_target_reference(
    value: Tensor, v_min: float, v_max: float, num_atoms: int, sigma: float | None = None
) -> Tensor:
    """HL-Gauss histogram (B, K) of a Normal(value, sigma) over bins centred on the atoms.

    ``value`` (B,) is clamped into [v_min, v_max] first (far outside, the erf differences are 0/0).
    Bin i covers [z_i - dz/2, z_i + dz/2]; the histogram is renormalised over the K bins.
    ``sigma`` defaults to 0.75 bin widths.
    """
    delta = (v_max - v_min) / (num_atoms - 1)
    sigma = HL_GAUSS_SIGMA_BINS * delta if sigma is None else sigma
    dtype = value.dtype if value.dtype == torch.float64 else torch.float32
    edges = v_min - delta / 2 + delta * torch.arange(num_atoms + 1, dtype=dtype, device=value.device)
    t = value.to(dtype).clamp(v_min, v_max)
    cdf = torch.special.erf((edges[None, :] - t[:, None]) / (math.sqrt(2.0) * sigma))
    return (cdf[:, 1:] - cdf[:, :-1]) / (cdf[:, -1:] - cdf[:, :1])


def categorical_td_target_reference(
    target_logits: Tensor,
    reward: Tensor,
    mask: Tensor,
    discount: float | Tensor,
    entropy: Tensor | None = None,
    *,
    v_min: float,
    v_max: float,
    combine: str = "mean",
    projection: str = "c51",
    sigma: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Categorical soft TD target of BRC (spec §2.2, §3.2), no gradient.

    Args:
        target_logits: (E, B, K) target-critic logits at (s', a').
        reward: (B,) normalised reward. mask: (B,) bootstrap mask.
        discount: gamma, a float or (B,) (n-step). entropy: (B,) alpha * log pi(a'|s') or None.
        v_min, v_max: support bounds. combine: "mean" of member probabilities (BRC) or "min"
            (per sample, the member with the lowest expected value).
        projection: "c51" (shift each atom by r + gamma m (z - entropy), clip, project) or
            "hl_gauss" (histogram around the clamped scalar r + gamma m (E[z] - entropy)).
        sigma: HL-Gauss standard deviation (default 0.75 bin widths).

    Returns:
        target (B, K) and its expected value sum_j z_j target_j (B,), float32 (float64 for
        float64 logits).
    """
    with torch.no_grad():
        dtype = torch.float64 if target_logits.dtype == torch.float64 else torch.float32
        num_atoms = target_logits.shape[-1]
        atoms = torch.linspace(v_min, v_max, num_atoms, dtype=dtype, device=target_logits.device)
        probs = torch.softmax(target_logits.to(dtype), dim=-1)  # (E, B, K)
        if combine == "mean":
            p = probs.mean(dim=0)
        elif combine == "min":
            member = (probs * atoms).sum(-1).argmin(dim=0)  # (B,)
            p = probs.gather(0, member[None, :, None].expand(1, *probs.shape[1:]))[0]
        else:
            raise ValueError(f"combine must be 'mean' or 'min', got {combine!r}")
        reward = reward.to(dtype)
        discount = torch.as_tensor(discount, dtype=dtype, device=reward.device)
        gamma_mask = discount * mask.to(dtype)
        entropy = torch.zeros_like(reward) if entropy is None else entropy.to(dtype)
        if projection == "c51":
            shifted = reward[:, None] + gamma_mask[..., None] * (atoms[None, :] - entropy[:, None])
            target = categorical_projection(shifted, p, v_min, v_max)
        elif projection == "hl_gauss":
            value = reward + gamma_mask * ((p * atoms).sum(-1) - entropy)
            target = hl_gauss_target_reference(value, v_min, v_max, num_atoms, sigma)
        else:
            raise ValueError(f"projection must be 'c51' or 'hl_gauss', got {projection!r}")
        return target, (target * atoms).sum(-1)


def categorical_cross_entropy_reference(
    online_logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    return_td_error: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Critic loss of BRC: sum over members of the batch-mean cross-entropy (spec §2.2, §3.2).

    Args:
        online_logits: (E, B, K), differentiable. target: (B, K) target distribution (constant).
        weight: (B,) importance weights (constant) or None; the loss is then
            sum_e mean_b weight_b CE_{e,b}.
        return_td_error: also return the per-sample priority signal
            td_error_b = sum_e CE_{e,b} (unweighted, detached), as in Rainbow's distributional PER.

    Returns:
        The scalar loss, or (loss, td_error (B,)).
    """
    log_probs = torch.log_softmax(online_logits, dim=-1)
    ce = -(target.detach().to(log_probs.dtype) * log_probs).sum(-1)  # (E, B)
    if weight is None:
        loss = ce.mean(-1).sum()
    else:
        loss = (ce * weight.detach().to(ce.dtype)).mean(-1).sum()
    if return_td_error:
        return loss, ce.detach().sum(0)
    return loss
