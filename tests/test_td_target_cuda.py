"""CUDA kernels of the fused TD target and loss equal the PyTorch reference (skips without a GPU).

The C51 target kernel has three projections (csrc/kernels/td_target_cuda.cu): the shift path,
taken by rows with g = discount * mask > 0 whose unclipped atoms fit one integer offset (always for
discount 0.99, mask 1 and K <= 101, since (1 - 0.99)(K - 1) <= 1), the terminal path (g = 0: mask
0 or discount 0), and the segmented-scan path (discounts far from 1). The kernels' row test is
`mtrl.ops.shift_plan.shift_rows`, so the tests can check that the paths are exercised. Member
softmax runs with the row in registers for K <= 256 and through shared memory above (K = 513).
A row is owned by a warp for small batches (up to 24 rows per multiprocessor) and K > 256, else by
8 lanes (K <= 128) or 16 (K <= 256); the other tests run that default choice, and
test_cuda_every_row_layout_matches_float64 forces each layout on every path.
"""

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
from mtrl.ops import _kernels
from mtrl.ops.shift_plan import shift_rows

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


def assert_matches_float64(logits, reward, mask, discount, entropy, combine="mean", v_min=-10.0,
                           v_max=10.0):
    target, value = categorical_td_target(logits, reward, mask, discount, entropy, v_min, v_max,
                                          combine)
    as64 = [t.double() if isinstance(t, torch.Tensor) else t
            for t in (logits, reward, mask, discount, entropy)]
    ref_t, ref_v = categorical_td_target_reference(*as64, v_min=v_min, v_max=v_max, combine=combine)
    torch.testing.assert_close(target.double(), ref_t, atol=3e-5, rtol=0)
    torch.testing.assert_close(value.double(), ref_v, atol=1e-4, rtol=1e-5)
    assert (target.double().sum(-1) - 1).abs().max() <= 1e-6
    return target, value


@pytest.mark.parametrize("e,b,k", [(1, 1, 51), (2, 4097, 101), (5, 33, 201), (2, 16384, 51),
                                   (2, 300, 513)])
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
    # K = 513: a float32 bin position near 256 carries ulp(256) = 3e-5 of rounding, in the
    # reference and in the kernel's scan path alike (a mask-0 row puts all its mass there).
    torch.testing.assert_close(target, ref_t, atol=3e-5 if k <= 201 else 1e-4, rtol=0)
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


def assert_graph_replay_equals_eager(step, static, fresh):
    """Captures step() in a CUDA graph (after a warm-up on a side stream), copies ``fresh`` into
    the ``static`` input tensors, replays, and checks each output equals an eager step() on the new
    inputs bit for bit."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for dst, src in zip(static, fresh, strict=True):
        dst.copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    expect = step()
    for x, y in zip(outs, expect, strict=True):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_cuda_graph_capture_and_replay():
    logits, reward, mask, discount, entropy = make_inputs(2, 1024, 101, seed=13)
    online = torch.randn(2, 1024, 101, device="cuda")
    static = [logits, reward, mask, discount, entropy, online]

    def step():
        target, value = categorical_td_target(*static[:5])
        loss, td = categorical_cross_entropy(static[5], target, return_td_error=True)
        return target, value, loss, td

    fresh = make_inputs(2, 1024, 101, seed=14) + [torch.randn(2, 1024, 101, device="cuda")]
    assert_graph_replay_equals_eager(step, static, fresh)


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


@pytest.mark.parametrize("e,k", [(1, 2), (2, 11), (1, 51), (2, 101), (5, 101), (2, 201),
                                 (2, 513)])
@pytest.mark.parametrize("combine", ["mean", "min"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_shift_path_matches_float64_reference(e, k, combine, dtype):
    """BRC's discount 0.99 with mask 1: rewards far outside the support clip at both ends."""
    logits, reward, _, _, entropy = make_inputs(e, 2048, k, seed=k + e, dtype=dtype)
    mask = torch.ones_like(reward)
    rows = shift_rows(reward, mask, 0.99, entropy, k)
    assert rows.float().mean() > (0.99 if k <= 101 else 0.3)
    c = (reward.double() + 0.99 * (-10 - entropy.double()) + 10) * (k - 1) / 20
    assert (c < 0).any() and (c + 0.99 * (k - 1) > k - 1).any()  # clipped rows at both ends
    assert_matches_float64(logits, reward, mask, 0.99, entropy, combine)


