"""The bf16 critic on the CPU (AgentConfig.bf16; mtrl.fused_bronet's bf16 path, the bf16 norm
kernels of mtrl.ensemble_norm, the cpuid check).

Tolerances, and why:
  * kernels: the bf16 norm kernels are the float32 kernels on widened inputs with a rounding at
    the end, so they are compared bitwise (widths that are multiples of 16; a row tail may differ
    in the last float32 bit of d bias, see below) and their bf16 outputs bitwise against torch's
    own ``.to(torch.bfloat16)``;
  * network vs the composed ops under ``torch.autocast("cpu", torch.bfloat16)`` (the head outside
    it, float32): the same rounding points, only the float32 order inside the norm differs (C++
    kernel vs F.layer_norm), so nearly all float32 logits agree to float32 rounding and the rest
    (a flipped bf16 rounding in the trunk) within bf16 rounding;
  * network vs float32: bf16's 8-bit significand, compounded over the layers (relative norm
    errors ~1e-2 forward, several 1e-2 in gradients), and no larger than autocast's own error.
"""

import copy
import pickle

import pytest
import torch

from mtrl import _core
from mtrl import fused_bronet
from mtrl.agent import BRCAgent
from mtrl.config import AgentConfig
from mtrl.ensemble_norm import (
    backward_kernel,
    backward_kernel_bf16,
    forward_kernel,
    forward_kernel_bf16,
)
from mtrl.fused_bronet import bronet_forward, cpu_bf16_features
from mtrl.networks import LAYER_NORM_EPS, Critic

from agent_fixtures import ACT, OBS, TASKS, make_agent, make_batch

BF16 = torch.bfloat16
NATIVE = any(cpu_bf16_features().values())
needs_native = pytest.mark.skipif(not NATIVE, reason="CPU without AMX-BF16 / AVX512-BF16")
AUTOCAST = dict(device_type="cpu", dtype=BF16)


def _params(members, width, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(members, 1, width, generator=g) for _ in range(3)]


# ---------------------------------------------------------------- kernels
@pytest.mark.parametrize("epilogue", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2, 37, 48), (2, 256, 512), (1, 5, 16)])
def test_forward_kernel_is_float32_kernel_on_widened_input(epilogue, shape):
    g = torch.Generator().manual_seed(1)
    y = (torch.randn(shape, generator=g) * 3 + 1).to(BF16)
    bias, gamma, beta = _params(shape[0], shape[2], 2)
    residual = torch.randn(shape, generator=g) if epilogue == 2 else None
    out, out_bf, stats = forward_kernel_bf16(y, bias, gamma, beta, residual, epilogue, 1e-6)
    ref, ref_stats = forward_kernel(y.float(), bias, gamma, beta, residual, epilogue, 1e-6)
    assert out.dtype == torch.float32 and out_bf.dtype == BF16
    assert torch.equal(out, ref) and torch.equal(stats, ref_stats)
    assert torch.equal(out_bf, out.to(BF16))
    none, out_bf_only, stats_only = forward_kernel_bf16(y, bias, gamma, beta, residual, epilogue,
                                                        1e-6, keep_out=False)
    assert none is None and torch.equal(out_bf_only, out_bf) and torch.equal(stats_only, stats)


def test_bf16_output_rounds_like_torch_bit_for_bit():
    # out = beta exactly (gamma = 0): ties to even both ways, values just off a tie, subnormals
    # (which AVX512-BF16's vcvtneps2bf16 would flush to zero), the largest finite value, inf.
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F808001, 0xBF818000, 0x00012345, 0x80008000,
                         0x00000001, 0x7F7FFFFF, 0x7F7F7FFF, 0xFF800000, 0x7F800000, 0x00000000,
                         0x3EAAAAAB, 0xC2C80000, 0x33800000, 0x0080FFFF], dtype=torch.int64)
    beta = bits.to(torch.int32).view(torch.float32).reshape(1, 1, 16)
    y = torch.randn(1, 3, 16).to(BF16)
    zeros = torch.zeros(1, 1, 16)
    out, out_bf, _ = forward_kernel_bf16(y, zeros, zeros, beta, None, 0, 1e-6)
    assert torch.equal(out, beta.expand(1, 3, 16))
    expected = beta.to(BF16).expand(1, 3, 16)
    assert torch.equal(out_bf.view(torch.int16), expected.view(torch.int16))
    assert out_bf.view(torch.int16)[0, 0, 4].item() == 1  # the subnormal was not flushed


