"""Pure tensor formulas of the BRC update (brc-spec §2.2, §2.3, §3.2, §3.3), one function each."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_STD_MIN = -10.0
LOG_STD_MAX = 2.0


def atoms_support(v_min: float, v_max: float, num_atoms: int, device=None) -> Tensor:
    """Fixed categorical support z_j = linspace(v_min, v_max, num_atoms), shape (num_atoms,) (§3.2)."""
    return torch.linspace(v_min, v_max, num_atoms, device=device, dtype=torch.float32)


def categorical_projection(
    probs: Tensor, shifted_atoms: Tensor, v_min: float, v_max: float
) -> Tensor:
    """C51 projection of mass ``probs`` (B, K) sitting at ``shifted_atoms`` (B, K) onto the fixed
    support; returns (B, K) rows summing to 1 (§3.2).

    Atoms are clipped to [v_min, v_max]; b = (z - v_min) / dz, l = floor(b), u = ceil(b); bin l gets
    p * (u - b) and bin u gets p * (b - l), and on an exact hit (l == u) bin l gets all of p
    (spec §11.5).
    """
    num_atoms = probs.shape[-1]
    delta = (v_max - v_min) / (num_atoms - 1)
    b = (shifted_atoms.clamp(v_min, v_max) - v_min) / delta
    # Guard float error at the top edge so u never reaches num_atoms.
    b = b.clamp(0.0, num_atoms - 1)
    # NaN atoms (e.g. a NaN reward) keep NaN mass but index bin 0, so the NaN shows in the target
    # row instead of an out-of-range scatter.
    b_index = torch.nan_to_num(b, nan=0.0)
    lower = b_index.floor()
    upper = b_index.ceil()
    exact = (upper == lower).to(probs.dtype)
    mass_lower = probs * (upper - b + exact)
    mass_upper = probs * (b - lower)
    out = torch.zeros_like(probs)
    out.scatter_add_(-1, lower.long(), mass_lower)
    out.scatter_add_(-1, upper.long(), mass_upper)
    return out


def categorical_td_target(
    target_logits: Tensor,
    reward: Tensor,
    mask: Tensor,
    discount: Tensor | float,
    entropy: Tensor | None,
    v_min: float,
    v_max: float,
) -> tuple[Tensor, Tensor]:
    """Soft categorical Bellman target (§2.2 step 1, §3.2).

    Args:
        target_logits: (E, B, K) target-critic logits at (s', a').
        reward: (B,) normalised reward r~.
        mask: (B,) bootstrap mask m (§5.4).
        discount: scalar gamma or (B,) gamma**k.
        entropy: (B,) entropy term alpha * log pi(a'|s'), or None for no entropy bonus.
    Returns:
        target (B, K) projected distribution (no gradient) and its expected value (B,).
    """
    with torch.no_grad():
        target_logits = target_logits.float()
        num_atoms = target_logits.shape[-1]
        atoms = atoms_support(v_min, v_max, num_atoms, device=target_logits.device)
        probs = torch.softmax(target_logits, dim=-1).mean(0)  # ensemble mean of probabilities
        shifted = atoms.unsqueeze(0)
        if entropy is not None:
            shifted = shifted - entropy.float().unsqueeze(-1)
        if isinstance(discount, Tensor) and discount.dim() > 0:
            discount = discount.float().unsqueeze(-1)
        shifted = reward.float().unsqueeze(-1) + discount * mask.float().unsqueeze(-1) * shifted
        target = categorical_projection(probs, shifted, v_min, v_max)
        expected = target @ atoms
    return target, expected


def categorical_cross_entropy(
    online_logits: Tensor, target: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Sum over ensemble members of the batch-mean cross-entropy -sum_j y_j log softmax(l)_j (§3.2).

    Args:
        online_logits: (E, B, K); target: (B, K); weight: optional (B,) per-sample weights.
    Returns: scalar loss.
    """
    log_probs = F.log_softmax(online_logits.float(), dim=-1)
    ce = -(log_probs * target.unsqueeze(0)).sum(-1)  # (E, B)
    if weight is not None:
        ce = ce * weight.unsqueeze(0)
    return ce.mean(-1).sum()


def expected_q(logits: Tensor, atoms: Tensor) -> Tensor:
    """Q = sum_j z_j * mean_k softmax(logits_k)_j; logits (E, B, K) -> (B,) (§3.3)."""
    probs = torch.softmax(logits.float(), dim=-1).mean(0)
    return probs @ atoms


def squash_log_std(raw: Tensor) -> Tensor:
    """log sigma = -10 + 12 * (1 + tanh(raw)) / 2, in [-10, 2] (§2.3)."""
    return LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (1.0 + torch.tanh(raw))


def tanh_gaussian_log_prob(pre_tanh: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log pi(tanh(x)) for x ~ N(mean, exp(log_std)), summed over the action dim; (B, A) -> (B,).

    Uses the stable Jacobian log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)) (§2.3, §11.8).
    """
    z = (pre_tanh - mean) * torch.exp(-log_std)
    gauss = -0.5 * z * z - log_std - 0.5 * math.log(2.0 * math.pi)
    log_det = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (gauss - log_det).sum(-1)


def polyak_update(target: list[Tensor], online: list[Tensor], tau: float) -> None:
    """theta_bar <- tau * theta + (1 - tau) * theta_bar, in place for every tensor (§2.2 step 2)."""
    with torch.no_grad():
        torch._foreach_lerp_(target, online, tau)
