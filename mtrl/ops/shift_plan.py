"""Which rows the fused C51 kernels project by their shift path (for tests and benchmarks).

A row with g = discount * mask > 0 has affine bins b_j = c + g j. When one integer offset d puts
every unclipped atom's b_j - j - d in [-1, 1], each output bin gathers from three atoms: the
CUDA kernel's PlanShift (csrc/kernels/td_target_cuda.cu) and, for K >= 16, the CPU kernel's
(csrc/kernels/td_target_cpu_impl.h) take that path. The result is the same either way; only the
cost differs, so tests use this to check that both paths are exercised and benchmarks report the
share of rows on each.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_rows(reward: Tensor, mask: Tensor, discount: float | Tensor, entropy: Tensor,
               num_atoms: int, v_min: float = -10.0, v_max: float = 10.0) -> Tensor:
    """Boolean (B,): the rows the kernels' shift plan accepts, computed as they do (float64).

    Args:
      reward, mask, entropy: (B,) as given to ``categorical_td_target``.
      discount: a float or (B,).
      num_atoms, v_min, v_max: the support.
    """
    k = num_atoms
    g = (torch.as_tensor(discount, dtype=torch.float32, device=reward.device) * mask).double()
    inv_dz = (k - 1) / (v_max - v_min)
    c = (reward.double() + g * (v_min - entropy.double()) - v_min) * inv_dz
    t_lo = (-c / g).clamp(-1, k)  # atoms j <= t_lo clip at v_min
    t_hi = ((k - 1 - c) / g).clamp(-1, k)  # atoms j >= t_hi clip at v_max
    ja = (t_lo.floor() + 1).clamp(max=k)
    jb = torch.maximum(t_hi.ceil(), ja)
    ua, ub = c + (g - 1) * ja, c + (g - 1) * (jb - 1)
    lo, hi = torch.minimum(ua, ub), torch.maximum(ua, ub)
    d = (0.5 * (lo + hi) + 0.5).floor()
    fits = (lo - d >= -1) & (hi - d <= 1)
    return (g > 0) & ((ja >= jb) | fits)
