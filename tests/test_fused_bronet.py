"""mtrl.fused_bronet: a BroNet ensemble (critic, actor) as one autograd node equals its composed layers."""

import pytest
import torch

from mtrl.fused_bronet import bronet_forward
from mtrl.networks import LAYER_NORM_EPS, Actor, Critic


def _inputs(critic, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, 5, generator=gen)
    action = torch.rand(batch, 2, generator=gen) * 2 - 1
    task = torch.randint(0, max(critic.num_tasks, 1), (batch,), generator=gen)
    return obs, action, task


def _grads(critic, out, seed, inputs):
    critic.zero_grad(set_to_none=True)
    for t in inputs:
        t.grad = None
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out * weights).sum().backward()
    return [p.grad for p in critic.parameters()] + [t.grad for t in inputs]


@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("tasks", [1, 3])
def test_matches_composed_layers_bitwise(depth, tasks):
    torch.manual_seed(depth + 10 * tasks)
    critic = Critic(5, 2, tasks, width=48, depth=depth)
    with torch.no_grad():  # non-trivial LayerNorm and bias parameters
        for p in critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs, action, task = _inputs(critic, 37, seed=1)
    action.requires_grad_()
    out = critic(obs, action, task)
    assert out.grad_fn is not None and "BroNetFunction" in type(out.grad_fn).__name__
    grads = _grads(critic, out, 2, [action])
    parts = [obs, action] + ([critic.embed(task)] if tasks > 1 else [])
    ref = critic.forward_layers(torch.cat(parts, -1))
    assert "BroNetFunction" not in type(ref.grad_fn).__name__
    ref_grads = _grads(critic, ref, 2, [action])
    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            assert torch.equal(g, r)


def test_without_param_grads_reaches_inputs_only():
    torch.manual_seed(0)
    critic = Critic(5, 2, 3, width=32, depth=2)
    obs, action, task = _inputs(critic, 9, seed=3)
    action.requires_grad_()
    out = critic(obs, action, task, param_grads=False)
    grads = _grads(critic, out, 4, [action])
    assert all(g is None for g in grads[:-1]) and grads[-1] is not None
    action_ref = action.detach().clone().requires_grad_()
    parts = [obs, action_ref, critic.embed(task).detach()]
    ref = critic.forward_layers(torch.cat(parts, -1), param_grads=False)
    ref.backward(torch.randn(ref.shape, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(out, ref) and torch.equal(grads[-1], action_ref.grad)


def test_without_param_grads_or_input_grads_builds_no_graph():
    # Grad mode on, parameters requiring grad, but param_grads=False and no input requiring grad:
    # nothing is differentiable (as on the composed path). The head's matmul once recorded a
    # graph into head.weight / head.bias, which a backward then filled.
    torch.manual_seed(0)
    critic = Critic(5, 2, 3, width=16, depth=1)
    obs, action, task = _inputs(critic, 4, seed=8)
    out = critic(obs, action, task, param_grads=False)
    ref = critic.forward_layers(torch.cat([obs, action, critic.embed(task).detach()], -1),
                                param_grads=False)
    assert not out.requires_grad and not ref.requires_grad
    assert torch.equal(out, ref)


def test_create_graph_through_the_fused_node_raises():
    # Its backward is first order only: under create_graph=True torch's once_differentiable would
    # hand back a constant input gradient (for out.sum()), and a gradient penalty built on it
    # would silently add nothing.
    torch.manual_seed(0)
    critic = Critic(5, 2, 1, width=16, depth=1)
    obs, action, task = _inputs(critic, 6, seed=9)
    action.requires_grad_()
    out = critic(obs, action, task)
    with pytest.raises(RuntimeError, match="no double backward.*forward_layers"):
        torch.autograd.grad(out.sum(), action, create_graph=True)


def test_strided_parameters_and_empty_batches_take_a_path_that_works():
    torch.manual_seed(0)
    critic = Critic(5, 2, 1, width=16, depth=1)
    obs, action, task = _inputs(critic, 4, seed=10)
    want = critic(obs, action, task)
    state = critic.state_dict()
    gamma = state["blocks.0.ln2.weight"]  # a middle parameter, given a row stride of 2 W
    state["blocks.0.ln2.weight"] = torch.cat([gamma, torch.zeros_like(gamma)], 1)[:, :1]
    critic.load_state_dict(state, assign=True)
    assert not critic.blocks[0].ln2.weight.is_contiguous()
    torch.testing.assert_close(critic(obs, action, task), want)  # was "gamma must be C-contiguous"
    empty = critic(obs[:0], action[:0], task[:0])
    assert empty.shape == (2, 0, want.shape[-1])
    actor = Actor(5, 2, width=16, depth=1)
    sampled, log_prob = actor.sample(obs[:0])
    assert sampled.shape == (0, 2) and log_prob.shape == (0,)


def test_float64_gradcheck_of_the_composed_path_and_fallbacks():
    # float64 takes the composed layers (the kernels are float32); check the fused path against
    # it in float64 precision up to float32 rounding.
    torch.manual_seed(0)
    critic = Critic(5, 2, 1, width=16, depth=1)
    obs, action, task = _inputs(critic, 6, seed=5)
    out32 = critic(obs, action, task)
    critic64 = critic.double()
    out64 = critic64(obs.double(), action.double(), task)
    assert out64.grad_fn is not None and "BroNetFunction" not in type(out64.grad_fn).__name__
    torch.testing.assert_close(out32.double(), out64, atol=1e-5, rtol=1e-5)


def test_no_graph_without_gradients():
    critic = Critic(5, 2, 1, width=16, depth=1).requires_grad_(False)
    obs, action, task = _inputs(critic, 4, seed=6)
    out = critic(obs, action, task)
    assert out.grad_fn is None
    with torch.no_grad():
        assert bronet_forward(torch.cat([obs, action], -1), critic.layer_parameters(), 1,
                              LAYER_NORM_EPS, True).grad_fn is None


def test_in_place_weight_change_before_backward_is_caught():
    critic = Critic(5, 2, 1, width=16, depth=1)
    obs, action, task = _inputs(critic, 4, seed=7)
    out = critic(obs, action, task)
    with torch.no_grad():
        critic.head.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_actor_trunk_matches_composed_layers_bitwise():
    torch.manual_seed(3)
    actor = Actor(7, 3, 32, width=64)
    obs, emb = torch.randn(11, 7, requires_grad=True), torch.randn(11, 32)
    assert "BroNetFunction" in type(actor.forward_network(torch.cat([obs, emb], -1)).grad_fn).__name__
    mean, log_std = actor(obs, emb)
    grads = _grads(actor, torch.cat([mean, log_std], -1), 8, [obs])
    out = actor.forward_layers(torch.cat([obs, emb], -1))[0]
    ref_mean, ref_raw = out.split(3, -1)
    from mtrl.math import squash_log_std
    ref = torch.cat([ref_mean, squash_log_std(ref_raw)], -1)
    ref_grads = _grads(actor, ref, 8, [obs])
    assert torch.equal(torch.cat([mean, log_std], -1), ref)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)
