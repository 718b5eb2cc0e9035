"""The fused TD-target and loss ops equal the PyTorch reference and a float64 NumPy derivation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import erf as np_erf

from mtrl import _core
from mtrl.ops import (
    categorical_cross_entropy,
    categorical_cross_entropy_reference,
    categorical_td_target,
    categorical_td_target_reference,
    hl_gauss_target,
    hl_gauss_target_reference,
)


# --------------------------------------------------------------------------- NumPy derivation
def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_td_target(logits, reward, mask, discount, entropy, v_min, v_max, combine="mean",
                 projection="c51", sigma=None):
    """Independent float64 derivation. C51 via the hat-function form of the projection:
    y_i = sum_j p_j max(0, 1 - |b_j - i|), equal to the floor/ceil split of spec §3.2."""
    logits = np.asarray(logits, np.float64)
    _, batch, k = logits.shape
    atoms = v_min + np.arange(k) * (v_max - v_min) / (k - 1)
    probs = np_softmax(logits)
    if combine == "mean":
        p = probs.mean(0)
    else:
        p = probs[(probs * atoms).sum(-1).argmin(0), np.arange(batch)]
    g = np.broadcast_to(np.asarray(discount, np.float64), (batch,)) * np.asarray(mask, np.float64)
    ent = np.zeros(batch) if entropy is None else np.asarray(entropy, np.float64)
    r = np.asarray(reward, np.float64)
    dz = (v_max - v_min) / (k - 1)
    if projection == "c51":
        z = np.clip(r[:, None] + g[:, None] * (atoms[None] - ent[:, None]), v_min, v_max)
        b = (z - v_min) / dz
        y = np.empty((batch, k))
        for s in range(0, batch, 128):  # chunks keep the (rows, K, K) hat tensor small
            hat = np.maximum(0.0, 1.0 - np.abs(b[s:s + 128, :, None] - np.arange(k)[None, None]))
            y[s:s + 128] = (p[s:s + 128, :, None] * hat).sum(1)
    else:
        sigma = 0.75 * dz if sigma is None else sigma
        t = np.clip(r + g * ((p * atoms).sum(-1) - ent), v_min, v_max)
        edges = v_min - dz / 2 + dz * np.arange(k + 1)
        cdf = np_erf((edges[None] - t[:, None]) / (math.sqrt(2) * sigma))
        y = (cdf[:, 1:] - cdf[:, :-1]) / (cdf[:, -1:] - cdf[:, :1])
    return y, (y * atoms).sum(-1)


def np_cross_entropy(logits, target, weight=None):
    logits = np.asarray(logits, np.float64)
    target = np.asarray(target, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -(target[None] * logp).sum(-1)  # (E, B)
    w = np.ones(ce.shape[1]) if weight is None else np.asarray(weight, np.float64)
    loss = (ce * w).mean(-1).sum()
    grad = (np.exp(logp) * target.sum(-1)[None, :, None] - target[None]) * (w / ce.shape[1])[None, :, None]
    return loss, ce.sum(0), grad


def make_inputs(e, b, k, seed=0, dtype=torch.float32, spread=15.0):
    """Random inputs, never zeros: rewards inside and far outside the [-10, 10] support."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(e, b, k, generator=gen) * 3 + 0.1).to(dtype)
    reward = (torch.randn(b, generator=gen) * spread + 0.05).to(dtype)
    mask = (torch.rand(b, generator=gen) > 0.3).to(dtype)
    entropy = (torch.randn(b, generator=gen) * 0.5 + 0.01).to(dtype)
    discount = (0.9 + 0.09 * torch.rand(b, generator=gen)).to(dtype)
    return logits, reward, mask, discount, entropy


SIZES = [(1, 1, 51), (2, 4097, 101), (5, 33, 201), (2, 1, 101), (5, 4097, 51), (1, 1, 201),
         (2, 7, 51)]


# --------------------------------------------------------------------------- target parity
@pytest.mark.parametrize("e,b,k", SIZES)
@pytest.mark.parametrize("combine", ["mean", "min"])
def test_c51_target_matches_reference_and_numpy(e, b, k, combine):
    logits, reward, mask, discount, entropy = make_inputs(e, b, k, seed=e * 1000 + b + k)
    target, value = categorical_td_target(logits, reward, mask, discount, entropy, -10, 10, combine)
    ref_t, ref_v = categorical_td_target_reference(
        logits, reward, mask, discount, entropy, v_min=-10, v_max=10, combine=combine)
    np_t, np_v = np_td_target(logits, reward, mask, discount, entropy, -10, 10, combine)
    assert target.dtype == torch.float32 and target.shape == (b, k) and value.shape == (b,)
    torch.testing.assert_close(target, ref_t, atol=3e-5, rtol=0)
    torch.testing.assert_close(value, ref_v, atol=5e-5, rtol=1e-5)
    np.testing.assert_allclose(target.numpy(), np_t, atol=3e-5, rtol=0)
    np.testing.assert_allclose(value.numpy(), np_v, atol=5e-5, rtol=1e-5)
    assert (target >= 0).all()
    assert (target.sum(-1) - 1).abs().max() <= 1e-6


