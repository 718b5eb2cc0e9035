"""Pure tensor formulas of the BRC update (brc-spec §2.2, §2.3, §3.2, §3.3), one function each."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mtrl.ops.reference import (
    categorical_cross_entropy_reference,
    categorical_td_target_reference,
)

LOG_STD_MIN = -10.0
LOG_STD_MAX = 2.0


def atoms_support(v_min: float, v_max: float, num_atoms: int, device=None) -> Tensor:
    """Fixed categorical support z_j = linspace(v_min, v_max, num_atoms), shape (num_atoms,) (§3.2)."""
    return torch.linspace(v_min, v_max, num_atoms, device=device, dtype=torch.float32)


def widen(logits: Tensor) -> Tensor:
    """Logits in float32 for the softmax and the categorical ops (bf16 / fp16 under autocast),
    float64 kept as it is (a float64 agent, as the whole-update reference test runs)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def categorical_td_target(
    target_logits: Tensor,
    reward: Tensor,
    mask: Tensor,
    discount: Tensor | float,
    entropy: Tensor | None,
    v_min: float,
    v_max: float,
) -> tuple[Tensor, Tensor]:
    """Soft categorical Bellman target of BRC (§2.2 step 1, §3.2): ensemble-mean probabilities,
    atoms shifted to r + discount * mask * (z - entropy), clipped and C51-projected.

    Args:
        target_logits: (E, B, K) target-critic logits at (s', a').
        reward: (B,) normalised reward r~. mask: (B,) bootstrap mask m (§5.4).
        discount: scalar gamma or (B,) gamma**k.
        entropy: (B,) entropy term alpha * log pi(a'|s'), or None for no entropy bonus.
    Returns:
        target (B, K) projected distribution (no gradient) and its expected value (B,).

    The one PyTorch implementation is ``mtrl.ops.reference`` (the fused kernels' documented
    semantics); this is its BRC configuration.
    """
    return categorical_td_target_reference(
        widen(target_logits), reward, mask, discount, entropy, v_min=v_min, v_max=v_max)


def categorical_cross_entropy(
    online_logits: Tensor, target: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Sum over ensemble members of the batch-mean cross-entropy -sum_j y_j log softmax(l)_j (§3.2).

    online_logits (E, B, K), target (B, K), optional weight (B,); returns the scalar loss.
    """
    return categorical_cross_entropy_reference(widen(online_logits), target, weight)


def expected_q(logits: Tensor, atoms: Tensor) -> Tensor:
    """Q = sum_j z_j * mean_k softmax(logits_k)_j; logits (E, B, K) -> (B,) (§3.3)."""
    probs = torch.softmax(widen(logits), dim=-1).mean(0)
    return probs @ atoms


def squash_log_std(raw: Tensor) -> Tensor:
    """log sigma = -10 + 12 * (1 + tanh(raw)) / 2, in [-10, 2] (§2.3)."""
    return LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (1.0 + torch.tanh(raw))


def tanh_gaussian_log_prob(pre_tanh: Tensor, mean: Tensor, log_std: Tensor,
                           z: Tensor | None = None) -> Tensor:
    """log pi(tanh(x)) for x ~ N(mean, exp(log_std)), summed over the action dim; (B, A) -> (B,).

    Uses the stable Jacobian log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)) (§2.3, §11.8).
    ``z``: the standardised sample (x - mean) / exp(log_std) where the caller drew x from it
    (x = mean + std eps: z = eps), exact; computed from x otherwise, which in float32 loses
    digits to the cancellation in x - mean when |mean| is large next to the std.
    """
    if z is None:
        z = (pre_tanh - mean) * torch.exp(-log_std)
    gauss = -0.5 * z * z - log_std - 0.5 * math.log(2.0 * math.pi)
    log_det = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (gauss - log_det).sum(-1)


def polyak_update(target: list[Tensor], online: list[Tensor], tau: float) -> None:
    """theta_bar <- tau * theta + (1 - tau) * theta_bar, in place for every tensor (§2.2 step 2)."""
    with torch.no_grad():
        torch._foreach_lerp_(target, online, tau)