@pytest.mark.parametrize("width", [16, 21])  # vector lanes only; and a scalar tail of 5
def test_nan_rounds_to_a_quiet_nan_and_stays_in_its_row(width):
    # Signalling, negative and payload NaNs all become bf16's quiet NaN 0x7FC0 (torch's scalar
    # cast; the integer rounding alone would carry a payload into inf or wrap): in the vector
    # lanes and the row tail alike. A NaN in y spoils its own row only, forward and backward.
    nans = torch.tensor([0x7F800001, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF], dtype=torch.int64)
    bits = torch.zeros(width, dtype=torch.int64)
    bits[:4], bits[-4:] = nans, nans
    beta = bits.to(torch.int32).view(torch.float32).reshape(1, 1, width)
    zeros, ones = torch.zeros(1, 1, width), torch.ones(1, 1, width)
    y = torch.randn(1, 3, width).to(BF16)
    _, out_bf, _ = forward_kernel_bf16(y, zeros, zeros, beta, None, 0, 1e-6)
    lanes = out_bf.view(torch.int16)[:, :, bits != 0]
    assert (lanes == 0x7FC0).all() and (out_bf.view(torch.int16)[:, :, bits == 0] == 0).all()
    y[0, 1, 2] = float("nan")
    out, out_bf, stats = forward_kernel_bf16(y, zeros, ones, zeros, None, 0, 1e-6)
    grad_y, _, _ = backward_kernel_bf16(torch.randn(1, 3, width).to(BF16), y, zeros, ones, zeros,
                                        stats, False, True)
    for t in (out, out_bf, grad_y):
        assert t[0, 1].isnan().all() and not t[0, ::2].isnan().any()


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_add", [False, True])
@pytest.mark.parametrize("need", [False, True])
@pytest.mark.parametrize("shape", [(2, 37, 48), (2, 130, 512)])
def test_backward_kernel_is_float32_kernel_then_rounded(relu, with_add, need, shape):
    g = torch.Generator().manual_seed(3)
    y = (torch.randn(shape, generator=g) * 2).to(BF16)
    bias, gamma, beta = _params(shape[0], shape[2], 4)
    _, _, stats = forward_kernel_bf16(y, bias, gamma, beta, None, int(relu), 1e-6)
    grad_out = torch.randn(shape, generator=g).to(BF16)
    grad_add = torch.randn(shape, generator=g) if with_add else None
    grad_y, grads, used = backward_kernel_bf16(grad_out, y, bias, gamma, beta, stats, relu, need,
                                               grad_add, keep_sum=True)
    ref_out = grad_out.float()
    ref_y, ref_grads = backward_kernel(ref_out, y.float(), bias, gamma, beta, stats, relu, need,
                                       None if grad_add is None else grad_add.clone())
    assert grad_y.dtype == BF16 and torch.equal(grad_y, ref_y.to(BF16))
    assert torch.equal(used, ref_out)  # grad_out.float() (+ grad_add), kept in float32
    assert (grads is None) == (not need)
    if need:
        assert grads.dtype == torch.float32 and torch.equal(grads, ref_grads)
    no_sum = backward_kernel_bf16(grad_out, y, bias, gamma, beta, stats, relu, need, grad_add)
    assert no_sum[2] is None and torch.equal(no_sum[0], grad_y)