@pytest.mark.parametrize("e,b,k", [(1, 4097, 51), (5, 33, 201), (2, 1, 101)])
@pytest.mark.parametrize("combine", ["mean", "min"])
def test_hl_gauss_target_matches_reference_and_numpy(e, b, k, combine):
    logits, reward, mask, discount, entropy = make_inputs(e, b, k, seed=7 + b)
    kwargs = dict(projection="hl_gauss")
    target, value = categorical_td_target(logits, reward, mask, 0.99, entropy, -10, 10, combine,
                                          **kwargs)
    ref_t, ref_v = categorical_td_target_reference(
        logits, reward, mask, 0.99, entropy, v_min=-10, v_max=10, combine=combine, **kwargs)
    np_t, np_v = np_td_target(logits, reward, mask, 0.99, entropy, -10, 10, combine, "hl_gauss")
    # float32 rounding of the scalar target (~1e-6 at |t| ~ 10) moves erf differences by ~3e-6
    torch.testing.assert_close(target, ref_t, atol=1e-5, rtol=0)
    np.testing.assert_allclose(target.numpy(), np_t, atol=1e-5, rtol=0)
    np.testing.assert_allclose(value.numpy(), np_v, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(value, ref_v, atol=2e-5, rtol=1e-5)
    assert (target.sum(-1) - 1).abs().max() <= 1e-6


def test_float64_target_matches_numpy_tightly():
    logits, reward, mask, discount, entropy = make_inputs(2, 300, 101, seed=3, dtype=torch.float64)
    for projection in ("c51", "hl_gauss"):
        target, value = categorical_td_target(logits, reward, mask, discount, entropy,
                                              projection=projection)
        np_t, np_v = np_td_target(logits, reward, mask, discount, entropy, -10, 10,
                                  projection=projection)
        assert target.dtype == torch.float64
        np.testing.assert_allclose(target.numpy(), np_t, atol=1e-12, rtol=0)
        np.testing.assert_allclose(value.numpy(), np_v, atol=1e-11, rtol=0)


@pytest.mark.parametrize("discount", [0.99, 0.5, 1.3, -0.9])
def test_baseline_avx2_and_avx512_builds_agree(discount):
    # max_isa 2 (AVX-512) projects by a gather for gamma * mask > 0 with short windows, the others
    # (and every build for other discounts) by the scatter; all match the NumPy derivation.
    logits, reward, mask, _, entropy = make_inputs(2, 513, 101, seed=11)
    outs = []
    for max_isa in (2, 1, 0):
        target, value = torch.empty(513, 101), torch.empty(513)
        bad = _core._td_target_cpu(logits.numpy(), reward.numpy(), mask.numpy(), None, discount,
                                   entropy.numpy(), target.numpy(), value.numpy(), -10.0, 10.0,
                                   0, 0, 0.0, 2, max_isa)
        assert bad == 0
        outs.append(target)
    np_t, _ = np_td_target(logits, reward, mask, discount, entropy, -10, 10)
    for target in outs:
        np.testing.assert_allclose(target.numpy(), np_t, atol=3e-5, rtol=0)
        torch.testing.assert_close(target.sum(-1), torch.ones(513), atol=1e-6, rtol=0)


def test_exact_hits_put_all_mass_on_the_hit_atom():
    # dz = 1 and integer shifts: every shifted atom lands exactly on an atom (l == u).
    logits, _, _, _, _ = make_inputs(1, 64, 51, seed=5)
    reward = torch.randint(-3, 4, (64,)).float()
    ones = torch.ones(64)
    target, _ = categorical_td_target(logits, reward, ones, 1.0, None, -25, 25)
    p = torch.softmax(logits[0], -1)
    for i in range(64):
        shift = int(reward[i])
        expect = torch.zeros(51)
        for j in range(51):
            expect[min(max(j + shift, 0), 50)] += p[i, j]
        torch.testing.assert_close(target[i], expect, atol=1e-6, rtol=0)
    ref_t, _ = categorical_td_target_reference(logits, reward, ones, 1.0, v_min=-25, v_max=25)
    torch.testing.assert_close(target, ref_t, atol=1e-6, rtol=0)


@pytest.mark.parametrize("e,k", [(1, 51), (2, 101), (5, 101), (2, 201), (2, 16), (2, 17), (2, 8),
                                 (2, 9), (1, 24)])
@pytest.mark.parametrize("combine", [0, 1])
def test_discounts_near_one_match_numpy_in_every_build(e, k, combine):
    # gamma * mask within ~2 / (K - 1) of 1 takes the AVX-512 and AVX2 builds' shifted-row
    # projection (ProjectC51Shift), others the AVX-512 gather or the scatter (always the scatter
    # in the baseline build): rows that clip at v_min, at v_max, at both or not at all, exact unit
    # discounts, discounts just above 1, masks 0 and 1.
    b = 600
    gen = torch.Generator().manual_seed(83 + k + e)
    logits = torch.randn(e, b, k, generator=gen) * 2.5
    choices = torch.tensor([1.0, 0.99, 0.995, 0.985, 1.004, 1.0 - 1.9 / (k - 1), 0.97, 0.9, 1.02])
    discount = choices[torch.randint(0, len(choices), (b,), generator=gen)]
    mask = (torch.rand(b, generator=gen) > 0.1).float()
    scale = torch.tensor([0.0, 0.3, 3.0, 12.0])[torch.randint(0, 4, (b,), generator=gen)]
    reward = torch.randn(b, generator=gen) * scale
    entropy = torch.randn(b, generator=gen) * 0.2
    np_t, np_v = np_td_target(logits, reward, mask, discount, entropy, -10, 10,
                              combine="mean" if combine == 0 else "min")
    outs = []
    for max_isa in (2, 1, 0):
        target, value = torch.empty(b, k), torch.empty(b)
        assert _core._td_target_cpu(logits.numpy(), reward.numpy(), mask.numpy(), discount.numpy(),
                                    0.0, entropy.numpy(), target.numpy(), value.numpy(), -10.0,
                                    10.0, combine, 0, 0.0, 2, max_isa) == 0
        np.testing.assert_allclose(target.numpy(), np_t, atol=3e-5, rtol=0)
        np.testing.assert_allclose(value.numpy(), np_v, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(target.sum(-1), torch.ones(b), atol=2e-6, rtol=0)
        assert (target >= 0).all()
        outs.append(target)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
    # The shifted rows against the scatter: each within ~1e-5 of float64 at K = 201 (float32 atom
    # positions), on opposite sides in a few bins.
    torch.testing.assert_close(outs[1], outs[2], atol=2e-5, rtol=0)


@pytest.mark.parametrize("k", [257, 4096])
def test_shifted_projection_of_long_rows_matches_the_scatter(k):
    # Rewards far beyond both ends (shifts of about +-K bins) and unit or near-unit discounts:
    # the AVX-512 and AVX2 shifted-row projections against the baseline build's scatter.
    b = 64
    gen = torch.Generator().manual_seed(k)
    logits = torch.randn(2, b, k, generator=gen)
    reward = torch.linspace(-25.0, 25.0, b)
    discount = torch.ones(b)
    discount[::3] = 1.0 - 1.5 / (k - 1)
    outs = []
    for max_isa in (2, 1, 0):
        target, value = torch.empty(b, k), torch.empty(b)
        assert _core._td_target_cpu(logits.numpy(), reward.numpy(), torch.ones(b).numpy(),
                                    discount.numpy(), 0.0, None, target.numpy(), value.numpy(),
                                    -10.0, 10.0, 0, 0, 0.0, 1, max_isa) == 0
        outs.append((target, value))
    for target, value in outs[:2]:
        torch.testing.assert_close(target, outs[2][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(value, outs[2][1], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(target.sum(-1), torch.ones(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("e", [1, 2])
def test_exact_hits_with_two_members_and_101_atoms(e):
    # dz = 0.2, gamma = 1, rewards on the grid: every unclipped atom lands on an atom up to the
    # float rounding of 0.2 steps (a few 1e-6 of leak into the neighbour in every build).
    logits, _, _, _, _ = make_inputs(e, 64, 101, seed=79)
    gen = torch.Generator().manual_seed(81)
    reward = torch.randint(-60, 61, (64,), generator=gen).float() * 0.2
    target, value = categorical_td_target(logits, reward, torch.ones(64), 1.0, None)
    p = torch.softmax(logits.double(), -1).mean(0)
    shift = torch.round(reward.double() / 0.2).long()
    expect = torch.zeros(64, 101, dtype=torch.float64)
    for i in range(64):
        for j in range(101):
            expect[i, min(max(j + int(shift[i]), 0), 100)] += p[i, j]
    torch.testing.assert_close(target.double(), expect, atol=5e-6, rtol=0)
    atoms = torch.linspace(-10, 10, 101, dtype=torch.float64)
    torch.testing.assert_close(value.double(), (expect * atoms).sum(-1), atol=2e-5, rtol=0)


def test_mask_zero_puts_all_mass_at_the_clipped_reward():
    logits, _, _, _, entropy = make_inputs(2, 4, 101, seed=9)
    reward = torch.tensor([1.1, -30.0, 25.0, -9.9])
    target, value = categorical_td_target(logits, reward, torch.zeros(4), 0.99, entropy)
    expect = torch.zeros(4, 101)
    expect[0, 55], expect[0, 56] = 0.5, 0.5  # 1.1 sits halfway between atoms 1.0 and 1.2
    expect[1, 0] = 1.0  # clipped to v_min
    expect[2, 100] = 1.0  # clipped to v_max
    expect[3, 0], expect[3, 1] = 0.5, 0.5
    torch.testing.assert_close(target, expect, atol=2e-6, rtol=0)
    torch.testing.assert_close(value, torch.tensor([1.1, -10.0, 10.0, -9.9]), atol=1e-5, rtol=0)


def test_negative_discount_uses_the_general_scatter():
    logits, reward, mask, _, entropy = make_inputs(2, 50, 51, seed=13, spread=3.0)
    discount = -0.7 * torch.ones(50)
    target, _ = categorical_td_target(logits, reward, torch.ones(50), discount, entropy, -5, 5)
    np_t, _ = np_td_target(logits, reward, torch.ones(50), discount, entropy, -5, 5)
    np.testing.assert_allclose(target.numpy(), np_t, atol=3e-5, rtol=0)


def test_scalar_and_tensor_discount_agree():
    logits, reward, mask, _, entropy = make_inputs(2, 100, 101, seed=17)
    a, _ = categorical_td_target(logits, reward, mask, 0.97, entropy)
    b, _ = categorical_td_target(logits, reward, mask, torch.full((100,), 0.97), entropy)
    c, _ = categorical_td_target(logits, reward, mask, torch.tensor(0.97), entropy)
    d, _ = categorical_td_target(logits, reward, mask, np.float32(0.97), entropy)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, c, atol=0, rtol=0)
    torch.testing.assert_close(a, d, atol=0, rtol=0)


def test_non_contiguous_inputs_are_made_contiguous():
    logits, reward, mask, discount, entropy = make_inputs(2, 200, 101, seed=19)
    strided_logits = logits.transpose(0, 1).contiguous().transpose(0, 1)  # (E, B, K) view
    wide = torch.stack([reward, -reward], 1)
    assert not strided_logits.is_contiguous() and not wide[:, 0].is_contiguous()
    a, av = categorical_td_target(strided_logits, wide[:, 0], mask.bool(), discount, entropy)
    b, bv = categorical_td_target(logits, reward, mask, discount, entropy)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    online = torch.randn(101, 200, 2).permute(2, 1, 0)
    la, ta = categorical_cross_entropy(online, a.t().contiguous().t(), return_td_error=True)
    lb, tb = categorical_cross_entropy(online.contiguous(), a, return_td_error=True)
    torch.testing.assert_close(la, lb, atol=0, rtol=0)
    torch.testing.assert_close(ta, tb, atol=0, rtol=0)


def test_negative_bit_views_keep_their_sign():
    # A negative-bit view (torch._neg_view, complex .conj().imag) stores -x as x plus a flag that
    # DLPack drops: the fast path read these values with the wrong sign, the general path raised
    # torch's numpy() error. Both now see the values the tensor holds.
    logits, reward, mask, discount, entropy = make_inputs(2, 64, 51, seed=29)
    neg = torch._neg_view
    assert neg(-reward).is_neg()
    a, av = categorical_td_target(neg(-logits), neg(-reward), neg(-mask), neg(-discount),
                                  neg(-entropy))
    b, bv = categorical_td_target(logits, reward, mask, discount, entropy)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(av, bv, atol=0, rtol=0)
    online = torch.randn(2, 64, 51)
    weight = torch.rand(64)
    la, ta = categorical_cross_entropy(neg(-online), neg(-b), neg(-weight), return_td_error=True)
    lb, tb = categorical_cross_entropy(online, b, weight, return_td_error=True)
    torch.testing.assert_close(la, lb, atol=0, rtol=0)
    torch.testing.assert_close(ta, tb, atol=0, rtol=0)


def test_results_do_not_depend_on_the_thread_count():
    logits, reward, mask, discount, entropy = make_inputs(2, 3000, 101, seed=23)
    online = torch.randn(2, 3000, 101, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            target, value = categorical_td_target(logits, reward, mask, discount, entropy)
            loss, td = categorical_cross_entropy(online, target, return_td_error=True)
            loss.backward()
            results.append((target, value, loss.detach(), td, online.grad))
            online.grad = None
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)


# --------------------------------------------------------------------------- loss
@pytest.mark.parametrize("e,b,k", [(1, 1, 51), (2, 4097, 101), (5, 33, 201)])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_reference_and_numpy(e, b, k, weighted):
    logits, reward, mask, discount, entropy = make_inputs(e, b, k, seed=29 + b)
    target, _ = categorical_td_target(logits, reward, mask, discount, entropy)
    online = (torch.randn(e, b, k) * 2 + 0.3).requires_grad_()
    weight = torch.rand(b) + 0.1 if weighted else None
    loss, td = categorical_cross_entropy(online, target, weight, return_td_error=True)
    (loss * 1.7).backward()
    grad, online.grad = online.grad, None
    ref_loss, ref_td = categorical_cross_entropy_reference(online, target, weight,
                                                           return_td_error=True)
    (ref_loss * 1.7).backward()
    np_loss, np_td, np_grad = np_cross_entropy(online.detach(), target, weight)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(td, ref_td, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grad, online.grad, atol=1e-7, rtol=1e-4)
    np.testing.assert_allclose(loss.item(), np_loss, rtol=1e-5)
    np.testing.assert_allclose(td.numpy(), np_td, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), 1.7 * np_grad, atol=1e-7, rtol=1e-4)
    assert loss.requires_grad and not td.requires_grad


def test_cross_entropy_gradcheck_float64():
    gen = torch.Generator().manual_seed(31)
    online = torch.randn(2, 3, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.softmax(torch.randn(3, 7, dtype=torch.float64, generator=gen), -1)
    weight = torch.rand(3, dtype=torch.float64, generator=gen) + 0.5
    assert torch.autograd.gradcheck(lambda x: categorical_cross_entropy(x, target, weight),
                                    (online,))
    assert torch.autograd.gradcheck(
        lambda x: categorical_cross_entropy_reference(x, target, weight), (online,))
    # Fused and reference gradients agree to float64 precision, also for unnormalised targets.
    for tgt in (target, target * 1.3):
        (g_fused,) = torch.autograd.grad(categorical_cross_entropy(online, tgt, weight), online)
        (g_ref,) = torch.autograd.grad(categorical_cross_entropy_reference(online, tgt, weight),
                                       online)
        torch.testing.assert_close(g_fused, g_ref, atol=1e-14, rtol=1e-12)


def test_cross_entropy_without_grad_and_td_error():
    logits, reward, mask, discount, entropy = make_inputs(2, 64, 51, seed=37)
    target, _ = categorical_td_target(logits, reward, mask, discount, entropy)
    online = torch.randn(2, 64, 51, requires_grad=True)
    with torch.no_grad():
        loss = categorical_cross_entropy(online, target)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, categorical_cross_entropy_reference(online, target).detach(),
                               atol=1e-5, rtol=1e-5)


def test_opcheck_custom_ops():
    logits, reward, mask, discount, entropy = make_inputs(2, 5, 11, seed=41)
    op = torch.ops.mtrl.categorical_td_target.default
    torch.library.opcheck(op, (logits, reward, mask, discount, 0.0, entropy, -10.0, 10.0, 0, 0,
                               0.0, True))
    target, _ = op(logits, reward, mask, None, 0.99, None, -10.0, 10.0, 1, 1, 0.15, True)
    online = torch.randn(2, 5, 11, requires_grad=True)
    torch.library.opcheck(torch.ops.mtrl.categorical_cross_entropy.default,
                          (online, target, torch.rand(5), True, True))


def test_torch_compile_matches_eager():
    logits, reward, mask, discount, entropy = make_inputs(2, 256, 101, seed=43)
    online = torch.randn(2, 256, 101, requires_grad=True)

    def step(online, logits, reward, mask, discount, entropy):
        target, value = categorical_td_target(logits, reward, mask, discount, entropy)
        loss, td = categorical_cross_entropy(online, target, return_td_error=True)
        return loss * 2.0, td, value

    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):  # backward is compiled by AOTAutograd
        loss, td, value = fn(online, logits, reward, mask, discount, entropy)
        loss.backward()
        results.append((loss.detach(), td, value, online.grad))
        online.grad = None
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


# --------------------------------------------------------------------------- HL-Gauss
def test_hl_gauss_target_clamps_far_outside_values():
    value = torch.tensor([-1e6, -10.0, 0.3, 9.99, 1e6, float(3.14)])
    hist = hl_gauss_target(value, -10, 10, 101)
    assert torch.isfinite(hist).all()
    torch.testing.assert_close(hist.sum(-1), torch.ones(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(hist, hl_gauss_target_reference(value, -10, 10, 101), atol=0, rtol=0)
    assert hist[0].argmax() == 0 and hist[4].argmax() == 100
    atoms = torch.linspace(-10, 10, 101)
    assert abs(float((hist[2] * atoms).sum()) - 0.3) < 1e-3  # mean kept well inside the support


# --------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    logits, reward, mask, discount, entropy = make_inputs(2, 8, 11, seed=47)
    with pytest.raises(ValueError, match=r"reward must have shape \(8,\)"):
        categorical_td_target(logits, reward[:5], mask)
    with pytest.raises(ValueError, match=r"shape \(E, B, K\)"):
        categorical_td_target(logits[0], reward, mask)
    with pytest.raises(ValueError, match=r"K must be in \[2, 4096\], got 1"):
        categorical_td_target(logits[..., :1], reward, mask)
    with pytest.raises(ValueError, match="v_min < v_max"):
        categorical_td_target(logits, reward, mask, 0.99, None, 5.0, 5.0)
    with pytest.raises(TypeError, match="must be torch.float32 or torch.float64"):
        categorical_td_target(logits.half(), reward, mask)
    with pytest.raises(TypeError, match="must be torch.float32 or torch.float64"):
        categorical_td_target(logits.long(), reward, mask)
    with pytest.raises(ValueError, match="supported devices are cpu and cuda"):
        categorical_td_target(logits.to("meta"), reward, mask)
    with pytest.raises(ValueError, match="entropy is on meta"):
        categorical_td_target(logits, reward, mask, 0.99, entropy.to("meta"))
    with pytest.raises(ValueError, match="combine must be one of"):
        categorical_td_target(logits, reward, mask, combine="max")
    with pytest.raises(ValueError, match="projection must be one of"):
        categorical_td_target(logits, reward, mask, projection="gauss")
    with pytest.raises(ValueError, match=r"sigma must be in \[1e-30, 1e\+30\]"):
        categorical_td_target(logits, reward, mask, projection="hl_gauss", sigma=0.0)
    with pytest.raises(TypeError, match="discount must be a number or a tensor"):
        categorical_td_target(logits, reward, mask, "0.99")
    with pytest.raises(ValueError, match="discount must be finite"):
        categorical_td_target(logits, reward, mask, float("nan"))
    online = torch.randn(2, 8, 11)
    target, _ = categorical_td_target(logits, reward, mask)
    with pytest.raises(ValueError, match=r"target must have shape \(8, 11\)"):
        categorical_cross_entropy(online, target[:, :10])
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        categorical_cross_entropy(online, target, torch.ones(3))
    with pytest.raises(TypeError, match="target must be a floating-point tensor"):
        categorical_cross_entropy(online, target.long())
    with pytest.raises(ValueError, match="target is on meta but the logits are on cpu"):
        categorical_cross_entropy(online.requires_grad_(), target.to("meta"))
    with pytest.raises(ValueError, match="weight is on meta but the logits are on cpu"):
        categorical_cross_entropy(online, target, torch.ones(8, device="meta"))
    with pytest.raises(ValueError, match="shape"):
        hl_gauss_target(torch.zeros(2, 2), -1, 1, 11)


def test_non_finite_inputs_raise_and_name_the_input():
    logits, reward, mask, discount, entropy = make_inputs(2, 8, 11, seed=53)
    bad = logits.clone()
    bad[1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"1 of 8 samples have non-finite .* in target_logits"):
        categorical_td_target(bad, reward, mask, discount, entropy)
    bad_reward = reward.clone()
    bad_reward[0] = float("inf")
    with pytest.raises(ValueError, match="non-finite values .* in reward"):
        categorical_td_target(logits, bad_reward, mask, discount, entropy)
    target, _ = categorical_td_target(bad, reward, mask, discount, entropy, check_finite=False)
    assert torch.isnan(target[3]).all() and torch.isfinite(target[[0, 1, 2, 4, 5, 6, 7]]).all()
    good, _ = categorical_td_target(logits, reward, mask, discount, entropy)
    with pytest.raises(ValueError, match="non-finite values .* in online_logits"):
        categorical_cross_entropy(bad, good)
    with pytest.raises(ValueError, match="non-finite values .* in weight"):
        categorical_cross_entropy(logits, good, torch.full((8,), float("nan")))


def test_binding_checks_buffers():
    logits, reward, mask, _, _ = make_inputs(2, 8, 11, seed=59)
    target, value = torch.empty(8, 11), torch.empty(8)
    with pytest.raises(ValueError, match=r"reward must have shape \(8,\), got \(7,\)"):
        _core._td_target_cpu(logits.numpy(), reward[:7].numpy(), mask.numpy(), None, 0.99, None,
                             target.numpy(), value.numpy(), -10.0, 10.0, 0, 0, 0.0, 1)
    with pytest.raises(ValueError, match="must have dtype float32"):
        _core._td_target_cpu(logits.numpy(), reward.double().numpy(), mask.numpy(), None, 0.99,
                             None, target.numpy(), value.numpy(), -10.0, 10.0, 0, 0, 0.0, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core._td_target_cpu(logits.transpose(1, 2).numpy(), reward.numpy(), mask.numpy(), None,
                             0.99, None, target.numpy(), value.numpy(), -10.0, 10.0, 0, 0, 0.0, 1)
    with pytest.raises(ValueError, match="v_min < v_max"):
        _core._td_target_cpu(logits.numpy(), reward.numpy(), mask.numpy(), None, 0.99, None,
                             target.numpy(), value.numpy(), 1.0, -1.0, 0, 0, 0.0, 1)


def test_cuda_entry_points_fail_cleanly_without_a_device():
    import mtrl

    with pytest.raises(ValueError, match=r"K must be in \[2, 4096\], got 1") if mtrl.cuda_built() \
            else pytest.raises(RuntimeError, match="mtrl was built without CUDA"):
        _core._td_target_cuda(1, 0, 2, 8, 1, 1, 1, 0, 0.99, 0, 1, 1, 1, -10.0, 10.0, 0, 0, 0.0, 0, 0)
    if mtrl.cuda_built():  # checked before any CUDA call, so safe with fake pointers
        message = r"row_lanes must be 0 \(auto\), 1, 2, 8, 16 or 32, got 4"
        with pytest.raises(ValueError, match=message):
            _core._td_target_cuda(1, 0, 2, 8, 11, 1, 1, 0, 0.99, 0, 1, 1, 1, -10.0, 10.0, 0, 0, 0.0,
                                  0, 0, 4)
    if mtrl.cuda_built() and _core.cuda_device_count() > 0:
        pytest.skip("a CUDA device is present: launching with fake pointers would be unsafe")
    # Built without CUDA: the documented RuntimeError. Built with CUDA but no driver/device: the
    # launcher's first runtime call fails with a RuntimeError (nothing is dereferenced).
    match = "built without CUDA" if not mtrl.cuda_built() else "cuda"
    with pytest.raises(RuntimeError, match=f"(?i){match}"):
        _core._td_target_cuda(1, 0, 2, 8, 11, 1, 1, 0, 0.99, 0, 1, 1, 1, -10.0, 10.0, 0, 0, 0.0, 0, 0)
    with pytest.raises(RuntimeError, match=f"(?i){match}"):
        _core._cross_entropy_cuda(1, 1, 2, 8, 11, 1, 0, 1, 0, 1, 1, 0, 0)


def test_eager_path_equals_the_registered_ops():
    logits, reward, mask, discount, entropy = make_inputs(2, 300, 101, seed=61)
    eager = categorical_td_target(logits, reward, mask, discount, entropy, combine="min")
    ops = torch.ops.mtrl.categorical_td_target(logits, reward, mask, discount, 0.0, entropy, -10.0,
                                               10.0, 1, 0, 0.0, True)
    for x, y in zip(eager, ops):
        assert torch.equal(x, y)
    online = torch.randn(2, 300, 101, requires_grad=True)
    weight = torch.rand(300)
    loss, td = categorical_cross_entropy(online, eager[0], weight, return_td_error=True)
    (grad,) = torch.autograd.grad(loss * 0.5, online)
    op_loss, op_td, _ = torch.ops.mtrl.categorical_cross_entropy(online, eager[0], weight, True,
                                                                 True)
    (op_grad,) = torch.autograd.grad(op_loss * 0.5, online)
    assert torch.equal(loss, op_loss) and torch.equal(td, op_td) and torch.equal(grad, op_grad)


@pytest.mark.parametrize("k", [2, 3, 5, 8, 9, 16, 17, 33])
@pytest.mark.parametrize("max_isa", [2, 1, 0])
def test_small_and_odd_atom_counts_in_every_build(k, max_isa):
    # Exercises the vector tails (K below, at and just above the 4/8/16-lane widths).
    logits, reward, mask, discount, entropy = make_inputs(2, 37, k, seed=67 + k, spread=4.0)
    target, value = torch.empty(37, k), torch.empty(37)
    assert _core._td_target_cpu(logits.numpy(), reward.numpy(), mask.numpy(), discount.numpy(),
                                0.0, entropy.numpy(), target.numpy(), value.numpy(), -5.0, 5.0, 0,
                                0, 0.0, 1, max_isa) == 0
    np_t, np_v = np_td_target(logits, reward, mask, discount, entropy, -5, 5)
    np.testing.assert_allclose(target.numpy(), np_t, atol=3e-5, rtol=0)
    np.testing.assert_allclose(value.numpy(), np_v, atol=5e-5, rtol=1e-5)
    online = torch.randn(2, 37, k) * 2
    weight = torch.rand(37) + 0.1
    td, grad, loss = torch.empty(37), torch.empty(2, 37, k), torch.empty(())
    assert _core._cross_entropy_cpu(online.numpy(), target.numpy(), weight.numpy(), td.numpy(),
                                    grad.numpy(), loss.numpy(), 1, max_isa) == 0
    np_loss, np_td, np_grad = np_cross_entropy(online, target, weight)
    np.testing.assert_allclose(loss.item(), np_loss, rtol=1e-5)
    np.testing.assert_allclose(td.numpy(), np_td, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), np_grad, atol=1e-7, rtol=1e-4)


def test_backward_twice_with_retain_graph_and_accumulation():
    logits, reward, mask, discount, entropy = make_inputs(2, 16, 11, seed=71)
    target, _ = categorical_td_target(logits, reward, mask, discount, entropy)
    online = torch.randn(2, 16, 11, requires_grad=True)
    loss = categorical_cross_entropy(online, target)
    loss.backward(retain_graph=True)
    first = online.grad.clone()
    loss.backward(retain_graph=True)  # accumulates: must not alter the saved gradient
    loss.backward()
    torch.testing.assert_close(online.grad, 3 * first, atol=1e-9, rtol=1e-6)
    ref = categorical_cross_entropy_reference(online, target)
    (ref_grad,) = torch.autograd.grad(ref, online)
    torch.testing.assert_close(first, ref_grad, atol=1e-7, rtol=1e-4)
    # the gradient also flows on through other ops (non-leaf logits)
    base = torch.randn(2, 16, 11, requires_grad=True)
    (categorical_cross_entropy(base * 2.0, target) + (base ** 2).sum()).backward()
    (expect,) = torch.autograd.grad(
        categorical_cross_entropy_reference(base * 2.0, target) + (base ** 2).sum(), base)
    torch.testing.assert_close(base.grad, expect, atol=1e-6, rtol=1e-5)


def test_gradients_of_a_retained_graph_are_independent_tensors():
    # Without retain_graph the eager backward hands its saved gradient on without a copy (the graph
    # is freed, so nothing else holds it). With the graph kept, each backward must return a tensor
    # of its own: editing one result in place must change neither the other results nor the next
    # backward (autograd.grad returns the node's output as is, no AccumulateGrad copy between).
    logits, reward, mask, discount, entropy = make_inputs(2, 16, 11, seed=72)
    target, _ = categorical_td_target(logits, reward, mask, discount, entropy)
    online = torch.randn(2, 16, 11, requires_grad=True)
    loss = categorical_cross_entropy(online, target)
    (first,) = torch.autograd.grad(loss, online, retain_graph=True)
    expect = first.clone()
    first.mul_(3.0)
    (second,) = torch.autograd.grad(loss, online, retain_graph=True)
    torch.testing.assert_close(second, expect, atol=0, rtol=0)
    assert second.data_ptr() != first.data_ptr()
    (third,) = torch.autograd.grad(loss, online)
    torch.testing.assert_close(third, expect, atol=0, rtol=0)
    third.add_(1.0)
    torch.testing.assert_close(second, expect, atol=0, rtol=0)


def test_plain_backward_hands_the_saved_gradient_on_without_a_copy(monkeypatch):
    from mtrl.ops import td_target as ops_module

    def no_copy_expected(*args):
        raise AssertionError("loss.backward() copied the saved gradient")

    logits, reward, mask, discount, entropy = make_inputs(2, 16, 11, seed=74)
    target, _ = categorical_td_target(logits, reward, mask, discount, entropy)
    online = torch.randn(2, 16, 11, requires_grad=True)
    (expect,) = torch.autograd.grad(categorical_cross_entropy(online, target), online)
    monkeypatch.setattr(ops_module._kernels, "scale_cpu", no_copy_expected)
    categorical_cross_entropy(online, target).backward()
    torch.testing.assert_close(online.grad, expect, atol=0, rtol=0)


def test_fast_binding_declines_inputs_not_in_kernel_form():
    # The DLPack entry points compute only on dense CPU buffers of the logits' dtype with exact
    # shapes; anything else answers None (the Python general path then converts or explains).
    from torch.utils.dlpack import to_dlpack as dl

    logits, reward, mask, discount, entropy = make_inputs(2, 8, 11, seed=73)
    target, value = torch.empty(8, 11), torch.empty(8)

    def run(lg=logits, r=reward, m=mask, d=discount, t=target, v_min=-10.0, combine=0):
        return _core._td_target_cpu_fast(dl(lg), dl(r), dl(m), None if d is None else dl(d), 0.99,
                                         dl(entropy), dl(t), dl(value), v_min, 10.0, combine, 0,
                                         0.0, 1)

    assert run() == 0
    np_t, _ = np_td_target(logits, reward, mask, discount, entropy, -10, 10)
    np.testing.assert_allclose(target.numpy(), np_t, atol=3e-5, rtol=0)
    assert run(d=None) == 0
    declined = [
        dict(m=mask.bool()), dict(r=reward.double()), dict(r=reward[:7]),
        dict(lg=logits.transpose(0, 1).contiguous().transpose(0, 1)),
        dict(d=torch.stack([discount, discount], 1)[:, 0]), dict(d=torch.tensor(0.9)),
        dict(t=torch.empty(11, 8).t()), dict(t=torch.empty(8, 11, dtype=torch.float64)),
        dict(lg=logits[..., :1]), dict(v_min=10.0), dict(combine=2),
    ]
    for kwargs in declined:
        assert run(**kwargs) is None, kwargs
    assert _core._td_target_cpu_fast(logits.numpy(), dl(reward), dl(mask), None, 0.99, None,
                                     dl(target), dl(value), -10.0, 10.0, 0, 0, 0.0, 1) is None
    online = torch.randn(2, 8, 11)
    td, grad, loss = torch.empty(8), torch.empty(2, 8, 11), torch.empty(())
    assert _core._cross_entropy_cpu_fast(dl(online), dl(target), None, dl(td), dl(grad), dl(loss),
                                         2) == 0
    np_loss, np_td, np_grad = np_cross_entropy(online, target)
    np.testing.assert_allclose(loss.item(), np_loss, rtol=1e-5)
    np.testing.assert_allclose(grad.numpy(), np_grad, atol=1e-7, rtol=1e-4)
    assert _core._cross_entropy_cpu_fast(dl(online), dl(target.double()), None, dl(td), None,
                                         dl(loss), 1) is None
    assert _core._cross_entropy_cpu_fast(dl(online), dl(target), None, dl(td), None,
                                         dl(torch.empty(1)), 1) is None


def test_support_beyond_float32_and_missing_or_sparse_inputs_raise():
    # v_min=-1e308, v_max=1e308 (or +-1e39 for float32 logits) gave NaN targets without an error.
    logits, reward, mask, _, _ = make_inputs(2, 8, 11, seed=48)
    for v in (1e39, 1e308):
        with pytest.raises(ValueError, match=r"support needs finite v_min < v_max with "
                                             r"\|v\| <= 1e\+38"):
            categorical_td_target(logits, reward, mask, 0.99, None, -v, v)
        with pytest.raises(ValueError, match=r"\|v\| <= 1e\+38"):
            hl_gauss_target(torch.zeros(2), -v, v, 11)
    target, value = categorical_td_target(logits, reward, mask, 0.99, None, -1e38, 1e38)
    assert bool(torch.isfinite(target).all() and torch.isfinite(value).all())
    # reward=None or mask=None reached the binding ("incompatible function arguments").
    with pytest.raises(TypeError, match="reward must be a torch.Tensor, got NoneType"):
        categorical_td_target(logits, None, mask)
    with pytest.raises(TypeError, match="mask must be a torch.Tensor, got NoneType"):
        categorical_td_target(logits, reward, None)
    # Sparse tensors failed with "unsupported memory format option Contiguous".
    with pytest.raises(TypeError, match="target_logits must be a dense tensor, got "
                                        "torch.sparse_coo"):
        categorical_td_target(logits.to_sparse(), reward, mask)
    with pytest.raises(TypeError, match="reward must be a dense tensor, got torch.sparse_coo"):
        categorical_td_target(logits, reward.to_sparse(), mask)
    # A non-integer atom count was truncated (11.5 -> 11) or parsed from a str.
    for k in (11.5, "11"):
        with pytest.raises(TypeError, match="num_atoms must be an int"):
            hl_gauss_target(torch.zeros(2), -1, 1, k)


def test_shift_plan_rows():
    """mtrl.ops.shift_plan.shift_rows, the kernels' shift-path row test: every row at discount 0.99
    with mask 1 and K <= 101 ((1 - g)(K - 1) <= 1), no mask-0 row, no row at discount 0.5 whose
    unclipped range spans more than 2 bins, and per-sample discounts row by row."""
    from mtrl.ops.shift_plan import shift_rows

    gen = torch.Generator().manual_seed(3)
    reward = torch.randn(512, generator=gen) * 15 + 0.05
    entropy = torch.randn(512, generator=gen) * 0.5
    ones, zeros = torch.ones(512), torch.zeros(512)
    assert shift_rows(reward, ones, 0.99, entropy, 101).all()
    assert not shift_rows(reward, zeros, 0.99, entropy, 101).any()
    inside = torch.linspace(-3, 3, 512)  # unclipped over ~50 of 101 atoms at g = 0.5
    assert not shift_rows(inside, ones, 0.5, zeros, 101).any()
    discount = torch.where(torch.arange(512) % 2 == 0, torch.tensor(0.99), torch.tensor(0.5))
    rows = shift_rows(inside, ones, discount, zeros, 101)
    assert rows[0::2].all() and not rows[1::2].any()


FORK_SCRIPT = """
import os, sys, torch, numpy as np
import mtrl.ops as O
torch.set_num_threads(2)
torch.softmax(torch.randn(64, 4096, 101), -1)  # torch's OpenMP team exists; no mtrl call yet
x = torch.randn(2, 5000, 101, generator=torch.Generator().manual_seed(1))
r, m = torch.zeros(5000), torch.ones(5000)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    t, _ = O.categorical_td_target(x, r, m, 0.99)
    os.write(write, t.numpy().tobytes()[:4000])
    os._exit(0)
os.close(write)
got = b""
while len(got) < 4000:
    chunk = os.read(read, 4000 - len(got))
    if not chunk:
        break
    got += chunk
os.waitpid(pid, 0)
t, _ = O.categorical_td_target(x, r, m, 0.99)
assert got == t.numpy().tobytes()[:4000], "child result differs"
print("ok")
"""


def test_kernels_run_in_a_child_forked_before_their_first_threaded_call():
    """torch's own ops made the OpenMP team, the process forked before any threaded mtrl call:
    the child runs the kernels on one thread (its fork handler is registered at load), the
    parent's result, no hang (a fresh interpreter, so no earlier test has called the kernels)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_double_backward_is_refused_not_dropped():
    """create_graph=True would make the fused loss's gradient a constant (the second-order terms
    silently missing): it raises instead."""
    x = torch.randn(2, 3, 11, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(3, 11, dtype=torch.float64), -1)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(categorical_cross_entropy(x, y), x, create_graph=True)
    (g,) = torch.autograd.grad(categorical_cross_entropy(x, y), x)  # first order still works
    assert torch.isfinite(g).all()


def test_torch_func_vmap_works_and_grad_says_what_to_use():
    from torch.func import grad, vmap

    gen = torch.Generator().manual_seed(97)
    x = torch.randn(4, 2, 3, 7, generator=gen)
    y = torch.softmax(torch.randn(3, 7, generator=gen), -1)
    r, m = torch.randn(3, generator=gen), torch.ones(3)
    losses = vmap(lambda xi: categorical_cross_entropy(xi, y))(x)
    torch.testing.assert_close(losses, torch.stack([categorical_cross_entropy(xi, y) for xi in x]))
    targets = vmap(lambda xi: categorical_td_target(xi, r, m, 0.99)[0])(x)
    torch.testing.assert_close(targets, torch.stack([categorical_td_target(xi, r, m, 0.99)[0]
                                                     for xi in x]))
    with pytest.raises(NotImplementedError, match="torch.autograd"):
        grad(lambda xi: categorical_cross_entropy(xi, y))(x[0])


def test_support_too_narrow_for_float32_atoms_is_refused():
    """Atoms fewer than 8 float32 ulps apart (relative to the support's magnitude) once lost
    probability mass in the AVX2 build: refused by the op, the fast path's binding, hl_gauss_target
    and AgentConfig alike."""
    from mtrl.config import AgentConfig

    k, v_min, v_max = 4096, 1.0, 1.0000303357893081
    x, r, m = torch.zeros(1, 1, k), torch.tensor([1.00001717]), torch.ones(1)
    with pytest.raises(ValueError, match="support too narrow for 4096 float32 atoms"):
        categorical_td_target(x, r, m, 0.97, None, v_min, v_max)
    with pytest.raises(ValueError, match="support too narrow"):
        _core._td_target_cpu(x.numpy(), r.numpy(), m.numpy(), None, 0.97, None,
                             np.empty((1, k), np.float32), np.empty(1, np.float32), v_min, v_max,
                             0, 0, 0.0, 1)
    with pytest.raises(ValueError, match="support too narrow"):
        hl_gauss_target(r, v_min, v_max, k)
    with pytest.raises(ValueError, match="too narrow"):
        AgentConfig(v_min=1000.0, v_max=1000.0001, num_atoms=101)
    # At the limit the row keeps its mass.
    width = 2.0**-20 * 1.01 * (k - 1) * 1.01
    t, _ = categorical_td_target(torch.randn(2, 8, k), torch.full((8,), 1.0 + width / 2),
                                 torch.ones(8), 0.97, None, 1.0, 1.0 + width)
    assert ((t.double().sum(-1) - 1).abs() <= 1e-6).all()


@pytest.mark.parametrize("max_isa", [2, 1, 0])
def test_hl_gauss_with_a_sigma_much_wider_than_the_support_in_every_build(max_isa):
    """All erf arguments near 0, their differences tiny: erf must be accurate relative to its
    value there (the A&S form alone was off by 3.4e-5 at sigma = 1e3 on [-10, 10])."""
    gen = torch.Generator().manual_seed(101)
    b, k = 16, 51
    logits = torch.randn(2, b, k, generator=gen)
    reward, mask, entropy = torch.randn(b, generator=gen) * 8, torch.ones(b), torch.zeros(b)
    for sigma in (0.15, 10.0, 1e3, 1e5):
        target, value = torch.empty(b, k), torch.empty(b)
        assert _core._td_target_cpu(logits.numpy(), reward.numpy(), mask.numpy(), None, 0.99,
                                    entropy.numpy(), target.numpy(), value.numpy(), -10.0, 10.0,
                                    0, 1, sigma, 1, max_isa) == 0
        ref_t, ref_v = categorical_td_target_reference(
            logits.double(), reward.double(), mask.double(), 0.99, entropy.double(), v_min=-10.0,
            v_max=10.0, projection="hl_gauss", sigma=sigma)
        torch.testing.assert_close(target.double(), ref_t, atol=5e-6, rtol=0)
        torch.testing.assert_close(value.double(), ref_v, atol=1e-5, rtol=0)


def test_sigma_outside_float32_range_and_huge_ints_name_the_argument():
    x, r, m = torch.zeros(1, 2, 11), torch.zeros(2), torch.ones(2)
    for sigma in (1e-40, 3e38, 1e31):
        with pytest.raises(ValueError, match=r"sigma must be in \[1e-30, 1e\+30\]"):
            categorical_td_target(x, r, m, projection="hl_gauss", sigma=sigma)
    with pytest.raises(ValueError, match="sigma must be in"):
        hl_gauss_target(r, -10.0, 10.0, 11, sigma=1e-40)
    for name, kwargs in (("discount", {"discount": 10**400}), ("v_max", {"v_max": 10**400}),
                         ("v_min", {"v_min": -(10**400)}), ("sigma", {"sigma": 10**400,
                                                                      "projection": "hl_gauss"})):
        with pytest.raises(ValueError, match=name):
            categorical_td_target(x, r, m, **kwargs)


@pytest.mark.parametrize("max_isa", [2, 1, 0])
def test_discount_times_mask_above_two_in_every_build(max_isa):
    """g = discount * mask > 2 (a discount or mask above 1) spreads the atoms over more than two bins
    each, so few stay unclipped: the shift projection does not apply to such rows (its offset
    bound assumes g <= 2; it once returned negative masses here) and they match the reference."""
    b, k = 64, 15
    gen = torch.Generator().manual_seed(89)
    logits = torch.randn(2, b, k, generator=gen) * 2
    reward = torch.randn(b, generator=gen) * 60
    reward[0] = -98.0
    entropy = torch.randn(b, generator=gen) * 0.1
    for g in (1.9, 2.0, 2.05, 2.5, 5.0, 10.0, 100.0):
        for mask_value, discount in ((1.0, g), (g, 1.0)):
            mask = torch.full((b,), mask_value)
            target, value = torch.empty(b, k), torch.empty(b)
            assert _core._td_target_cpu(logits.numpy(), reward.numpy(), mask.numpy(), None,
                                        discount, entropy.numpy(), target.numpy(), value.numpy(),
                                        -10.0, 10.0, 0, 0, 0.0, 1, max_isa) == 0
            np_t, np_v = np_td_target(logits, reward, mask, torch.full((b,), discount), entropy,
                                      -10, 10)
            np.testing.assert_allclose(target.numpy(), np_t, atol=3e-5, rtol=0)
            np.testing.assert_allclose(value.numpy(), np_v, atol=1e-4, rtol=1e-5)
            assert (target >= 0).all()


@pytest.mark.parametrize("max_isa", [2, 1, 0])
def test_huge_finite_rewards_clip_in_every_build(max_isa):
    """Rewards up to float32's range (|r| * (K - 1) / (v_max - v_min) overflows float) put every
    atom on the clipped end: a finite target, not NaN (the shift plan's c - d once overflowed)."""
    b, k = 8, 101
    logits = torch.randn(2, b, k, generator=torch.Generator().manual_seed(83))
    reward = torch.tensor([3e38, -3e38, 1e38, -1e38, 7e37, -7e37, 3e38, -3e38])
    mask = torch.tensor([1.0, 1, 1, 1, 1, 1, 0, 0])
    entropy = torch.zeros(b)
    for discount in (0.99, 0.5, 1.0):
        target, value = torch.empty(b, k), torch.empty(b)
        assert _core._td_target_cpu(logits.numpy(), reward.numpy(), mask.numpy(), None, discount,
                                    entropy.numpy(), target.numpy(), value.numpy(), -10.0, 10.0,
                                    0, 0, 0.0, 1, max_isa) == 0
        np_t, np_v = np_td_target(logits, reward, mask, torch.full((b,), discount), entropy, -10,
                                  10)
        np.testing.assert_allclose(target.numpy(), np_t, atol=3e-5, rtol=0)
        np.testing.assert_allclose(value.numpy(), np_v, atol=1e-4, rtol=1e-5)
