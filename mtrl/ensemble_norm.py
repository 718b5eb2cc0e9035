"""Fused bias + LayerNorm + per-member affine + ReLU/residual of the critic ensemble (brc-spec §3.1).

Every hidden layer of the BroNet critic is ``y = x W`` (one batched matmul over the E members)
followed by ``epilogue(LayerNorm(y + bias) * gamma + beta)``, where the epilogue is ReLU (input
layer, first half of a residual block) or the residual sum (second half of a block), and bias,
gamma, beta are per member. In separate PyTorch ops that is 4-6 passes over the (E, B, W)
activation forward and 6-8 backward, about a quarter of a CPU update at width 512 next to the
matmuls. :func:`ensemble_norm` does it in one pass each way with the C++ kernel of ``csrc/nn``
(CPU, float32, eager), and falls back to :func:`ensemble_norm_reference` (the same formula in
PyTorch ops) everywhere else: CUDA, float64, under ``torch.compile`` or a dispatch mode.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from mtrl import _core

EPILOGUE_NONE, EPILOGUE_RELU, EPILOGUE_RESIDUAL = 0, 1, 2


def first_order_only(alternative: str):
    """``once_differentiable`` for the backward of a fused kernel node, raising under
    ``create_graph=True``. Torch's own lets such a backward through whenever the incoming gradient
    needs no gradient itself (the gradient of ``out.sum()``): the result is then a constant, and a
    second-order term built on it (a gradient penalty) silently contributes nothing.
    ``alternative``: what to differentiate twice instead (the composed PyTorch ops)."""
    def wrap(backward):
        inner = once_differentiable(backward)

        @functools.wraps(backward)
        def checked(ctx, *grads):
            if torch.is_grad_enabled():  # the engine enables grad mode only for create_graph
                raise RuntimeError(
                    "the fused CPU kernels have no double backward (create_graph=True): their "
                    "gradient would be a constant, silently dropping the second-order terms; "
                    f"use {alternative} for higher-order gradients")
            return inner(ctx, *grads)
        return checked
    return wrap


def ensemble_norm_reference(y: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, *, eps: float,
                            relu: bool = False, residual: Tensor | None = None) -> Tensor:
    """PyTorch-ops version of :func:`ensemble_norm` (same arguments, same result)."""
    h = F.layer_norm(y + bias, (y.shape[-1],), None, None, eps)
    h = torch.addcmul(beta, h, gamma)
    if relu:
        return F.relu(h)
    return h if residual is None else residual + h


_dl = torch.utils.dlpack.to_dlpack  # ~0.3 us per tensor (Tensor.numpy() ~1-2 us with the detach)


def _param(t: Tensor, members: int, width: int):
    return t.detach().reshape(members, width).numpy()


def forward_kernel(y, bias, gamma, beta, residual, epilogue, eps):
    """(out (E, B, W), stats (2, E, B): mean and rstd) from the C++ kernel; no autograd.

    Inputs as :func:`ensemble_norm` checks them (CPU float32, contiguous); epilogue is one of
    EPILOGUE_NONE / EPILOGUE_RELU / EPILOGUE_RESIDUAL."""
    members, rows, width = y.shape
    out = torch.empty_like(y)
    stats = y.new_empty(2, members, rows)
    threads = torch.get_num_threads()
    if _core._ensemble_norm_forward_fast(
            _dl(y), _dl(bias), _dl(gamma), _dl(beta), None if residual is None else _dl(residual),
            epilogue, eps, _dl(out), _dl(stats), threads) is None:
        # Not in kernel form after all: the NumPy entry point converts nothing and explains.
        _core._ensemble_norm_forward(
            y.detach().numpy(), _param(bias, members, width), _param(gamma, members, width),
            _param(beta, members, width), None if residual is None else residual.detach().numpy(),
            epilogue, eps, out.numpy(), stats[0].numpy(), stats[1].numpy(), threads)
    return out, stats


class _EnsembleNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, bias, gamma, beta, residual, epilogue, eps):
        out, stats = forward_kernel(y, bias, gamma, beta, residual, epilogue, eps)
        ctx.save_for_backward(y, bias, gamma, beta, stats)
        ctx.relu = epilogue == EPILOGUE_RELU
        ctx.has_residual = residual is not None
        return out

    @staticmethod
    @first_order_only("mtrl.ensemble_norm.ensemble_norm_reference")
    def backward(ctx, grad_out):
        y, bias, gamma, beta, stats = ctx.saved_tensors
        grad_y, grads = backward_kernel(grad_out.contiguous(), y, bias, gamma, beta, stats,
                                        ctx.relu, any(ctx.needs_input_grad[1:4]))
        grad_bias, grad_gamma, grad_beta = (None, None, None) if grads is None else grads.unbind(0)
        grad_residual = grad_out if ctx.has_residual and ctx.needs_input_grad[4] else None
        return grad_y, grad_bias, grad_gamma, grad_beta, grad_residual, None, None


def backward_kernel(grad_out, y, bias, gamma, beta, stats, relu: bool, need_params: bool,
                    grad_add: Tensor | None = None):
    """(grad_y (E, B, W), parameter gradients (3, E, 1, W) = d bias, d gamma, d beta, or None
    when not ``need_params``) from the C++ kernel, for the forward that gave ``stats``.

    grad_out must be contiguous; the residual's gradient is grad_out itself. ``grad_add`` (E, B,
    W), if given, is first added to grad_out in place (``grad_out.add_(grad_add)``, inside the
    kernel's pass over the rows), and the gradient used is that sum: the two gradients of a
    residual block's input, summed without a pass of their own."""
    members, _, width = y.shape
    grad_y = torch.empty_like(y)
    grads = y.new_empty(3, members, 1, width) if need_params else None
    threads = torch.get_num_threads()
    if _core._ensemble_norm_backward_fast(
            _dl(grad_out), _dl(y), _dl(bias), _dl(gamma), _dl(beta), _dl(stats), relu,
            _dl(grad_y), None if grads is None else _dl(grads), threads,
            None if grad_add is None else _dl(grad_add)) is None:
        if grad_add is not None:  # (the fast path changed nothing)
            grad_out.add_(grad_add)
        flat = [None] * 3 if grads is None else [g.view(members, width).numpy() for g in grads]
        _core._ensemble_norm_backward(
            grad_out.numpy(), y.detach().numpy(), _param(bias, members, width),
            _param(gamma, members, width), _param(beta, members, width), stats[0].numpy(),
            stats[1].numpy(), relu, grad_y.numpy(), *flat, threads)
    return grad_y, grads


def kernel_applies(*tensors: Tensor | None) -> bool:
    """Whether the C++ kernels take these tensors (CPU float32 contiguous and not empty, plain
    eager mode: not compiling, no dispatch mode, no torch.func transform, whose batched tensors
    have no storage); None entries are ignored."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() != 0
            or torch._C._are_functorch_transforms_active()):
        return False
    return all(t is None or (t.is_cpu and t.dtype is torch.float32 and t.is_contiguous()
                             and t.numel() > 0) for t in tensors)


def _member_param(name: str, p: Tensor, members: int, width: int) -> Tensor:
    """A per-member parameter as (E, 1, W). (E, W) is taken too (and, for one member, (W,)): the
    kernel reads E rows of W, while the reference broadcasts the parameter against y, so any other
    shape of E W elements, e.g. (1, E, W), would mean other things on the two paths."""
    if p.shape == (members, 1, width):
        return p
    if p.shape == (members, width) or (members == 1 and p.shape == (width,)):
        return p.reshape(members, 1, width)
    raise ValueError(f"ensemble_norm: {name} must be ({members}, 1, {width}) or ({members}, "
                     f"{width}), got shape {tuple(p.shape)}")


def ensemble_norm(y: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor, *, eps: float,
                  relu: bool = False, residual: Tensor | None = None) -> Tensor:
    """``epilogue(LayerNorm(y + bias) * gamma + beta)`` with per-member parameters.

    Args:
        y: (E, B, W) matmul outputs of the E ensemble members.
        bias, gamma, beta: (E, 1, W) (or (E, W)) per-member Linear bias and LayerNorm
            scale/shift.
        eps: LayerNorm epsilon (biased variance, as ``F.layer_norm``).
        relu: apply ReLU to the result. residual: (E, B, W) added to the result (not with relu).
    Returns:
        (E, B, W) tensor; differentiable w.r.t. y, bias, gamma, beta and residual (once).
    Raises:
        ValueError: on mismatched shapes or relu together with residual.
    """
    if y.dim() != 3:
        raise ValueError(f"ensemble_norm: y must be (E, B, W), got shape {tuple(y.shape)}")
    members, _, width = y.shape
    bias, gamma, beta = (_member_param(name, p, members, width)
                         for name, p in (("bias", bias), ("gamma", gamma), ("beta", beta)))
    if residual is not None and residual.shape != y.shape:
        raise ValueError(f"ensemble_norm: residual must have y's shape {tuple(y.shape)}, got "
                         f"{tuple(residual.shape)}")
    if relu and residual is not None:
        raise ValueError("ensemble_norm: relu and residual cannot be combined")
    if not kernel_applies(y, bias, gamma, beta, residual):
        return ensemble_norm_reference(y, bias, gamma, beta, eps=eps, relu=relu, residual=residual)
    epilogue = EPILOGUE_RELU if relu else (EPILOGUE_NONE if residual is None else EPILOGUE_RESIDUAL)
    if not torch.is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in (y, bias, gamma, beta, residual)):
        return forward_kernel(y, bias, gamma, beta, residual, epilogue, eps)[0]  # no graph
    return _EnsembleNormFunction.apply(y, bias, gamma, beta, residual, epilogue, eps)


def _bf16_shape(y: Tensor) -> tuple[int, int, int]:
    """(E, B, W) of the bf16 kernels' y; the binding checks the rest (dtype, layout, sizes)."""
    if y.dim() != 3:
        raise ValueError(f"y must have shape (E, B, W), got {tuple(y.shape)}")
    return tuple(y.shape)


def forward_kernel_bf16(y: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor,
                        residual: Tensor | None, epilogue: int, eps: float,
                        keep_out: bool = True):
    """bf16 path (mtrl.fused_bronet): (out float32 (E, B, W) or None unless ``keep_out``, out
    rounded to bf16 (E, B, W), stats (2, E, B)) for the bf16 matmul output y (E, B, W); no
    autograd.

    out is bitwise :func:`forward_kernel` on ``y.float()``; the bf16 copy is bitwise
    ``out.to(torch.bfloat16)`` (round to nearest even), made while the row is in registers.
    Parameters and residual float32 contiguous; the C++ binding raises ValueError otherwise."""
    members, rows, _ = _bf16_shape(y)
    out = torch.empty(y.shape, dtype=torch.float32) if keep_out else None
    out_bf = torch.empty_like(y)
    stats = bias.new_empty(2, members, rows)
    _core._ensemble_norm_forward_bf16(
        _dl(y), _dl(bias), _dl(gamma), _dl(beta), None if residual is None else _dl(residual),
        epilogue, eps, None if out is None else _dl(out), _dl(out_bf), _dl(stats),
        torch.get_num_threads())
    return out, out_bf, stats


def backward_kernel_bf16(grad_out: Tensor | None, y: Tensor, bias: Tensor, gamma: Tensor,
                         beta: Tensor, stats: Tensor, relu: bool, need_params: bool,
                         grad_add: Tensor | None = None, keep_sum: bool = False):
    """Backward of :func:`forward_kernel_bf16`: (grad_y as bf16 (E, B, W), parameter gradients
    (3, E, 1, W) float32 or None, the float32 gradient used (E, B, W) or None).

    grad_out is bf16 (the bf16 output of the next layer's input-gradient matmul); the gradient
    used is ``grad_out.float() + grad_add`` (grad_add float32, optional), returned as the third
    value when ``keep_sum`` (the residual gradient that a block passes on). grad_out None: the
    gradient used is grad_add alone (the layer under the float32 head; one of the two must be
    given, else ValueError). grad_y is bitwise
    :func:`backward_kernel` on that float32 gradient, rounded to bf16 (nearest even); the
    parameter gradients are bitwise its."""
    members, rows, width = _bf16_shape(y)
    grad_y = torch.empty_like(y)
    grads = bias.new_empty(3, members, 1, width) if need_params else None
    grad_sum = torch.empty(y.shape, dtype=torch.float32) if keep_sum else None
    _core._ensemble_norm_backward_bf16(
        None if grad_out is None else _dl(grad_out), None if grad_add is None else _dl(grad_add),
        None if grad_sum is None else _dl(grad_sum), _dl(y), _dl(bias), _dl(gamma), _dl(beta),
        _dl(stats), relu, _dl(grad_y), None if grads is None else _dl(grads),
        torch.get_num_threads())
    return grad_y, grads, grad_sum