def test_backward_kernel_row_tails_within_float32_rounding():
    # W = 40: 8 values per row in the scalar tail, where GCC may contract the d bias sum
    # differently in the two builds of the loop (a last-bit difference, nothing more).
    g = torch.Generator().manual_seed(5)
    y = torch.randn(2, 7, 40, generator=g).to(BF16)
    bias, gamma, beta = _params(2, 40, 6)
    _, _, stats = forward_kernel_bf16(y, bias, gamma, beta, None, 0, 1e-6)
    grad_out = torch.randn(2, 7, 40, generator=g).to(BF16)
    grad_y, grads, _ = backward_kernel_bf16(grad_out, y, bias, gamma, beta, stats, False, True)
    ref_y, ref_grads = backward_kernel(grad_out.float(), y.float(), bias, gamma, beta, stats,
                                       False, True)
    torch.testing.assert_close(grad_y.float(), ref_y.to(BF16).float(), rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-6, atol=1e-6)


def test_kernel_bindings_name_the_bad_argument():
    dl = torch.utils.dlpack.to_dlpack
    y = torch.randn(2, 4, 16).to(BF16)
    bias, gamma, beta = _params(2, 16, 7)
    out, out_bf = torch.empty(2, 4, 16), torch.empty(2, 4, 16, dtype=BF16)
    stats = torch.empty(2, 2, 4)
    with pytest.raises(ValueError, match=r"y must be a dense CPU bfloat16 tensor of shape "
                                         r"\(2, 4, 16\)"):
        _core._ensemble_norm_forward_bf16(dl(y.float()), dl(bias), dl(gamma), dl(beta), None, 1,
                                          1e-6, dl(out), dl(out_bf), dl(stats), 1)
    with pytest.raises(ValueError, match=r"gamma must be a dense CPU float32 tensor of shape "
                                         r"\(2, 1, 16\)"):
        _core._ensemble_norm_forward_bf16(dl(y), dl(bias), dl(gamma[:1]), dl(beta), None, 1, 1e-6,
                                          dl(out), dl(out_bf), dl(stats), 1)
    with pytest.raises(ValueError, match="residual must be"):
        _core._ensemble_norm_forward_bf16(dl(y), dl(bias), dl(gamma), dl(beta), None, 2, 1e-6,
                                          dl(out), dl(out_bf), dl(stats), 1)
    with pytest.raises(ValueError, match="epilogue must be"):
        _core._ensemble_norm_forward_bf16(dl(y), dl(bias), dl(gamma), dl(beta), None, 3, 1e-6,
                                          dl(out), dl(out_bf), dl(stats), 1)
    with pytest.raises(ValueError, match=r"grad_y must be a dense CPU bfloat16"):
        _core._ensemble_norm_backward_bf16(dl(y), None, None, dl(y), dl(bias), dl(gamma), dl(beta),
                                           dl(stats), True, dl(out), None, 1)
    with pytest.raises(ValueError, match=r"grad_add must be a dense CPU float32"):
        _core._ensemble_norm_backward_bf16(dl(y), dl(y), None, dl(y), dl(bias), dl(gamma),
                                           dl(beta), dl(stats), True, dl(out_bf), None, 1)
    with pytest.raises(ValueError, match="grad_out and grad_add cannot both be None"):
        _core._ensemble_norm_backward_bf16(None, None, None, dl(y), dl(bias), dl(gamma),
                                           dl(beta), dl(stats), True, dl(out_bf), None, 1)
    with pytest.raises(ValueError, match="grad_out and grad_add cannot both be None"):
        backward_kernel_bf16(None, y, bias, gamma, beta, stats, True, False)


def _bf16_kernels(y, params, residual, grad_out, grad_add, epilogue, threads, max_isa,
                  keep_sum=True):
    """Forward and backward (parameter gradients, kept sum unless not keep_sum) of the bf16 entry
    points on one instruction-set build: [out, out_bf, stats, grad_y, grad_params, grad_sum].
    grad_out None: grad_add is the whole gradient (the layer under the float32 head)."""
    dl = torch.utils.dlpack.to_dlpack
    members, rows, width = y.shape
    out, out_bf = torch.empty(y.shape), torch.empty_like(y)
    stats, grads = torch.empty(2, members, rows), torch.empty(3, members, 1, width)
    grad_y, grad_sum = torch.empty_like(y), torch.empty(y.shape) if keep_sum else None
    _core._ensemble_norm_forward_bf16(dl(y), *map(dl, params),
                                      dl(residual) if epilogue == 2 else None, epilogue, 1e-6,
                                      dl(out), dl(out_bf), dl(stats), threads, max_isa=max_isa)
    _core._ensemble_norm_backward_bf16(None if grad_out is None else dl(grad_out), dl(grad_add),
                                       None if grad_sum is None else dl(grad_sum), dl(y),
                                       *map(dl, params), dl(stats), epilogue == 1, dl(grad_y),
                                       dl(grads), threads, max_isa=max_isa)
    return [out, out_bf, stats, grad_y, grads, grad_sum]