@pytest.mark.parametrize("k", [51, 101, 201])
@pytest.mark.parametrize("discount", [1.0, 0.98])
def test_cuda_shift_path_exact_hits(k, discount):
    """Support +-12.5, so dz = 25 / (K - 1) is exact in binary (0.5, 0.25, 0.125); rewards on
    multiples of dz and no entropy: at discount 1 every shifted atom lands exactly on an atom and
    the clip boundaries fall on atoms (0.98: the same rows, near hits)."""
    gen = torch.Generator().manual_seed(k)
    dz = 25.0 / (k - 1)
    logits = (torch.randn(2, 1024, k, generator=gen) * 3 + 0.1).cuda()
    reward = (torch.randint(-k, k, (1024,), generator=gen).double() * dz).float().cuda()
    mask = torch.ones(1024, device="cuda")
    entropy = torch.zeros(1024, device="cuda")
    rows = shift_rows(reward, mask, discount, entropy, k, -12.5, 12.5)
    assert rows.all() if discount == 1.0 else rows.any()
    assert_matches_float64(logits, reward, mask, discount, entropy, v_min=-12.5, v_max=12.5)


@pytest.mark.parametrize("k", [51, 101, 201])
def test_cuda_terminal_rows_split_the_mass_at_the_clipped_reward(k):
    """g = discount * mask = 0 (mask 0, or discount 0 with mask 1) takes the terminal path: the
    row's total on the two bins around clip(r). Rewards on atoms of a binary-exact support (exact
    hits), between atoms, beyond both ends; large entropies, which g = 0 ignores."""
    gen = torch.Generator().manual_seed(k + 1)
    b, dz = 4096, 25.0 / (k - 1)
    logits = (torch.randn(2, b, k, generator=gen) * 3 + 0.1).cuda()
    on_atoms = torch.randint(-(k // 2), k // 2 + 1, (b,), generator=gen).double() * dz
    between = torch.rand(b, generator=gen).double() * 25 - 12.5
    beyond = torch.sign(torch.randn(b, generator=gen)).double() * 12.5
    beyond = beyond + torch.sign(beyond) * 40 * torch.rand(b, generator=gen)
    pick = torch.randint(0, 3, (b,), generator=gen)
    reward = torch.where(pick == 0, on_atoms, torch.where(pick == 1, between, beyond))
    reward = reward.float().cuda()
    entropy = (torch.randn(b, generator=gen) * 50).cuda()
    zeros, ones = torch.zeros(b, device="cuda"), torch.ones(b, device="cuda")
    for mask, discount in ((zeros, 0.99), (ones, 0.0)):
        assert not shift_rows(reward, mask, discount, entropy, k, -12.5, 12.5).any()
        target, _ = assert_matches_float64(logits, reward, mask, discount, entropy, v_min=-12.5,
                                           v_max=12.5)
        assert ((target > 0).sum(-1) <= 2).all()  # at most the two bins around clip(r)


def test_cuda_shift_and_scan_paths_in_one_launch():
    """Per-sample discounts from 0.5 to 1.03 and masks 0/1: rows of both paths side by side,
    including discounts at the edge of the shift condition ((1 - g)(K - 1) near 1 and 2)."""
    k = 101
    logits, reward, mask, _, entropy = make_inputs(2, 8192, k, seed=23)
    gen = torch.Generator().manual_seed(24)
    edges = torch.tensor([0.99, 0.98, 1.0, 1.01, 1.02, 0.9899999, 0.9800001, 0.5, 0.9])
    pick = torch.randint(0, len(edges), (8192,), generator=gen)
    discount = (edges[pick] + 1e-5 * torch.randn(8192, generator=gen)).cuda()
    rows = shift_rows(reward, mask, discount, entropy, k)
    assert 0.2 < rows.float().mean() < 0.9  # both paths
    for combine in ("mean", "min"):
        assert_matches_float64(logits, reward, mask, discount, entropy, combine)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_shift_path_graph_capture_and_determinism(dtype):
    """Scalar discount 0.99 (shift rows) with mask-0 rows (scan rows) in a captured graph: replay
    equals an eager call bit for bit, and so do repeated eager calls."""
    logits, reward, mask, _, entropy = make_inputs(2, 4096, 101, seed=29, dtype=dtype)
    static = [logits, reward, mask, entropy]

    def step():
        return categorical_td_target(static[0], static[1], static[2], 0.99, static[3],
                                     check_finite=False)

    first = step()
    for x, y in zip(first, step()):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    fresh = make_inputs(2, 4096, 101, seed=30, dtype=dtype)
    assert_graph_replay_equals_eager(step, static, (fresh[0], fresh[1], fresh[2], fresh[4]))
    assert_matches_float64(static[0], static[1], static[2], 0.99, static[3])


@pytest.mark.parametrize("discount", [0.99, 0.9])
def test_cuda_matches_cpu_kernel_scalar_discount(discount):
    """0.99: both devices take their shift projections (CPU: AVX-512 builds); 0.9: neither."""
    logits, reward, mask, _, entropy = make_inputs(2, 2048, 101, seed=31)
    gpu = categorical_td_target(logits, reward, mask, discount, entropy)
    cpu = categorical_td_target(*(t.cpu() for t in (logits, reward, mask)), discount, entropy.cpu())
    for x, y in zip(gpu, cpu):
        torch.testing.assert_close(x.cpu(), y, atol=3e-5, rtol=1e-5)


def test_cuda_nonfinite_count_only_when_read():
    """The non-finite counter is zeroed and read per call with check_finite=True, and not passed
    at all with check_finite=False (no memset node): a clean call after a bad one is clean, a bad
    call unchecked gives NaN rows and no error."""
    logits, reward, mask, discount, entropy = make_inputs(2, 64, 101, seed=37)
    bad = logits.clone()
    bad[1, 5, 7] = float("inf")
    for _ in range(2):
        with pytest.raises(ValueError, match="1 of 64 samples have non-finite values"):
            categorical_td_target(bad, reward, mask, 0.99, entropy)
        target, value = categorical_td_target(logits, reward, mask, 0.99, entropy)
        assert torch.isfinite(target).all() and torch.isfinite(value).all()
        target, value = categorical_td_target(bad, reward, mask, 0.99, entropy, check_finite=False)
        assert torch.isnan(target[5]).all() and torch.isnan(value[5])
        assert torch.isfinite(target[torch.arange(64, device="cuda") != 5]).all()


@pytest.mark.parametrize("k", [2, 11, 51, 101, 128, 129, 201, 256, 513])
@pytest.mark.parametrize("projection", ["c51", "hl_gauss"])
def test_cuda_every_row_layout_matches_float64(k, projection, monkeypatch):
    """One thread, two, 8, 16 and 32 lanes per row (a forced layout too small for the row leaves
    the choice to the launcher) give the reference's target on every path in one launch: per-sample
    discounts put rows on the shift (0.99, 1.0), scan (0.9, 0.5, 1.7), terminal (0, or mask 0)
    and serial (-0.5) projections, side by side in the same warps; B = 1001 leaves a partial last
    block."""
    b = 1001
    gen = torch.Generator().manual_seed(k + 41)
    logits, reward, mask, _, entropy = make_inputs(2, b, k, seed=k + 40)
    choices = torch.tensor([0.99, 1.0, 0.9, 0.5, 1.7, 0.0, -0.5])
    discount = choices[torch.randint(0, len(choices), (b,), generator=gen)].cuda()
    results = []
    for lanes in (8, 16, 32, 1, 2):
        monkeypatch.setattr(_kernels, "CUDA_TARGET_ROW_LANES", lanes)
        for combine in ("mean", "min"):
            target, value = categorical_td_target(logits, reward, mask, discount, entropy,
                                                  combine=combine, projection=projection)
            as64 = [t.double() for t in (logits, reward, mask, discount, entropy)]
            ref_t, ref_v = categorical_td_target_reference(*as64, v_min=-10.0, v_max=10.0,
                                                           combine=combine, projection=projection)
            torch.testing.assert_close(target.double(), ref_t, atol=3e-5 if k <= 256 else 1e-4,
                                       rtol=0)
            torch.testing.assert_close(value.double(), ref_v, atol=1e-4, rtol=1e-5)
            # The serial scatter of g < 0 rows adds K float32 terms one by one in atom order:
            # at K = 256 its rounding reaches 1e-6 (the CPU kernel's too); 1e-6 on all others.
            row_tol = torch.where(discount < 0, 2e-6, 1e-6).double()
            assert ((target.double().sum(-1) - 1).abs() <= row_tol).all()
            results.append((target, value))
    # The lane-group layouts differ only in the order of their float sums (results: mean, min per
    # layout); HL-Gauss's erf edges turn the expected value's rounding into up to 7e-6 (H200). A
    # thread or two per row (the last four) project by the float32 scatter instead of the shift
    # algebra, and their expected value is sum_j p_j z'_j: up to 8e-6 (target) and 1.2e-5 (value)
    # from the groups at K = 101 in the CPU emulation, each within the float64 checks above.
    atol = 2e-6 if projection == "c51" else 2e-5
    for i, (target, value) in enumerate(results[2:], start=2):
        row_thread = i >= len(results) - 4
        torch.testing.assert_close(target, results[i % 2][0], atol=2e-5 if row_thread else atol,
                                   rtol=0)
        torch.testing.assert_close(value, results[i % 2][1], atol=3e-5 if row_thread else 1e-5,
                                   rtol=1e-6)


@pytest.mark.parametrize("e", [1, 5])
@pytest.mark.parametrize("k", [101, 201])
def test_cuda_row_layouts_with_one_and_five_members(e, k, monkeypatch):
    """The member loop of every layout with E = 1 (nothing to prefetch) and E = 5, on BRC's inputs
    (discount 0.99, 70% mask 1: shift and terminal rows side by side)."""
    logits, reward, mask, _, entropy = make_inputs(e, 1001, k, seed=k + e)
    for lanes in (1, 2, 8, 16, 32):
        monkeypatch.setattr(_kernels, "CUDA_TARGET_ROW_LANES", lanes)
        for combine in ("mean", "min"):
            assert_matches_float64(logits, reward, mask, 0.99, entropy, combine)
