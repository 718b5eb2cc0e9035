"""CUDA kernels of the fused TD target and loss equal the PyTorch reference (skips without a GPU)."""

from __future__ import annotations

import pytest
import torch

import mtrl
from mtrl.ops import (
    categorical_cross_entropy,
    categorical_cross_entropy_reference,
    categorical_td_target,
    categorical_td_target_reference,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and mtrl.cuda_available()),
                       reason="needs a CUDA device and mtrl built with CUDA"),
]


def make_inputs(e, b, k, seed=0, dtype=torch.float32):
    """Random inputs on the GPU, never zeros; rewards inside and far outside [-10, 10]."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(e, b, k, generator=gen) * 3 + 0.1).to(dtype)
    reward = torch.randn(b, generator=gen) * 15 + 0.05
    mask = (torch.rand(b, generator=gen) > 0.3).float()
    entropy = torch.randn(b, generator=gen) * 0.5 + 0.01
    discount = 0.9 + 0.09 * torch.rand(b, generator=gen)
    return [t.cuda() for t in (logits, reward, mask, discount, entropy)]


@pytest.mark.parametrize("e,b,k", [(1, 1, 51), (2, 4097, 101), (5, 33, 201), (2, 16384, 51)])
@pytest.mark.parametrize("combine", ["mean", "min"])
@pytest.mark.parametrize("projection", ["c51", "hl_gauss"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_target_matches_reference(e, b, k, combine, projection, dtype):
    logits, reward, mask, discount, entropy = make_inputs(e, b, k, seed=b + k, dtype=dtype)
    target, value = categorical_td_target(logits, reward, mask, discount, entropy, -10, 10, combine,
                                          projection=projection)
    # bf16 logits are upcast exactly, so the float32 reference on the same values is the truth.
    ref_t, ref_v = categorical_td_target_reference(
        logits.float(), reward, mask, discount, entropy, v_min=-10, v_max=10, combine=combine,
        projection=projection)
    assert target.dtype == torch.float32 and target.device == logits.device
    torch.testing.assert_close(target, ref_t, atol=3e-5, rtol=0)
    torch.testing.assert_close(value, ref_v, atol=1e-4, rtol=1e-5)
    assert (target.sum(-1) - 1).abs().max() <= 1e-6


def test_cuda_matches_cpu_kernel():
    logits, reward, mask, discount, entropy = make_inputs(2, 1024, 101, seed=5)
    gpu = categorical_td_target(logits, reward, mask, discount, entropy)
    cpu = categorical_td_target(*(t.cpu() for t in (logits, reward, mask, discount, entropy)))
    for x, y in zip(gpu, cpu):
        torch.testing.assert_close(x.cpu(), y, atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", [False, True])
def test_cuda_cross_entropy_matches_reference(dtype, weighted):
    logits, reward, mask, discount, entropy = make_inputs(2, 4097, 101, seed=9)
    target, _ = categorical_td_target(logits, reward, mask, discount, entropy)
    online = (torch.randn(2, 4097, 101, device="cuda") * 2).to(dtype).requires_grad_()
    weight = torch.rand(4097, device="cuda") + 0.1 if weighted else None
    loss, td = categorical_cross_entropy(online, target, weight, return_td_error=True)
    (loss * 1.3).backward()
    grad, online.grad = online.grad, None
    ref_online = online.detach().float().requires_grad_()
    ref_loss, ref_td = categorical_cross_entropy_reference(ref_online, target, weight,
                                                           return_td_error=True)
    (ref_loss * 1.3).backward()
    assert grad.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(td, ref_td, atol=2e-4, rtol=1e-5)
    tol = dict(atol=1e-7, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-6, rtol=1e-2)
    torch.testing.assert_close(grad.float(), ref_online.grad, **tol)


def test_cuda_graph_capture_and_replay():
    logits, reward, mask, discount, entropy = make_inputs(2, 1024, 101, seed=13)
    online = torch.randn(2, 1024, 101, device="cuda")
    static = [logits, reward, mask, discount, entropy, online]

    def step():
        target, value = categorical_td_target(*static[:5])
        loss, td = categorical_cross_entropy(static[5], target, return_td_error=True)
        return target, value, loss, td

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    fresh = make_inputs(2, 1024, 101, seed=14) + [torch.randn(2, 1024, 101, device="cuda")]
    for dst, src in zip(static, fresh):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    expect = step()
    for x, y in zip(outs, expect):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_cuda_torch_compile():
    logits, reward, mask, discount, entropy = make_inputs(2, 512, 101, seed=17)
    online = torch.randn(2, 512, 101, device="cuda", requires_grad=True)

    def step(online):
        target, _ = categorical_td_target(logits, reward, mask, discount, entropy)
        return categorical_cross_entropy(online, target)

    grads = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        fn(online).backward()
        grads.append(online.grad)
        online.grad = None
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)


def test_cuda_non_finite_and_device_errors():
    logits, reward, mask, discount, entropy = make_inputs(2, 8, 11, seed=19)
    bad = logits.clone()
    bad[0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite values .* in target_logits"):
        categorical_td_target(bad, reward, mask, discount, entropy)
    target, _ = categorical_td_target(bad, reward, mask, discount, entropy, check_finite=False)
    assert torch.isnan(target[2]).all()
    with pytest.raises(ValueError, match="reward is on cpu"):
        categorical_td_target(logits, reward.cpu(), mask)
    with pytest.raises(TypeError, match="float32 or torch.bfloat16"):
        categorical_td_target(logits.double(), reward, mask)
