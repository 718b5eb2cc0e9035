"""The actor's tanh-Gaussian head (brc-spec §2.3) as one autograd node on the CPU.

From the actor network's output [mean | raw log-std] (B, 2A) to the action tanh(mean + sigma eps)
and its log-probability: about 20 small element-wise ops forward and as many autograd nodes
backward on (B, A) tensors, ~0.5 ms per update on one thread for a few thousand numbers. The C++
kernel (csrc/nn/tanh_gaussian) does each direction in one call; elsewhere (CUDA, float64,
torch.compile) :func:`sample_reference` computes the same formula with PyTorch ops.
"""

from __future__ import annotations

import math

import torch
import torch.utils.dlpack
from torch import Tensor

from mtrl import _core
from mtrl.ensemble_norm import first_order_only, kernel_applies
from mtrl.math import squash_log_std, tanh_gaussian_log_prob

_dl = torch.utils.dlpack.to_dlpack


def sample_tanh_gaussian(head: Tensor, action_dim: int, std_scale: float = 1.0
                         ) -> tuple[Tensor, Tensor]:
    """Reparameterised action tanh(mean + std_scale * sigma * eps), eps ~ N(0, I) from torch's
    generator, and its log-probability (tanh Jacobian included), from the actor output
    head (B, 2A) = [mean | raw log-std]. Returns (action (B, A), log_prob (B,)).

    Raises:
        ValueError: head is not (B, 2 * action_dim) with action_dim >= 1, or std_scale is not
            finite.
    """
    if head.dim() != 2 or action_dim < 1 or head.shape[1] != 2 * action_dim:
        raise ValueError(f"head must have shape (B, 2 * action_dim) = (B, {2 * action_dim}) with "
                         f"action_dim >= 1, got {tuple(head.shape)} and action_dim {action_dim}")
    if not math.isfinite(std_scale):
        raise ValueError(f"std_scale must be a finite number, got {std_scale}")
    noise = torch.randn(head.shape[0], action_dim, dtype=head.dtype, device=head.device)
    if kernel_applies(head):
        if torch.is_grad_enabled() and head.requires_grad:
            return _TanhGaussian.apply(head, noise, float(std_scale))
        action, log_prob, _ = _forward(head, noise, float(std_scale))
        return action, log_prob
    return sample_reference(head, noise, action_dim, std_scale)


def sample_reference(head: Tensor, noise: Tensor, action_dim: int, std_scale: float = 1.0
                     ) -> tuple[Tensor, Tensor]:
    """:func:`sample_tanh_gaussian` for a given noise (B, A), in PyTorch ops (mtrl.math)."""
    mean, raw_log_std = head.split(action_dim, dim=-1)
    log_std = squash_log_std(raw_log_std)
    std = torch.exp(log_std)
    if std_scale != 1.0:  # (a product with 1.0 is exact: skipped, one kernel each way fewer)
        std = std * std_scale
    pre_tanh = mean + std * noise
    z = noise if std_scale == 1.0 else noise * std_scale  # (pre_tanh - mean) / exp(log_std)
    return torch.tanh(pre_tanh), tanh_gaussian_log_prob(pre_tanh, mean, log_std, z)


def _forward(head: Tensor, noise: Tensor, std_scale: float):
    """(action, log_prob, saved) from the kernel, for inputs sample_tanh_gaussian has checked."""
    batch, action_dim = noise.shape
    action = head.new_empty(batch, action_dim)
    log_prob = head.new_empty(batch)
    saved = head.new_empty(3, batch, action_dim)
    if _core._tanh_gaussian_forward_fast(_dl(head.detach()), _dl(noise), std_scale, _dl(action),
                                         _dl(log_prob), _dl(saved)) is None:
        raise RuntimeError(f"tanh-Gaussian kernel rejected head {tuple(head.shape)} "
                           f"{head.dtype}, noise {tuple(noise.shape)} {noise.dtype}")
    return action, log_prob, saved


class _TanhGaussian(torch.autograd.Function):
    @staticmethod
    def forward(ctx, head, noise, std_scale):
        action, log_prob, saved = _forward(head, noise, std_scale)
        ctx.save_for_backward(saved)
        ctx.set_materialize_grads(False)
        return action, log_prob

    @staticmethod
    @first_order_only("mtrl.tanh_gaussian.sample_reference")
    def backward(ctx, grad_action, grad_log_prob):
        if grad_action is None and grad_log_prob is None:
            return None, None, None
        (saved,) = ctx.saved_tensors
        grad_head = saved.new_empty(saved.shape[1], 2 * saved.shape[2])
        _core._tanh_gaussian_backward_fast(
            _dl(saved), None if grad_action is None else _dl(grad_action.contiguous()),
            None if grad_log_prob is None else _dl(grad_log_prob.contiguous()), _dl(grad_head))
        return grad_head, None, None
