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
(CUDA, float64, torch.compile, autocast other than CPU bf16).

bf16 (``bf16=True``; AgentConfig.bf16 on a CPU with AMX-BF16 or AVX512-BF16, for the critic
only; the paper's code is float32, brc-spec §11 item 13 suggests bf16 autocast for the wide
matmuls, so it is an opt-in): the same network with the rounding points of the composed ops
under ``torch.autocast("cpu", torch.bfloat16)`` with the head outside autocast
(EnsembleBroNet.forward_layers), which stays the reference. Exactly:
  * every trunk matmul input is rounded to bf16 (round to nearest even): the network input x,
    each layer's output as the next layer's input, and every trunk weight, cast once per call
    (the backward reuses the forward's copies); the float32 parameters remain the master copies;
  * the bf16 bmm (oneDNN: AMX / AVX512-BF16) accumulates in float32 and rounds its output y to
    bf16;
  * bias + LayerNorm (float32 statistics) + affine + ReLU / residual run in float32 on the
    widened y; the residual stream h stays float32;
  * the head (W -> K, ~5% of the critic's FLOPs at 101 atoms) is float32 on the float32 h: the
    logits feed the cross-entropy, the TD target (target critic) and the actor's Q (expectation
    over the atoms), and rounding them to bf16's 8-bit significand cost learning (autocast's
    bf16 head learned ~8% worse than float32 over three seeds; benchmarks/RESULTS.md "bf16
    against float32 on three seeds" and "bf16 with a float32 head (eighth session)");
  * backward: the head's gradients (its weight and bias, and grad_h into the trunk) are float32;
    the top layer's norm backward reads that float32 grad_h (no bf16 matmul gradient there);
    every trunk matmul's gradient output is bf16 and widened for use (input gradients, weight
    gradients in ``.grad``: float32 holding bf16 values); the gradient w.r.t. y is rounded to
    bf16 after the float32 norm backward; LayerNorm / bias gradients and the sum of a residual
    block's two input gradients are float32.
The norm kernels read the bf16 y and write the float32 output together with its bf16 copy, and
in the backward read the bf16 gradient and write the bf16 grad_y (mtrl.ensemble_norm
``*_kernel_bf16``), so no cast pass of its own touches an activation (two such casts per layer
cost ~30% of the bf16 matmul at batch 1024: benchmarks/RESULTS.md "bf16 critic on the CPU").
Against the composed ops the only difference is float32 arithmetic order inside the norm (the
C++ kernel vs F.layer_norm): within float32 rounding, except where that flips a later bf16
rounding.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from mtrl import _core
from mtrl.ensemble_norm import (
    EPILOGUE_RELU,
    EPILOGUE_RESIDUAL,
    backward_kernel,
    backward_kernel_bf16,
    first_order_only,
    forward_kernel,
    forward_kernel_bf16,
)

# Parameters per residual block: fc1 weight/bias, ln1 gamma/beta, fc2 weight/bias, ln2 gamma/beta.
_BLOCK = 8


def bronet_forward(x: Tensor, params: list[Tensor], depth: int, eps: float,
                   param_grads: bool, bf16: bool = False,
                   weight_cache: Bf16WeightCache | None = None) -> Tensor:
    """Outputs (E, B, K) of the ensemble for the input x (B, D) shared by the E members.

    params, in order: fc_in weight (E, D, W) and bias (E, 1, W), ln_in gamma and beta (E, 1, W),
    per block fc1 / ln1 / fc2 / ln2 likewise (W x W weights), head weight (E, W, K) and bias
    (E, 1, K). ``param_grads=False``: a backward reaches x only (no weight gradients computed).
    ``bf16``: bf16 matmuls with the rounding points of CPU autocast (module docstring); the
    outputs are float32 either way. ``weight_cache``: the network's :class:`Bf16WeightCache`
    (bf16 only; None casts into fresh tensors).
    """
    if torch.is_grad_enabled() and (x.requires_grad or (
            param_grads and any(p.requires_grad for p in params))):
        if bf16:
            return _BroNetBf16Function.apply(x, depth, eps, param_grads, weight_cache, *params)
        # (mtrl.networks takes the composed ops under torch.func; a direct call may not)
        if torch._C._are_functorch_transforms_active():
            return _BroNetFunction.apply(x, depth, eps, param_grads, *params)
        return _apply(x, depth, eps, param_grads, *params)
    with torch.no_grad():  # no gradient is asked for: the head's matmul must not record one
        if bf16:
            return _forward_bf16(x, params, depth, eps, weight_cache, False)[0]
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
    return x.expand(members, -1, -1)  # one input for all members (a view: no copy)


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
    @first_order_only("the network's forward_layers (the composed ops)")
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


