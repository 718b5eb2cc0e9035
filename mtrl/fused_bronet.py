"""A BroNet ensemble (brc-spec §3.1) as one autograd node on the CPU.

The critic (E = 2 members, categorical head) and the actor (E = 1, mean / log-std head) are both
mtrl.networks.EnsembleBroNet: 2 + 2 * depth batched matmuls, each followed by the fused bias +
LayerNorm + affine + ReLU/residual kernel of ``csrc/nn`` (mtrl.ensemble_norm), then a linear
head. Composed of separate differentiable ops that is about 15 autograd nodes, five of them
Python nodes for the critic, and costs ~0.9 ms of Python and autograd-engine time per forward +
backward whatever the width (measured at width 16, batch 4, one thread): a few percent of a CPU
update at width 512, on the one thread that the second core waits for. Here the forward is one
``torch.autograd.Function`` whose backward calls the same bmm and norm kernels by hand, in the
order and with the formulas autograd uses for the composed ops (so the gradients are the same,
bit for bit).

Used by EnsembleBroNet.forward_network when every tensor is CPU float32 in plain eager mode
(:func:`mtrl.ensemble_norm.kernel_applies`); the composed ops remain the path everywhere else
(CUDA, float64, torch.compile, autocast).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mtrl.ensemble_norm import (
    EPILOGUE_RELU,
    EPILOGUE_RESIDUAL,
    backward_kernel,
    forward_kernel,
)

# Parameters per residual block: fc1 weight/bias, ln1 gamma/beta, fc2 weight/bias, ln2 gamma/beta.
_BLOCK = 8


def bronet_forward(x: Tensor, params: list[Tensor], depth: int, eps: float,
                   param_grads: bool) -> Tensor:
    """Outputs (E, B, K) of the ensemble for the input x (B, D) shared by the E members.

    params, in order: fc_in weight (E, D, W) and bias (E, 1, W), ln_in gamma and beta (E, 1, W),
    per block fc1 / ln1 / fc2 / ln2 likewise (W x W weights), head weight (E, W, K) and bias
    (E, 1, K). ``param_grads=False``: a backward reaches x only (no weight gradients computed).
    """
    if torch.is_grad_enabled() and (x.requires_grad or (
            param_grads and any(p.requires_grad for p in params))):
        if torch._C._are_functorch_transforms_active():
            return _BroNetFunction.apply(x, depth, eps, param_grads, *params)
        return _apply(x, depth, eps, param_grads, *params)
    return _forward(x, params, depth, eps)[0]


def _forward(x: Tensor, params: list[Tensor], depth: int, eps: float):
    """(logits, matmul inputs of the layers after the first, (y, stats) of every norm)."""
    members = params[0].shape[0]
    inputs, norms = [], []

    def layer(h, weight, bias, gamma, beta, epilogue, residual=None):
        y = torch.bmm(h, weight)
        out, stats = forward_kernel(y, bias, gamma, beta, residual, epilogue, eps)
        norms.append((y, stats))
        inputs.append(out)
        return out

    h = layer(_members(x, members), *params[:4], EPILOGUE_RELU)
    for i in range(4, 4 + _BLOCK * depth, _BLOCK):  # h + LN(Linear(ReLU(LN(Linear(h)))))
        inner = layer(h, *params[i:i + 4], EPILOGUE_RELU)
        h = layer(inner, *params[i + 4:i + 8], EPILOGUE_RESIDUAL, residual=h)
    head_weight, head_bias = params[-2:]
    return torch.baddbmm(head_bias, h, head_weight), inputs, norms


def _members(x: Tensor, members: int) -> Tensor:
    return x.unsqueeze(0).expand(members, -1, -1)  # one input for all members (no copy)


class _BroNetFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, depth, eps, param_grads, *params):
        logits, inputs, norms = _forward(x, list(params), depth, eps)
        # Inputs through save_for_backward (in-place changes before the backward are caught);
        # the intermediates, made here, on ctx.
        ctx.save_for_backward(x, *params)
        ctx.inputs, ctx.norms = inputs, norms
        ctx.depth, ctx.param_grads = depth, param_grads
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logits):
        x, *params = ctx.saved_tensors
        norms = ctx.norms
        inputs = [_members(x, params[0].shape[0]), *ctx.inputs]  # input of layer i: inputs[i]
        need = ctx.param_grads and any(ctx.needs_input_grad[4:])
        grads: list[Tensor | None] = [None] * len(params)
        grad = grad_logits.contiguous()
        # Head: logits = bias + h W (baddbmm's backward).
        if need:
            grads[-2] = torch.bmm(inputs[-1].transpose(1, 2), grad)
            grads[-1] = grad.sum(1, keepdim=True)
        grad_h = torch.bmm(grad, params[-2].transpose(1, 2))

        def layer_backward(index, first, grad_out, relu, input_grad=True, grad_add=None):
            """Layer ``index`` (parameters from params[first]): its parameter gradients into
            grads, and the gradient w.r.t. its input (E, B, in) unless input_grad is False.
            grad_add: added to grad_out in place first (in the norm kernel's pass)."""
            y, stats = norms[index]
            weight, bias, gamma, beta = params[first:first + 4]
            grad_y, norm_grads = backward_kernel(grad_out, y, bias, gamma, beta, stats, relu, need,
                                                 grad_add)
            if need:
                grads[first] = torch.bmm(inputs[index].transpose(1, 2), grad_y)
                grads[first + 1:first + 4] = norm_grads.unbind(0)
            return torch.bmm(grad_y, weight.transpose(1, 2)) if input_grad else None

        # The gradient w.r.t. a block's input h is grad_h (its output's, direct through the
        # residual) + the gradient through fc2, ln1, fc1: that sum is left to the next norm
        # kernel that reads it (pending is added to grad_h there, in place).
        pending = None
        for block in reversed(range(ctx.depth)):
            first = 4 + _BLOCK * block
            # h_out = h + LN2(fc2(inner)): grad_h reaches h directly and through fc2, ln1, fc1.
            grad_inner = layer_backward(2 + 2 * block, first + 4, grad_h, relu=False,
                                        grad_add=pending)
            grad_h, pending = layer_backward(1 + 2 * block, first, grad_inner, relu=True), grad_h
        grad_x = layer_backward(0, 0, grad_h, relu=True, input_grad=ctx.needs_input_grad[0],
                                grad_add=pending)
        return (None if grad_x is None else grad_x.sum(0), None, None, None, *grads)


# Function.apply without its Python wrapper, which only unwraps functorch tensors (checked for
# above) and binds arguments for setup_context-style Functions (not this one): ~15 us per call
# with 27 arguments.
_apply = super(torch.autograd.Function, _BroNetFunction).apply
