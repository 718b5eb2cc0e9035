"""mtrl.tanh_gaussian: the actor's tanh-Gaussian head as one node equals the PyTorch formula."""

import pytest
import torch

from mtrl.tanh_gaussian import sample_reference, sample_tanh_gaussian


def _head(batch, action_dim, seed):
    gen = torch.Generator().manual_seed(seed)
    head = torch.randn(batch, 2 * action_dim, generator=gen) * 2  # wide pre-tanh and log-std range
    head[:, 0] = torch.linspace(-30, 30, batch)  # saturated tanh (softplus branch) included
    return head


@pytest.mark.parametrize("batch,action_dim,std_scale", [(1, 1, 1.0), (257, 6, 1.0), (64, 38, 0.5)])
def test_matches_the_formula_and_its_autograd(batch, action_dim, std_scale):
    head = _head(batch, action_dim, seed=batch).requires_grad_()
    ref_head = head.detach().double().requires_grad_()
    torch.manual_seed(7)
    action, log_prob = sample_tanh_gaussian(head, action_dim, std_scale)
    torch.manual_seed(7)
    noise = torch.randn(batch, action_dim)  # the same draw
    ref_action, ref_log_prob = sample_reference(ref_head, noise.double(), action_dim, std_scale)
    assert "TanhGaussian" in type(action.grad_fn).__name__
    # float32 against float64: pre = mean + step cancels (|step| up to ~20), so absolute tolerances
    torch.testing.assert_close(action.double(), ref_action, rtol=1e-5, atol=1e-5)
    # (The kernel takes z = std_scale * noise exactly; float32 (pre - mean) / sigma would not.)
    torch.testing.assert_close(log_prob.double(), ref_log_prob, rtol=1e-5, atol=1e-4)
    gen = torch.Generator().manual_seed(1)
    g_action, g_log_prob = torch.randn(batch, action_dim, generator=gen), torch.randn(batch, generator=gen)
    (action * g_action).sum().add((log_prob * g_log_prob).sum()).backward()
    ((ref_action * g_action.double()).sum() + (ref_log_prob * g_log_prob.double()).sum()).backward()
    torch.testing.assert_close(head.grad.double(), ref_head.grad, rtol=1e-4, atol=1e-4)


def test_one_output_used_and_no_grad_path():
    head = _head(5, 3, seed=0).requires_grad_()
    _, log_prob = sample_tanh_gaussian(head, 3)
    log_prob.sum().backward()  # the action's gradient is absent (None)
    ref = head.detach().clone().requires_grad_()
    assert head.grad is not None and torch.isfinite(head.grad).all()
    with torch.no_grad():
        torch.manual_seed(3)
        action, log_prob = sample_tanh_gaussian(head, 3)
    torch.manual_seed(3)
    ref_action, ref_log_prob = sample_reference(ref.detach(), torch.randn(5, 3), 3)
    assert action.grad_fn is None
    torch.testing.assert_close(action, ref_action)
    torch.testing.assert_close(log_prob, ref_log_prob, rtol=1e-3, atol=1e-3)  # float32 formula


def test_float64_takes_the_formula():
    head = _head(4, 2, seed=1).double().requires_grad_()
    action, log_prob = sample_tanh_gaussian(head, 2)
    assert action.dtype == torch.float64 and "TanhGaussian" not in type(action.grad_fn).__name__


@pytest.mark.parametrize("shape,action_dim", [((5, 7), 3), ((5, 6), 0), ((5,), 3), ((2, 5, 6), 3)])
def test_bad_head_shapes_raise_a_clear_error(shape, action_dim):
    with pytest.raises(ValueError, match=r"head must have shape \(B, 2 \* action_dim\)"):
        sample_tanh_gaussian(torch.randn(shape), action_dim)


def test_empty_batch_gives_empty_outputs():
    head = torch.randn(0, 6, requires_grad=True)
    action, log_prob = sample_tanh_gaussian(head, 3)
    assert action.shape == (0, 3) and log_prob.shape == (0,)
    (action.sum() + log_prob.sum()).backward()
    assert head.grad.shape == (0, 6)


@pytest.mark.parametrize("std_scale", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_std_scale_is_named(std_scale):
    for head in (torch.randn(4, 6), torch.randn(4, 6, dtype=torch.float64)):
        with pytest.raises(ValueError, match="std_scale must be a finite number"):
            sample_tanh_gaussian(head, 3, std_scale)


@pytest.mark.parametrize("std_scale", [1.0, 0.5])
def test_float32_formula_is_exact_in_z_at_large_means(std_scale):
    # The formula path (CUDA, torch.compile, strided heads) takes z = std_scale * noise as the
    # kernel does: computing it back as (pre - mean) / sigma cancelled digits at |mean| >> sigma
    # (log_prob off by ~1e-4 relative at actor-like scales, its log-std gradient by ~1e-3).
    gen = torch.Generator().manual_seed(5)
    head = torch.cat([torch.randn(512, 4, generator=gen) * 30,
                      torch.randn(512, 4, generator=gen) * 0.5 - 2], 1).requires_grad_()
    head64 = head.detach().double().requires_grad_()
    noise = torch.randn(512, 4, generator=gen)
    _, log_prob = sample_reference(head, noise, 4, std_scale)
    _, log_prob64 = sample_reference(head64, noise.double(), 4, std_scale)
    torch.testing.assert_close(log_prob.double(), log_prob64, rtol=2e-6, atol=2e-6)
    log_prob.sum().backward()
    log_prob64.sum().backward()
    torch.testing.assert_close(head.grad.double(), head64.grad, rtol=1e-5, atol=1e-5)


def test_create_graph_through_the_kernel_node_raises():
    head = _head(5, 3, seed=2).requires_grad_()
    _, log_prob = sample_tanh_gaussian(head, 3)
    with pytest.raises(RuntimeError, match="no double backward.*sample_reference"):
        torch.autograd.grad(log_prob.sum(), head, create_graph=True)