# ---------------------------------------------------------------- bf16 (see the module docstring)
_BF16 = torch.bfloat16


def cpu_bf16_features() -> dict[str, bool]:
    """``{"amx_bf16": bool, "avx512_bf16": bool}``: whether this CPU (and its OS) supports the
    instructions with which torch's bf16 bmm (oneDNN) multiplies bf16 natively (cpuid, read in
    the C++ core, csrc/nn/cpu_bf16.h)."""
    return dict(_core._cpu_bf16_features())


def check_cpu_bf16() -> None:
    """Raises ValueError unless this CPU has AMX-BF16 or AVX512-BF16. Without them oneDNN
    emulates bf16 matmuls with float32 arithmetic plus conversions, slower than float32 itself:
    a bf16 critic would be a silent slowdown."""
    features = cpu_bf16_features()
    if not any(features.values()):
        raise ValueError(
            "AgentConfig.bf16 on the CPU needs native bf16 matrix instructions, AMX-BF16 or "
            "AVX512-BF16, and this CPU has neither (cpuid: amx_bf16=False, avx512_bf16=False); "
            "bf16 would be emulated, slower than float32. Leave bf16 off here.")


def _weight_indices(depth: int) -> list[int]:
    """Indices in params of the bf16 matmuls' weights: fc_in, per block fc1 and fc2 (the head
    is float32)."""
    return [0, *(i + k for i in range(4, 4 + _BLOCK * depth, _BLOCK) for k in (0, 4))]


class _Lease:
    """Held by the graph of a forward whose bf16 weights are a cache's buffers."""


class Bf16WeightCache:
    """bf16 copies of one network's matmul weights, cast into the same memory from call to call.

    A fresh (E, in, out) bf16 tensor per weight and call (allocation and first touch of 0.5 MB
    each, 12 per update at width 512) made the update ~3% slower than casts into memory already
    in use (same-process A/B, single task and 4 tasks: benchmarks/RESULTS.md). The buffers are
    leased to the graph of the forward that filled them, for as long as that graph exists (its
    backward reads them): a forward meanwhile casts into fresh tensors instead, so a pending
    backward never sees weights of a later call.
    """

    def __init__(self) -> None:
        self._buffers: list[Tensor] | None = None
        self._lease: weakref.ref[_Lease] | None = None

    def __reduce__(self):
        # Copies and pickles of a network (the target critic is a deepcopy) start empty: the
        # buffers are refilled on every call, and a lease belongs to this process's graphs.
        return (Bf16WeightCache, ())

    def cast(self, weights: list[Tensor], lease: bool) -> tuple[list[Tensor], _Lease | None]:
        """(bf16 copies of ``weights``, the lease to keep with the graph or None)."""
        if self._lease is not None and self._lease() is not None:
            return [w.detach().to(_BF16) for w in weights], None
        if self._buffers is None or len(self._buffers) != len(weights) or any(
                b.shape != w.shape or b.device != w.device
                for b, w in zip(self._buffers, weights)):
            self._buffers = [torch.empty(w.shape, dtype=_BF16, device=w.device) for w in weights]
        for buffer, w in zip(self._buffers, weights):
            buffer.copy_(w.detach())
        if not lease:
            return self._buffers, None
        token = _Lease()
        self._lease = weakref.ref(token)
        return self._buffers, token


