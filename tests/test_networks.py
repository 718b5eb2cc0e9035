"""Networks: shapes, parameter counts (brc-spec §3.4), init and embeddings (§5.1)."""

import math

import pytest
import torch

from mtrl.networks import Actor, Critic


def spec_param_count(d_in, width, depth=2, atoms=101, members=2):
    """Per member (d_in+1)W + 2W + depth(2(W^2+W) + 4W) + 101(W+1), times members (§3.4)."""
    per = (d_in + 1) * width + 2 * width + depth * (2 * (width**2 + width) + 4 * width) + atoms * (width + 1)
    return members * per


def test_spec_table_formula():
    # §3.4 table: 4 dog tasks MT d_in = 293 and MetaWorld ST d_in = 43.
    table = {512: (2.5, 2.3), 1024: (9.2, 8.7), 2048: (35, 34), 4096: (138, 136), 8192: (544, 539)}
    for width, (mt, st) in table.items():
        digits = 1 if width <= 1024 else 0
        assert round(spec_param_count(293, width) / 1e6, digits) == mt
        assert round(spec_param_count(43, width) / 1e6, digits) == st


@pytest.mark.parametrize("width", [512, 1024])
@pytest.mark.parametrize("obs,act,tasks,d_in", [(223, 38, 4, 293), (39, 4, 1, 43)])
def test_critic_param_count(width, obs, act, tasks, d_in):
    critic = Critic(obs, act, tasks, width=width)
    trunk = sum(p.numel() for p in critic.trunk_parameters())
    assert trunk == spec_param_count(d_in, width)
    emb = 0 if tasks == 1 else tasks * 32
    assert sum(p.numel() for p in critic.parameters()) == trunk + emb


def test_critic_shapes_and_init():
    critic = Critic(7, 3, 3, width=64, depth=2)
    out = critic(torch.randn(5, 7), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1]))
    assert out.shape == (2, 5, 101)
    w = critic.fc_in.weight  # (E, in, out): orthogonal with gain sqrt(2) -> W^T W = 2 I (in < out)
    for k in range(2):
        torch.testing.assert_close(w[k] @ w[k].t(), 2 * torch.eye(w.shape[1]), atol=1e-5, rtol=0)
    assert not torch.equal(w[0], w[1])  # members initialised independently
    assert critic.fc_in.bias.abs().sum() == 0
    assert critic.ln_in  # LayerNorm eps 1e-6 is a module constant
    from mtrl.networks import LAYER_NORM_EPS
    assert LAYER_NORM_EPS == 1e-6


def test_ensemble_matches_per_member_loop():
    torch.manual_seed(0)
    critic = Critic(5, 2, 1, width=32, depth=2)
    obs, act = torch.randn(4, 5), torch.randn(4, 2)
    out = critic(obs, act, torch.zeros(4, dtype=torch.long))
    x = torch.cat([obs, act], -1)
    for k in range(2):
        def lin(layer, h):
            return h @ layer.weight[k] + layer.bias[k]
        def ln(layer, h):
            return torch.nn.functional.layer_norm(h, (h.shape[-1],), layer.weight[k, 0], layer.bias[k, 0], 1e-6)
        h = torch.relu(ln(critic.ln_in, lin(critic.fc_in, x)))
        for b in critic.blocks:
            h = h + ln(b.ln2, lin(b.fc2, torch.relu(ln(b.ln1, lin(b.fc1, h)))))
        torch.testing.assert_close(out[k], lin(critic.head, h), atol=1e-5, rtol=1e-5)


def test_embedding_unit_norm_and_init_scale():
    torch.manual_seed(0)
    critic = Critic(4, 2, 500, width=16)
    e = critic.embed(torch.arange(500))
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(500))
    var = critic.task_embedding.var().item()
    assert var == pytest.approx(1 / 32, rel=0.1)
    assert Critic(4, 2, 1, width=16).embed(torch.zeros(3, dtype=torch.long)) is None


def test_actor():
    torch.manual_seed(0)
    actor = Actor(6, 3, 32)
    obs, emb = torch.randn(8, 6), torch.randn(8, 32)
    a, logp = actor.sample(obs, emb)
    assert a.shape == (8, 3) and logp.shape == (8,)
    assert a.abs().max() <= 1
    mean, log_std = actor(obs, emb)
    assert (log_std >= -10).all() and (log_std <= 2).all()
    torch.testing.assert_close(actor.act(obs, emb, deterministic=True), torch.tanh(mean))
    # One head (W, 2|A|): mean columns orthogonal gain sqrt(2), log-std columns gain 1.0 (§2.3)
    head = actor.head.weight[0]
    w = head[:, 3:].t()
    torch.testing.assert_close(w @ w.t(), torch.eye(3), atol=1e-5, rtol=0)
    w = head[:, :3].t()
    torch.testing.assert_close(w @ w.t(), 2 * torch.eye(3), atol=1e-5, rtol=0)
    assert actor.head.bias.abs().sum() == 0
    torch.testing.assert_close(mean, actor.forward_layers(torch.cat([obs, emb], -1))[0, :, :3])
    # trunk: Linear -> LayerNorm -> ReLU, one residual block, width 256 (§2.3)
    assert actor.fc_in.weight.shape == (1, 6 + 32, 256) and len(actor.blocks) == 1


def test_critic_without_param_grads_matches_and_reaches_inputs_only():
    torch.manual_seed(0)
    critic = Critic(5, 2, 3, width=32, depth=2)
    obs, task = torch.randn(6, 5), torch.randint(0, 3, (6,))
    act_a = torch.randn(6, 2, requires_grad=True)
    act_b = act_a.detach().clone().requires_grad_()
    out_a = critic(obs, act_a, task)
    out_b = critic(obs, act_b, task, param_grads=False)
    torch.testing.assert_close(out_a, out_b)
    assert out_b.requires_grad
    out_b.sum().backward()
    assert all(p.grad is None for p in critic.parameters())
    out_a.sum().backward()
    torch.testing.assert_close(act_a.grad, act_b.grad)


def test_critic_forward_with_the_callers_embedding_is_the_same():
    # The actor step hands the critic the (detached) embedding it already computed.
    torch.manual_seed(0)
    critic = Critic(5, 2, 3, width=16)
    obs, action = torch.randn(7, 5), torch.rand(7, 2).requires_grad_()
    task_id = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    own = critic(obs, action, task_id, param_grads=False)
    given = critic(obs, action, task_id, param_grads=False,
                   embedding=critic.embed(task_id).detach())
    assert torch.equal(own, given)
    (grad_own,) = torch.autograd.grad(own.sum(), action)
    (grad_given,) = torch.autograd.grad(given.sum(), action)
    assert torch.equal(grad_own, grad_given)
    other = critic(obs, action, task_id, param_grads=False,
                   embedding=critic.embed(task_id.roll(1)).detach())
    assert not torch.equal(own, other)  # the given embedding is the one used
