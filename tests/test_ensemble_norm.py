"""The fused critic-layer kernel (bias + LayerNorm + per-member affine + ReLU/residual) equals the
PyTorch-ops reference and a float64 derivation, is thread-count independent, and checks inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrl import _core
from mtrl.ensemble_norm import ensemble_norm, ensemble_norm_reference

EPS = 1e-6


def make(members, rows, width, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(members, rows, width, generator=g) * 3 + 1).to(dtype)
    params = [(torch.randn(members, 1, width, generator=g) * 0.3 + m).to(dtype)
              for m in (0.0, 1.0, 0.0)]
    residual = torch.randn(members, rows, width, generator=g).to(dtype)
    grad = torch.randn(members, rows, width, generator=g).to(dtype)
    return y, params, residual, grad


def run(fn, y, params, residual, grad, mode):
    y = y.clone().requires_grad_()
    params = [p.clone().requires_grad_() for p in params]
    res = residual.clone().requires_grad_() if mode == "residual" else None
    out = fn(y, *params, eps=EPS, relu=mode == "relu", residual=res)
    out.backward(grad)
    grads = [y.grad] + [p.grad for p in params] + ([res.grad] if res is not None else [])
    return out.detach(), grads


def np_forward(y, bias, gamma, beta, mode, residual):
    """float64 NumPy derivation of the forward."""
    z = y + bias
    xhat = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + EPS)
    out = xhat * gamma + beta
    if mode == "relu":
        return np.maximum(out, 0.0)
    return out + residual if mode == "residual" else out


@pytest.mark.parametrize("mode", ["relu", "residual", "none"])
@pytest.mark.parametrize("shape", [(2, 256, 512), (2, 300, 64), (1, 7, 37), (3, 130, 21),
                                   (1, 1, 5), (2, 1, 16), (2, 67, 1), (1, 65, 200)])
def test_fused_matches_reference(shape, mode):
    y, params, residual, grad = make(*shape)
    out, grads = run(ensemble_norm, y, params, residual, grad, mode)
    ref_out, ref_grads = run(ensemble_norm_reference, y.double(), [p.double() for p in params],
                             residual.double(), grad.double(), mode)
    np.testing.assert_allclose(
        out.numpy(), np_forward(y.double().numpy(), *[p.double().numpy() for p in params], mode,
                                residual.double().numpy()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    assert len(grads) == len(ref_grads)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_fused_path_is_taken_and_saves_no_param_grads_when_not_needed():
    y, params, _, grad = make(2, 16, 32)
    y.requires_grad_()
    out = ensemble_norm(y, *params, eps=EPS, relu=True)  # params do not require grad
    assert out.grad_fn is not None and "EnsembleNorm" in type(out.grad_fn).__name__
    out.backward(grad)
    ref = y.detach().clone().requires_grad_()
    ensemble_norm_reference(ref, *params, eps=EPS, relu=True).backward(grad)
    torch.testing.assert_close(y.grad, ref.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode,shape", [("relu", (2, 1024, 512)), ("residual", (3, 130, 37)),
                                        ("none", (2, 131, 19))])
def test_results_do_not_depend_on_thread_count(mode, shape):
    y, params, residual, grad = make(*shape, seed=3)
    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(run(ensemble_norm, y, params, residual, grad, mode))
    finally:
        torch.set_num_threads(old)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        for a, b in zip(grads, results[0][1]):
            assert torch.equal(a, b)


def _numpy_kernels(y, params, residual, grad, epilogue, with_params, threads, max_isa):
    """Forward and backward through the NumPy entry points on one instruction-set build."""
    members, rows, width = y.shape
    p = [t.reshape(members, width).numpy() for t in params]
    out, mean, rstd = np.empty(y.shape, np.float32), np.empty((members, rows), np.float32), \
        np.empty((members, rows), np.float32)
    _core._ensemble_norm_forward(y.numpy(), *p, residual.numpy() if epilogue == 2 else None,
                                 epilogue, EPS, out, mean, rstd, threads, max_isa=max_isa)
    grad_y = np.empty(y.shape, np.float32)
    sums = [np.empty((members, width), np.float32) for _ in range(3)] if with_params else [None] * 3
    _core._ensemble_norm_backward(grad.numpy(), y.numpy(), *p, mean, rstd, epilogue == 1, grad_y,
                                  *sums, threads, max_isa=max_isa)
    return [out, mean, rstd, grad_y] + ([] if sums[0] is None else sums)


@pytest.mark.parametrize("max_isa", [0, 1, 2])
@pytest.mark.parametrize("epilogue", [0, 1, 2])
def test_forward_rows_do_not_depend_on_how_they_are_grouped(epilogue, max_isa):
    """The forward interleaves several rows per step (kForwardRows, csrc/nn/ensemble_norm_impl.h:
    a tuning knob); each row's output and statistics must be bit for bit those of the row
    computed alone, whatever the grouping."""
    members, rows, width = 2, 11, 515  # odd rows: full groups and the remainder rows
    y, params, residual, _ = make(members, rows, width, seed=3)
    p = [t.reshape(members, width).numpy() for t in params]

    def forward(y_, res_):
        out = np.empty(y_.shape, np.float32)
        mean = np.empty(y_.shape[:2], np.float32)
        rstd = np.empty(y_.shape[:2], np.float32)
        _core._ensemble_norm_forward(np.ascontiguousarray(y_), *p,
                                     np.ascontiguousarray(res_) if epilogue == 2 else None,
                                     epilogue, EPS, out, mean, rstd, 1, max_isa=max_isa)
        return out, mean, rstd

    whole = forward(y.numpy(), residual.numpy())
    for r in range(rows):
        alone = forward(y.numpy()[:, r:r + 1], residual.numpy()[:, r:r + 1])
        for a, b in zip(alone, whole):
            np.testing.assert_array_equal(a, b[:, r:r + 1])


@pytest.mark.parametrize("max_isa", [0, 1, 2])
@pytest.mark.parametrize("epilogue,with_params", [(1, True), (2, True), (1, False), (0, True)])
@pytest.mark.parametrize("shape", [(2, 131, 515), (1, 5, 7), (2, 64, 48)])
def test_every_instruction_set_build_matches_the_reference(shape, epilogue, with_params, max_isa):
    """The baseline, AVX2 and AVX-512 builds (capped by max_isa; a build the CPU lacks falls back to
    the next one down) each match the float64 reference and do not depend on the thread count."""
    y, params, residual, grad = make(*shape, seed=7)
    mode = {0: "none", 1: "relu", 2: "residual"}[epilogue]
    got = _numpy_kernels(y, params, residual, grad, epilogue, with_params, 2, max_isa)
    for a, b in zip(_numpy_kernels(y, params, residual, grad, epilogue, with_params, 1, max_isa),
                    got):
        np.testing.assert_array_equal(a, b)
    ref_out, ref_grads = run(ensemble_norm_reference, y.double(), [p.double() for p in params],
                             residual.double(), grad.double(), mode)
    np.testing.assert_allclose(got[0], ref_out.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[3], ref_grads[0].numpy(), rtol=1e-4, atol=1e-4)
    if with_params:  # (E, W) d bias, d gamma, d beta against the (E, 1, W) reference gradients
        for g, want in zip(got[4:], ref_grads[1:4]):
            np.testing.assert_allclose(g, want.reshape(g.shape).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("max_isa", [0, 1, 2])
def test_relu_keeps_nan_as_f_relu_does(max_isa):
    """A NaN in a row (from the input or a weight) makes the whole row NaN after the norm; the
    ReLU epilogue must keep it (F.relu does), not turn the row into zeros: zeros gave finite
    logits and losses with NaN gradients, hiding a diverged critic from the non-finite checks."""
    members, rows, width = 2, 5, 37  # vector lanes and a scalar tail
    y, params, _, _ = make(members, rows, width, seed=11)
    y[0, 1, 3] = float("nan")  # a lane of the vector part
    y[1, 4, width - 1] = float("inf")  # the tail
    p = [t.reshape(members, width).numpy() for t in params]
    out = np.empty(y.shape, np.float32)
    stats = [np.empty(y.shape[:2], np.float32) for _ in range(2)]
    _core._ensemble_norm_forward(y.numpy(), *p, None, 1, EPS, out, *stats, 1, max_isa=max_isa)
    ref = ensemble_norm_reference(y.double(), *[t.double() for t in params], eps=EPS, relu=True)
    np.testing.assert_array_equal(np.isnan(out), ref.isnan().numpy())
    assert np.isnan(out[0, 1]).all() and np.isnan(out[1, 4]).all()
    finite = ~ref.isnan().numpy()
    np.testing.assert_allclose(out[finite], ref.numpy()[finite], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ensemble_norm(y, *params, eps=EPS, relu=True).isnan(), ref.isnan())


def test_empty_batch_vmap_and_create_graph():
    y, params, _, _ = make(2, 0, 8)
    out = ensemble_norm(y.requires_grad_(), *params, eps=EPS, relu=True)  # B = 0 (was refused)
    assert out.shape == (2, 0, 8)
    out.sum().backward()
    # torch.func.vmap: batched tensors have no storage for the kernel; the reference runs.
    ys, _, _, _ = make(2, 12, 8, seed=4)
    ys = ys.reshape(3, 2, 4, 8)
    batched = torch.func.vmap(lambda t: ensemble_norm(t, *params, eps=EPS, relu=True))(ys)
    torch.testing.assert_close(batched, torch.stack(
        [ensemble_norm(t, *params, eps=EPS, relu=True) for t in ys]))
    # No double backward: torch's once_differentiable would let it through as a constant.
    y, params, _, _ = make(2, 4, 8, seed=5)
    y.requires_grad_()
    out = ensemble_norm(y, *params, eps=EPS)
    with pytest.raises(RuntimeError, match="no double backward.*ensemble_norm_reference"):
        torch.autograd.grad(out.sum(), y, create_graph=True)


def test_float64_and_noncontiguous_use_the_reference_path():
    y, params, residual, grad = make(2, 8, 16)
    out64, _ = run(ensemble_norm, y.double(), [p.double() for p in params], residual.double(),
                   grad.double(), "residual")
    ref, _ = run(ensemble_norm_reference, y.double(), [p.double() for p in params],
                 residual.double(), grad.double(), "residual")
    torch.testing.assert_close(out64, ref)
    y_t = y.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous
    torch.testing.assert_close(ensemble_norm(y_t, *params, eps=EPS),
                               ensemble_norm(y, *params, eps=EPS))


def test_bad_inputs_raise():
    y, params, residual, _ = make(2, 4, 8)
    with pytest.raises(ValueError, match="y must be"):
        ensemble_norm(y[0], *params, eps=EPS)
    with pytest.raises(ValueError, match="gamma must be"):
        ensemble_norm(y, params[0], params[1][:, :, :4], params[2], eps=EPS)
    with pytest.raises(ValueError, match="residual must have"):
        ensemble_norm(y, *params, eps=EPS, residual=residual[:, :2])
    # Same element count, other layouts: the kernel read them per member, the reference path
    # (float64, CUDA, compile) broadcast them against y (the two once differed by 3.3).
    for shape in ((1, 2, 8), (2, 8, 1), (16,)):
        with pytest.raises(ValueError, match=r"bias must be \(2, 1, 8\) or \(2, 8\)"):
            ensemble_norm(y, params[0].reshape(shape), params[1], params[2], eps=EPS)
    with pytest.raises(ValueError, match="relu and residual"):
        ensemble_norm(y, *params, eps=EPS, relu=True, residual=residual)
    # The binding is the last line of defence.
    out, mean, rstd = np.empty((2, 4, 8), np.float32), np.empty((2, 4), np.float32), np.empty(
        (2, 4), np.float32)
    p = [t.reshape(2, 8).numpy() for t in params]
    with pytest.raises(ValueError, match="float32"):
        _core._ensemble_norm_forward(y.double().numpy(), *p, None, 1, EPS, out, mean, rstd, 1)
    with pytest.raises(ValueError, match=r"bias must have shape \(2, 8\)"):
        _core._ensemble_norm_forward(y.numpy(), p[0][:, :4].copy(), p[1], p[2], None, 1, EPS, out,
                                     mean, rstd, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core._ensemble_norm_forward(y.numpy().transpose(0, 2, 1), *p, None, 1, EPS, out, mean,
                                     rstd, 1)
    with pytest.raises(ValueError, match="needs residual"):
        _core._ensemble_norm_forward(y.numpy(), *p, None, 2, EPS, out, mean, rstd, 1)
    with pytest.raises(ValueError, match="epilogue must be"):
        _core._ensemble_norm_forward(y.numpy(), *p, None, 5, EPS, out, mean, rstd, 1)
    with pytest.raises(ValueError, match="eps must be > 0"):
        _core._ensemble_norm_forward(y.numpy(), *p, None, 1, 0.0, out, mean, rstd, 1)
    with pytest.raises(ValueError, match="given together"):
        _core._ensemble_norm_backward(y.numpy(), y.numpy(), *p, mean, rstd, True, out, p[0].copy(),
                                      None, None, 1)


@pytest.mark.parametrize("members,shape", [(2, (2, 8)), (1, (1, 8)), (1, (8,)), (1, (1, 1, 8))])
def test_parameters_without_the_row_axis_mean_the_same_on_both_paths(members, shape):
    y, params, _, _ = make(members, 4, 8, seed=3)
    flat = [p.detach().reshape(shape).requires_grad_() for p in params]
    expect = ensemble_norm_reference(y, *params, eps=EPS, relu=True)
    for dtype in (torch.float32, torch.float64):  # the kernel, and the reference path
        out = ensemble_norm(y.to(dtype), *[p.to(dtype) for p in flat], eps=EPS, relu=True)
        torch.testing.assert_close(out.float(), expect, atol=1e-5, rtol=1e-5)
    ensemble_norm(y, *flat, eps=EPS, relu=True).sum().backward()
    assert all(p.grad is not None and p.grad.shape == shape for p in flat)


def test_no_grad_call_matches_and_builds_no_graph():
    y, params, residual, _ = make(2, 8, 16)
    with torch.no_grad():
        out = ensemble_norm(y, *[p.requires_grad_() for p in params], eps=EPS, residual=residual)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, ensemble_norm_reference(y, *params, eps=EPS,
                                                            residual=residual).detach())


def _forward_in_child(conn, arrays, threads):
    out = np.empty_like(arrays[0])
    mean, rstd = np.empty(arrays[0].shape[:2], np.float32), np.empty(arrays[0].shape[:2], np.float32)
    _core._ensemble_norm_forward(*arrays, None, 1, EPS, out, mean, rstd, threads)
    conn.send(out)


def test_kernels_run_in_a_forked_child_after_the_parent_used_threads():
    """The CPU kernels share PyTorch's OpenMP threads, whose team does not survive fork(): a forked
    child must still run them (on one thread) and get the parent's result, not hang."""
    import multiprocessing as mp

    y, params, _, _ = make(2, 256, 512, seed=5)
    arrays = [y.numpy()] + [p.reshape(2, 512).numpy() for p in params]
    out = np.empty_like(arrays[0])
    mean, rstd = np.empty((2, 256), np.float32), np.empty((2, 256), np.float32)
    _core._ensemble_norm_forward(*arrays, None, 1, EPS, out, mean, rstd, 2)  # parent team exists
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_forward_in_child, args=(child, arrays, 2))
    proc.start()
    try:
        assert parent.poll(60), "the kernel hung in a forked child"
        np.testing.assert_array_equal(parent.recv(), out)
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()