def _forward_bf16(x: Tensor, params: list[Tensor], depth: int, eps: float,
                  cache: Bf16WeightCache | None, lease: bool):
    """(logits float32, bf16 weights of the trunk, matmul inputs of every layer (bf16; the
    head's float32), (y, stats) per norm, the weight lease or None)."""
    members = params[0].shape[0]
    # One cast per weight per call, reused by the backward (autocast caches its casts alike).
    weights = [params[i] for i in _weight_indices(depth)]
    if cache is None:
        weights, token = [w.detach().to(_BF16) for w in weights], None
    else:
        weights, token = cache.cast(weights, lease)
    # (No autograd here: inside the Function's forward grad mode is off, and otherwise nothing
    # that requires grad reaches an op that records; the kernels read parameters as DLPack.)
    inputs, norms = [_members(x.to(_BF16), members)], []

    def layer(weight, bias, gamma, beta, epilogue, residual=None, keep_out=True):
        y = torch.bmm(inputs[-1], weight)
        out, out_bf, stats = forward_kernel_bf16(y, bias, gamma, beta, residual, epilogue, eps,
                                                 keep_out)
        norms.append((y, stats))
        inputs.append(out_bf)
        return out

    h = layer(weights[0], *params[1:4], EPILOGUE_RELU)
    for block, i in enumerate(range(4, 4 + _BLOCK * depth, _BLOCK)):
        # (the block's inner activation feeds only fc2: its bf16 copy is all that is kept)
        layer(weights[1 + 2 * block], *params[i + 1:i + 4], EPILOGUE_RELU, keep_out=False)
        h = layer(weights[2 + 2 * block], *params[i + 5:i + 8], EPILOGUE_RESIDUAL, residual=h)
    # The head in float32 on the float32 h (its input in place of h's bf16 copy, which no matmul
    # reads): the logits are not rounded to bf16 (module docstring).
    inputs[-1] = h
    logits = torch.baddbmm(params[-1].detach(), h, params[-2].detach())
    return logits, weights, inputs, norms, token


class _BroNetBf16Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, depth, eps, param_grads, cache, *params):
        logits, weights, inputs, norms, token = _forward_bf16(x, list(params), depth, eps, cache,
                                                              True)
        ctx.save_for_backward(*params)
        # The lease lives as long as this node (also through a retain_graph backward).
        ctx.weights, ctx.inputs, ctx.norms, ctx.lease = weights, inputs, norms, token
        ctx.depth, ctx.param_grads = depth, param_grads
        return logits

    @staticmethod
    @first_order_only("the network's forward_layers (the composed ops)")
    def backward(ctx, grad_logits):
        params = ctx.saved_tensors
        weights, inputs, norms = ctx.weights, ctx.inputs, ctx.norms
        need = ctx.param_grads and any(ctx.needs_input_grad[5:])
        grads: list[Tensor | None] = [None] * len(params)
        # Head (float32 baddbmm): float32 gradients; grad_h, float32, is the whole gradient of
        # the top layer's output (no bf16 matmul gradient; the kernels take it as grad_add).
        grad = grad_logits.contiguous()
        if need:
            grads[-2] = torch.bmm(inputs[-1].transpose(1, 2), grad)
            grads[-1] = grad.sum(1, keepdim=True)
        grad_h = torch.bmm(grad, params[-2].transpose(1, 2))

        def layer_backward(index, first, grad_out, relu, input_grad=True, grad_add=None,
                           keep_sum=False):
            """As in _BroNetFunction.backward, in bf16: grad_out is the bf16 matmul gradient
            (None: grad_add is the whole gradient), grad_add float32; returns (the bf16 input
            gradient or None, the float32 gradient used when keep_sum)."""
            y, stats = norms[index]
            bias, gamma, beta = params[first + 1:first + 4]
            grad_y, norm_grads, used = backward_kernel_bf16(
                grad_out, y, bias, gamma, beta, stats, relu, need, grad_add, keep_sum)
            if need:
                grads[first] = torch.bmm(inputs[index].transpose(1, 2), grad_y).float()
                grads[first + 1:first + 4] = norm_grads.unbind(0)
            grad_in = torch.bmm(grad_y, weights[index].transpose(1, 2)) if input_grad else None
            return grad_in, used

        # A block's input h gets grad_h through fc1 (bf16 matmul output) and the full gradient of
        # its output through the residual (float32): the norm kernel of the layer that reads the
        # first adds the second, and keeps the float32 sum (pending) for the block below.
        # The top layer: no bf16 matmul gradient, the head's float32 grad_h is all of it (and,
        # for a block, also the residual gradient passed on as is).
        grad_h, pending = None, grad_h
        for block in reversed(range(ctx.depth)):
            first = 4 + _BLOCK * block
            top = grad_h is None
            grad_inner, pending_next = layer_backward(2 + 2 * block, first + 4, grad_h, relu=False,
                                                      grad_add=pending, keep_sum=not top)
            grad_h = layer_backward(1 + 2 * block, first, grad_inner, relu=True)[0]
            pending = pending if top else pending_next
        grad_x = layer_backward(0, 0, grad_h, relu=True, input_grad=ctx.needs_input_grad[0],
                                grad_add=pending)[0]
        grad_x = None if grad_x is None else grad_x.float().sum(0)
        return (grad_x, None, None, None, None, *grads)