def _float_kernels(y, params, residual, grad, epilogue, max_isa):
    """The float32 NumPy entry points on the same build: [out, mean, rstd, grad_y, d bias,
    d gamma, d beta]."""
    members, rows, width = y.shape
    p = [t.reshape(members, width).numpy() for t in params]
    out, mean, rstd = (torch.empty(y.shape), torch.empty(members, rows),
                       torch.empty(members, rows))
    _core._ensemble_norm_forward(y.numpy(), *p, residual.numpy() if epilogue == 2 else None,
                                 epilogue, 1e-6, out.numpy(), mean.numpy(), rstd.numpy(), 1,
                                 max_isa=max_isa)
    grad_y, sums = torch.empty(y.shape), [torch.empty(members, width) for _ in range(3)]
    _core._ensemble_norm_backward(grad.numpy(), y.numpy(), *p, mean.numpy(), rstd.numpy(),
                                  epilogue == 1, grad_y.numpy(), *(t.numpy() for t in sums), 1,
                                  max_isa=max_isa)
    return [out, mean, rstd, grad_y, *sums]


@pytest.mark.parametrize("float_grad", [False, True])  # True: no bf16 grad_out (float32 head)
@pytest.mark.parametrize("max_isa", [0, 1, 2])
@pytest.mark.parametrize("epilogue", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 5, 17), (2, 70, 40)])
def test_every_instruction_set_build_is_its_float32_build(shape, epilogue, max_isa, float_grad):
    """Each build (baseline, AVX2, AVX-512, capped by max_isa; a build the CPU lacks falls back to
    the next one down) at widths with row tails (W < 8, odd W), E = 1 and B = 1: the float32
    build of the same instruction set on widened inputs, independent of the thread count; with
    float_grad, the gradient is grad_add alone (kept in grad_sum or read in place)."""
    g = torch.Generator().manual_seed(sum(shape))
    y = (torch.randn(shape, generator=g) * 2 + 0.5).to(BF16)
    params = _params(shape[0], shape[2], 8)
    residual = torch.randn(shape, generator=g)
    grad_out, grad_add = torch.randn(shape, generator=g).to(BF16), torch.randn(shape, generator=g)
    if float_grad:
        grad_out, used = None, grad_add
    else:
        used = grad_out.float() + grad_add
    got = _bf16_kernels(y, params, residual, grad_out, grad_add, epilogue, 3, max_isa)
    for a, b in zip(_bf16_kernels(y, params, residual, grad_out, grad_add, epilogue, 1, max_isa),
                    got):
        assert torch.equal(a, b)
    no_sum = _bf16_kernels(y, params, residual, grad_out, grad_add, epilogue, 3, max_isa,
                           keep_sum=False)
    assert no_sum[5] is None and all(torch.equal(a, b) for a, b in zip(no_sum[:5], got[:5]))
    out, out_bf, stats, grad_y, grads, grad_sum = got
    ref = _float_kernels(y.float(), params, residual, used, epilogue, max_isa)
    assert torch.equal(out, ref[0]) and torch.equal(stats, torch.stack(ref[1:3]))
    assert torch.equal(out_bf, out.to(BF16))
    assert torch.equal(grad_sum, used)
    # (a row tail's d bias may differ in the last float32 bit, and then its bf16 rounding)
    torch.testing.assert_close(grad_y.float(), ref[3].to(BF16).float(), rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(grads.squeeze(2), torch.stack(ref[4:]), rtol=1e-5, atol=1e-6)


def test_kernel_outputs_that_overlap_another_buffer_are_refused():
    # The forward writes out before it reads the residual: out aliasing residual would silently
    # give wrong values. Any output overlapping any other buffer of the call is an error.
    dl = torch.utils.dlpack.to_dlpack
    y = torch.randn(2, 4, 16).to(BF16)
    params = _params(2, 16, 9)
    residual, out_bf, stats = torch.randn(2, 4, 16), torch.empty_like(y), torch.empty(2, 2, 4)
    with pytest.raises(ValueError, match="out overlaps residual"):
        _core._ensemble_norm_forward_bf16(dl(y), *map(dl, params), dl(residual), 2, 1e-6,
                                          dl(residual), dl(out_bf), dl(stats), 1)
    with pytest.raises(ValueError, match="out_bf overlaps y"):
        _core._ensemble_norm_forward_bf16(dl(y), *map(dl, params), None, 1, 1e-6, None, dl(y),
                                          dl(stats), 1)
    scratch = torch.empty(2 * 4 * 16 + 2 * 2 * 4)  # out and stats sharing one allocation
    with pytest.raises(ValueError, match="out overlaps stats"):
        _core._ensemble_norm_forward_bf16(dl(y), *map(dl, params), None, 1, 1e-6,
                                          dl(scratch[:128].view(2, 4, 16)), dl(out_bf),
                                          dl(scratch[120:136].view(2, 2, 4)), 1)
    _core._ensemble_norm_forward_bf16(dl(y), *map(dl, params), None, 1, 1e-6,
                                      dl(scratch[:128].view(2, 4, 16)), dl(out_bf),
                                      dl(scratch[128:].view(2, 2, 4)), 1)  # adjacent: fine
    grad_add, grad_y = torch.randn(2, 4, 16), torch.empty_like(y)
    with pytest.raises(ValueError, match="grad_sum overlaps grad_add"):
        _core._ensemble_norm_backward_bf16(dl(y), dl(grad_add), dl(grad_add), dl(y),
                                           *map(dl, params), dl(stats), True, dl(grad_y), None, 1)
    with pytest.raises(ValueError, match="grad_y overlaps grad_out"):
        _core._ensemble_norm_backward_bf16(dl(grad_y), None, None, dl(y), *map(dl, params),
                                           dl(stats), True, dl(grad_y), None, 1)
    grads = torch.stack(params)  # (3, E, 1, W) written over bias, gamma, beta
    with pytest.raises(ValueError, match="grad_params overlaps bias"):
        _core._ensemble_norm_backward_bf16(dl(y), None, None, dl(y), *map(dl, grads), dl(stats),
                                           True, dl(grad_y), dl(grads), 1)


def test_python_kernel_entry_points_name_a_y_that_is_not_3d():
    y = torch.randn(4, 16).to(BF16)
    bias, gamma, beta = _params(1, 16, 10)
    with pytest.raises(ValueError, match=r"y must have shape \(E, B, W\), got \(4, 16\)"):
        forward_kernel_bf16(y, bias, gamma, beta, None, 1, 1e-6)
    with pytest.raises(ValueError, match=r"y must have shape \(E, B, W\), got \(4, 16\)"):
        backward_kernel_bf16(y, y, bias, gamma, beta, torch.empty(2, 1, 4), True, False)


# ---------------------------------------------------------------- network
def _critic(tasks, width, depth, seed):
    torch.manual_seed(seed)
    critic = Critic(5, 2, tasks, width=width, depth=depth)
    with torch.no_grad():  # non-trivial LayerNorm and bias parameters
        for p in critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return critic


def _run(critic, batch, seed, *, bf16, composed=False):
    """(logits float32, gradients of every parameter and of the action) for a random loss."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, 5, generator=g)
    action = (torch.rand(batch, 2, generator=g) * 2 - 1).requires_grad_()
    task = torch.randint(0, critic.num_tasks, (batch,), generator=g)
    weights = torch.randn(2, batch, critic.head.weight.shape[-1], generator=g)
    critic.zero_grad(set_to_none=True)
    with torch.autocast(**AUTOCAST, enabled=bf16):
        if composed:
            parts = [obs, action] + ([critic.embed(task)] if critic.num_tasks > 1 else [])
            out = critic.forward_layers(torch.cat(parts, -1))
        else:
            out = critic(obs, action, task)
    (out.float() * weights).sum().backward()
    return out, [p.grad for p in critic.parameters()] + [action.grad]


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("depth,tasks", [(0, 1), (1, 3), (2, 1), (2, 3)])
def test_fast_path_matches_composed_autocast(depth, tasks):
    critic = _critic(tasks, 48, depth, seed=depth + 10 * tasks)
    out, grads = _run(critic, 37, 1, bf16=True)
    assert "BroNetBf16Function" in type(out.grad_fn).__name__ and out.dtype == torch.float32
    ref, ref_grads = _run(critic, 37, 1, bf16=True, composed=True)
    # The composed ops under autocast, the head outside it: float32 logits.
    assert "BroNetBf16Function" not in type(ref.grad_fn).__name__ and ref.dtype == torch.float32
    # Same rounding points: the float32 order inside the norm (C++ vs F.layer_norm) reaches the
    # float32 logits as last-bit differences; where it flips a bf16 rounding in the trunk, the
    # difference is bf16-sized. Nearly all logits agree to float32 rounding.
    close = (out - ref).abs() <= 1e-5 * ref.abs().clamp_min(1e-2)
    assert close.float().mean() > 0.95 and _rel(out, ref) < 1e-3
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)
    for g, r, (name, _) in zip(grads, ref_grads, [*critic.named_parameters(), ("action", None)]):
        assert g.dtype == torch.float32 and g.shape == r.shape, name
        assert _rel(g, r) < 1e-2, name


@pytest.mark.parametrize("depth", [0, 2])
def test_head_is_float32(depth):
    # logits = bias + h W in float32 on the top layer's float32 output h (kept by the node), not
    # rounded to bf16; the head's gradients are float32: with the loss sum(out * weights) the
    # logit gradient is weights, so d bias = weights summed over the batch and d W = h^T weights,
    # bit for bit as float32 ops give them.
    critic = _critic(3, 48, depth, seed=20 + depth)
    out, grads = _run(critic, 37, 3, bf16=True)
    node = out.grad_fn
    h = node.inputs[-1]
    assert h.dtype == torch.float32 and h.shape == (2, 37, 48)
    assert not torch.equal(h, h.to(BF16).float())  # the float32 h, not its bf16 copy
    head_w, head_b = critic.head.weight, critic.head.bias
    assert torch.equal(out, torch.baddbmm(head_b, h, head_w).detach())
    assert not torch.equal(out, out.to(BF16).float())
    g = torch.Generator().manual_seed(3)  # _run's draws, to its logit weights
    torch.randn(37, 5, generator=g), torch.rand(37, 2, generator=g)
    torch.randint(0, 3, (37,), generator=g)
    weights = torch.randn(2, 37, 101, generator=g)
    assert torch.equal(head_b.grad, weights.sum(1, keepdim=True))
    assert torch.equal(head_w.grad, torch.bmm(h.transpose(1, 2), weights))
    # The head's weight is not among the bf16 copies (the trunk's: fc_in, fc1 and fc2 per block).
    assert len(node.weights) == 1 + 2 * depth


def test_fast_path_close_to_float32_as_autocast_is():
    critic = _critic(3, 64, 2, seed=4)
    fast, fast_grads = _run(critic, 64, 2, bf16=True)
    composed, composed_grads = _run(critic, 64, 2, bf16=True, composed=True)
    fp32, fp32_grads = _run(critic, 64, 2, bf16=False)
    assert _rel(fast, fp32) < 2e-2
    assert _rel(fast, fp32) <= 1.2 * _rel(composed, fp32) + 1e-4
    for g, c, r in zip(fast_grads, composed_grads, fp32_grads):
        assert _rel(g, r) < 0.15  # bf16 gradients through five layers (module docstring)
        assert _rel(g, r) <= 1.2 * _rel(c, r) + 1e-3


def test_without_param_grads_and_without_graph():
    critic = _critic(3, 32, 1, seed=5)
    obs, action = torch.randn(9, 5), torch.rand(9, 2).requires_grad_()
    task = torch.randint(0, 3, (9,))
    with torch.autocast(**AUTOCAST):
        out = critic(obs, action, task, param_grads=False)
    out.sum().backward()
    assert all(p.grad is None for p in critic.parameters()) and action.grad is not None
    x = torch.cat([obs, action.detach(), critic.embed(task).detach()], -1)
    with torch.no_grad():
        plain = bronet_forward(x, critic.layer_parameters(), 1, LAYER_NORM_EPS, True, bf16=True)
    assert plain.grad_fn is None and torch.equal(plain, out.detach())


def test_weight_buffers_reused_but_never_under_a_pending_graph():
    critic = _critic(3, 32, 1, seed=7)
    obs, action = torch.randn(9, 5), torch.rand(9, 2)
    task = torch.randint(0, 3, (9,))
    with torch.autocast(**AUTOCAST):
        first = critic(obs, action, task)
        second = critic(obs, action, task)  # while the first graph (and its lease) is alive
    ptrs = [[w.data_ptr() for w in out.grad_fn.weights] for out in (first, second)]
    assert all(a != b for a, b in zip(*ptrs))
    assert torch.equal(first, second)
    reference = [g.clone() for g in torch.autograd.grad(second.sum(), list(critic.parameters()))]
    del first, second  # the graphs (and the lease) are gone: the buffers are free again
    with torch.autocast(**AUTOCAST):
        third = critic(obs, action, task)
    assert [w.data_ptr() for w in third.grad_fn.weights] == ptrs[0]
    for g, r in zip(torch.autograd.grad(third.sum(), list(critic.parameters())), reference):
        assert torch.equal(g, r)
    clone = copy.deepcopy(critic)  # the target critic: buffers of its own, same outputs
    with torch.no_grad(), torch.autocast(**AUTOCAST):
        assert torch.equal(clone(obs, action, task), critic(obs, action, task))
    assert pickle.loads(pickle.dumps(critic))._bf16_weights is not critic._bf16_weights


def test_pending_backward_uses_its_forwards_weights_after_they_change():
    # The weights change (here through .data, which autograd does not see) while the first graph
    # is alive, and forwards with and without a graph cast the new ones: the first backward, run
    # again with retain_graph, must still multiply by the bf16 copies of its own forward.
    critic = _critic(3, 32, 1, seed=11)
    obs, action, task = torch.randn(9, 5), torch.rand(9, 2), torch.randint(0, 3, (9,))
    params = list(critic.parameters())
    with torch.autocast(**AUTOCAST):
        first = critic(obs, action, task)
    reference = torch.autograd.grad(first.sum(), params, retain_graph=True)
    with torch.no_grad():
        # The trunk's weights (E, in, out), whose bf16 copies the backward multiplies by; the
        # float32 head reads its parameter itself, as the float32 path and autograd do.
        for weight in (p for p in critic.layer_parameters()[:-2] if p.shape[1] != 1):
            weight.data.mul_(1.5)
    with torch.autocast(**AUTOCAST):
        with torch.no_grad():
            changed = critic(obs, action, task)
        second = critic(obs, action, task)
    assert not torch.equal(changed, first) and torch.equal(second, changed)
    for g, r in zip(torch.autograd.grad(first.sum(), params), reference):
        assert torch.equal(g, r)
    # A change that autograd does see (an optimizer step) is refused, as for float32.
    second.sum().backward(retain_graph=True)
    torch.optim.SGD(params, lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        second.sum().backward()


def test_other_autocast_dtype_takes_composed_ops():
    # float16 autocast: the composed ops, the trunk in float16 (so not the float32 result), the
    # head in float32 outside autocast (as for bf16).
    critic = _critic(1, 16, 1, seed=6)
    inputs = (torch.randn(4, 5), torch.rand(4, 2), torch.zeros(4, dtype=torch.long))
    with torch.autocast("cpu", dtype=torch.float16):
        out = critic(*inputs)
    assert out.dtype == torch.float32 and "BroNetBf16Function" not in type(out.grad_fn).__name__
    fp32 = critic(*inputs)
    assert not torch.equal(out, fp32)
    torch.testing.assert_close(out, fp32, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- agent
def _agent(bf16):
    return make_agent(bf16=bf16)


@needs_native
def test_agent_update_with_bf16_trains_float32_parameters():
    agent, ref = _agent(True), _agent(False)
    before = [p.detach().clone() for p in agent.parameters()]
    for step in range(3):
        torch.manual_seed(step)
        metrics = agent.update(make_batch(step), torch.ones(TASKS))
        torch.manual_seed(step)
        ref_metrics = ref.update(make_batch(step), torch.ones(TASKS))
    for name, value in metrics.items():
        assert torch.isfinite(value).all(), name
    for (name, p), old in zip(agent.named_parameters(), before):
        assert p.dtype == torch.float32, name
        if name not in ("log_alpha",) and not name.startswith("critic.task_embedding"):
            assert not torch.equal(p, old), name
        if p.grad is not None:
            assert p.grad.dtype == torch.float32, name
    # bf16 changes the rounding, not the algorithm: the losses follow the float32 agent's.
    for key in ("critic_loss", "q_target_mean", "q_mean"):
        torch.testing.assert_close(metrics[key], ref_metrics[key], rtol=5e-2, atol=5e-2)


@needs_native
def test_bf16_state_resumes_without_bf16_and_back_and_acting_is_float32():
    # AgentConfig.bf16 may change on resume (mtrl.checkpoint.RESUMABLE_CHANGES): the state is the
    # float32 master state either way, and nothing of the weight caches is in it.
    agent = _agent(True)
    agent.update(make_batch(0), torch.ones(TASKS))
    state = agent.full_state_dict()
    plain = _agent(False)
    assert {k: (v.dtype, v.shape) for k, v in state["modules"].items()} == \
        {k: (v.dtype, v.shape) for k, v in plain.state_dict().items()}
    plain.load_full_state_dict(state)
    obs, task = torch.randn(5, OBS), torch.randint(0, TASKS, (5,))
    # The actor is float32 in both (bf16 is the critic's): the same actions.
    assert torch.equal(plain.act(obs, task, deterministic=True),
                       agent.act(obs, task, deterministic=True))
    plain.update(make_batch(1), torch.ones(TASKS))
    back = _agent(True)
    back.load_full_state_dict(plain.full_state_dict())
    metrics = back.update(make_batch(2), torch.ones(TASKS))
    assert all(torch.isfinite(v).all() for v in metrics.values())


@needs_native
# Dynamo warns when it wraps the actor's action (a non-leaf input of the compiled critic in the
# actor loss) and reads its .grad; float32 with compile does the same, nothing bf16 about it.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_bf16_with_compile_on_cpu_trains():
    # Under torch.compile the critic is the composed ops (kernel_applies is False while
    # compiling), which the compiled graph runs under CPU bf16 autocast: it works, the bf16 fast
    # path is simply not used. (~5 s of compilation.)
    torch.manual_seed(0)
    agent = BRCAgent(AgentConfig(critic_width=32, actor_width=16, bf16=True, compile=True), OBS,
                     ACT, TASKS)
    before = [p.detach().clone() for p in agent.critic.parameters()]
    metrics = agent.update(make_batch(0), torch.ones(TASKS))
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in agent.critic.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(agent.critic.parameters(), before))


def test_cpu_without_native_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(fused_bronet, "cpu_bf16_features",
                        lambda: {"amx_bf16": False, "avx512_bf16": False})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs native bf16 matrix instructions, AMX-BF16 or "
                                         "AVX512-BF16, and this CPU has neither"):
        _agent(True)
    _agent(False)  # float32 is always fine


def test_cpu_agent_built_where_cuda_exists_is_checked_at_its_first_update(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # skips the construction check
    agent = _agent(True)
    monkeypatch.setattr(fused_bronet, "cpu_bf16_features",
                        lambda: {"amx_bf16": False, "avx512_bf16": False})
    with pytest.raises(ValueError, match="AMX-BF16 or AVX512-BF16"):
        agent.update(make_batch(), torch.ones(TASKS))


def test_detection_reports_both_features():
    features = cpu_bf16_features()
    assert set(features) == {"amx_bf16", "avx512_bf16"}
    assert all(isinstance(v, bool) for v in features.values())