def test_fast_entry_points_answer_none_unless_in_kernel_form():
    from torch.utils.dlpack import to_dlpack as dl

    y, params, _, grad = make(2, 8, 16, seed=6)
    out, stats = torch.empty_like(y), torch.empty(2, 2, 8)
    args = [dl(y), *[dl(p) for p in params], None, 1, EPS, dl(out), dl(stats), 1]
    assert _core._ensemble_norm_forward_fast(*args) is True
    bad_cases = {
        "float64 y": 0, "params (E, W)": 1, "stats wrong shape": 8, "non-contiguous out": 7}
    for name, index in bad_cases.items():
        bad = list(args)
        if name == "float64 y":
            bad[0] = dl(y.double())
        elif name == "params (E, W)":
            bad[1] = dl(params[0].reshape(2, 16))
        elif name == "stats wrong shape":
            bad[8] = dl(torch.empty(2, 8))
        else:
            bad[7] = dl(torch.empty(2, 16, 8).transpose(1, 2))
        assert _core._ensemble_norm_forward_fast(*bad) is None, name
    # (E, W) parameters are accepted by ensemble_norm itself (its NumPy path reshapes them).
    flat = [p.reshape(2, 16) for p in params]
    torch.testing.assert_close(ensemble_norm(y, *flat, eps=EPS, relu=True),
                               ensemble_norm(y, *params, eps=EPS, relu=True), rtol=0, atol=0)
    grads = torch.empty(3, 2, 1, 16)
    gy = torch.empty_like(y)
    assert _core._ensemble_norm_backward_fast(
        dl(grad), dl(y), *[dl(p) for p in params], dl(stats), True, dl(gy), dl(grads), 1) is True
    assert _core._ensemble_norm_backward_fast(
        dl(grad), dl(y), *[dl(p) for p in params], dl(stats), True, dl(gy), dl(grads[:2]), 1) is None


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("need_params", [True, False])
@pytest.mark.parametrize("shape", [(2, 256, 512), (1, 7, 37), (3, 130, 21)])
@pytest.mark.parametrize("threads", [1, 2])
def test_backward_grad_add_equals_adding_first(relu, need_params, shape, threads):
    """backward_kernel(grad_out, ..., grad_add=a): grad_out += a in place, then as without it
    (bit for bit: the residual-gradient sum of mtrl.fused_bronet)."""
    from mtrl.ensemble_norm import EPILOGUE_NONE, EPILOGUE_RELU, backward_kernel, forward_kernel

    torch.set_num_threads(threads)
    y, params, residual, grad = make(*shape, seed=7)
    _, stats = forward_kernel(y, *params, None, EPILOGUE_RELU if relu else EPILOGUE_NONE, EPS)
    summed = grad + residual
    expect = backward_kernel(summed.clone(), y, *params, stats, relu, need_params)
    fused_in = grad.clone()
    got = backward_kernel(fused_in, y, *params, stats, relu, need_params, grad_add=residual)
    assert torch.equal(fused_in, summed)  # grad_out now holds the sum
    assert torch.equal(got[0], expect[0])
    assert (got[1] is None) == (not need_params)
    if need_params:
        assert torch.equal(got[1], expect[1])
    torch.set_num_threads(2)


def test_backward_grad_add_outside_kernel_form_is_added_by_the_numpy_path():
    from torch.utils.dlpack import to_dlpack as dl

    from mtrl.ensemble_norm import EPILOGUE_RELU, backward_kernel, forward_kernel

    y, params, residual, grad = make(2, 8, 16, seed=8)
    _, stats = forward_kernel(y, *params, None, EPILOGUE_RELU, EPS)
    gy, grads = torch.empty_like(y), torch.empty(3, 2, 1, 16)
    before = grad.clone()
    # A grad_add not in kernel form: the fast entry point answers None and changes nothing.
    assert _core._ensemble_norm_backward_fast(
        dl(grad), dl(y), *[dl(p) for p in params], dl(stats), True, dl(gy), dl(grads), 1,
        dl(residual.double())) is None
    assert torch.equal(grad, before)
    expect = backward_kernel(grad + residual, y, *params, stats, True, True)
    flat = [p.reshape(2, 16) for p in params]  # (E, W) parameters: the NumPy path
    got = backward_kernel(grad, y, *flat, stats, True, True, grad_add=residual)
    assert torch.equal(grad, before + residual)
    assert torch.equal(got[0], expect[0]) and torch.equal(got[1], expect[1])
