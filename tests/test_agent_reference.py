"""Whole BRC updates against an independent re-derivation from brc-spec §2.2-§3.2 and §5.1.

The reference below is written from the spec's text with plain float64 tensor ops and autograd
(no mtrl module, kernel or optimizer): BroNet (§3.1), the unit-norm task embedding (§5.1), the
tanh-Gaussian actor (§2.3), the C51 projection with its exact-hit rule written out atom by atom
(§3.2), the member-summed cross-entropy, optax-style AdamW / Adam (§2.1) and Polyak (§2.2). It
reads the agent's parameters by name and draws the actor's noise in the agent's order (the
critic step's next action, then the actor step's action) from the same torch generator state.
Two consecutive updates are compared, so the optimizers' second step (bias correction, moments)
is checked too. The other tests hold each part alone; these hold the order and the wiring.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from mtrl.agent import Batch, BRCAgent
from mtrl.config import AgentConfig

OBS, ACT, WIDTH, ACTOR_WIDTH, B = 5, 3, 16, 8, 64


# ---------------------------------------------------------------- the reference (spec only)
def bronet(p: dict, net: str, x: torch.Tensor, depth: int) -> torch.Tensor:
    """§3.1 for every member at once: x (B, D) -> (E, B, K). Weights are (E, in, out)."""
    def linear(name, h):
        return h @ p[f"{net}.{name}.weight"] + p[f"{net}.{name}.bias"]

    def layer_norm(name, h):
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        return (h - mu) / torch.sqrt(var + 1e-6) * p[f"{net}.{name}.weight"] + p[f"{net}.{name}.bias"]

    h = torch.relu(layer_norm("ln_in", linear("fc_in", x)))
    for i in range(depth):
        inner = torch.relu(layer_norm(f"blocks.{i}.ln1", linear(f"blocks.{i}.fc1", h)))
        h = h + layer_norm(f"blocks.{i}.ln2", linear(f"blocks.{i}.fc2", inner))
    return linear("head", h)


def embed(p: dict, net: str, task_id: torch.Tensor) -> torch.Tensor | None:
    """§5.1: the table's rows divided by their L2 norm (no epsilon)."""
    table = p.get(f"{net}.task_embedding")
    if table is None:
        return None
    e = table[task_id]
    return e / torch.sqrt((e * e).sum(-1, keepdim=True))


def actor_sample(p: dict, obs, emb, noise):
    """§2.3: a = tanh(mean + sigma * noise), log sigma = -10 + 12 * (1 + tanh(raw)) / 2, log pi
    with the tanh Jacobian in its stable form 2 (log 2 - u - softplus(-2u))."""
    x = obs if emb is None else torch.cat([obs, emb], -1)
    mean, raw = bronet(p, "actor", x, 1)[0].split(ACT, -1)
    log_std = -10.0 + 12.0 * 0.5 * (1.0 + torch.tanh(raw))
    u = mean + torch.exp(log_std) * noise
    gaussian = (-0.5 * noise ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    jacobian = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), gaussian - jacobian


def critic_logits(p: dict, net: str, obs, action, task_id, emb=None):
    e = embed(p, net, task_id) if emb is None else emb
    parts = [obs, action] + ([] if e is None else [e])
    return bronet(p, net, torch.cat(parts, -1), 2)


def c51_projection(probs, reward, mask, discount, entropy, z, v_min, v_max):
    """§3.2 atom by atom: shift, clip, split each atom's mass between floor and ceil bins (all of
    it to the bin on an exact hit)."""
    num_atoms = z.numel()
    dz = (v_max - v_min) / (num_atoms - 1)
    target = torch.zeros_like(probs)
    for j in range(num_atoms):
        shifted = (reward + discount * mask * (z[j] - entropy)).clamp(v_min, v_max)
        b = (shifted - v_min) / dz
        lo, hi = b.floor(), b.ceil()
        p_j = probs[:, j]
        to_lo = p_j * (hi - b) + p_j * (lo == hi)
        to_hi = p_j * (b - lo)
        rows = torch.arange(probs.shape[0])
        target[rows, lo.long()] += to_lo
        target[rows, hi.long()] += to_hi
    return target


def adam(param, grad, state, lr, betas, eps, weight_decay):
    """optax adamw (decoupled weight decay, bias-corrected moments, eps outside the sqrt)."""
    m = state.setdefault("m", torch.zeros_like(param))
    v = state.setdefault("v", torch.zeros_like(param))
    state["t"] = t = state.get("t", 0) + 1
    m.mul_(betas[0]).add_((1 - betas[0]) * grad)
    v.mul_(betas[1]).add_((1 - betas[1]) * grad * grad)
    m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
    return param - lr * (m_hat / (v_hat.sqrt() + eps) + weight_decay * param)


def reference_update(p: dict, opt: dict, cfg: AgentConfig, batch: Batch, denominator, noise):
    """One §2.2 step. p: name -> float64 tensor (agent.state_dict() names), updated in place of
    the dict; opt: per-name optimizer state. noise: (critic step's, actor step's) N(0, I) draws."""
    z = torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms, dtype=torch.float64)
    alpha = math.exp(p["log_alpha"].item())  # the current temperature, constant in steps 1-3
    reward = batch.reward / denominator[batch.task_id]  # §4.2, applied at sampling time
    critic_names = [n for n in p if n.startswith("critic.")]
    actor_names = [n for n in p if n.startswith("actor.")]
    hyper = dict(lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay)
    # 1. Critic: target from the target critic at (s', a'), a' from the current actor whose input
    #    holds the online critic's embedding; CE summed over members, mean over the batch.
    with torch.no_grad():
        next_action, next_log_prob = actor_sample(
            p, batch.next_obs, embed(p, "critic", batch.task_id), noise[0])
        probs = torch.softmax(critic_logits(p, "target_critic", batch.next_obs, next_action,
                                            batch.task_id), -1).mean(0)
        target = c51_projection(probs, reward, batch.mask, batch.discount,
                                alpha * next_log_prob, z, cfg.v_min, cfg.v_max)
    params = {n: p[n].clone().requires_grad_(True) for n in critic_names}
    logits = critic_logits(params, "critic", batch.obs, batch.action, batch.task_id)
    critic_loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean(-1).sum()
    grads = torch.autograd.grad(critic_loss, list(params.values()))
    for name, grad in zip(critic_names, grads):
        p[name] = adam(p[name], grad, opt.setdefault(name, {}), **hyper)
    # 2. Polyak on every critic parameter, embedding and LayerNorm included.
    for name in critic_names:
        twin = "target_" + name
        p[twin] = cfg.tau * p[name] + (1 - cfg.tau) * p[twin]
    # 3. Actor on the updated critic; embedding and alpha constant.
    params = {n: p[n].clone().requires_grad_(True) for n in actor_names}
    emb = embed(p, "critic", batch.task_id)
    action, log_prob = actor_sample(params, batch.obs, emb, noise[1])
    logits = critic_logits(p, "critic", batch.obs, action, batch.task_id, emb=emb)
    q = (torch.softmax(logits, -1).mean(0) * z).sum(-1)
    actor_loss = (alpha * log_prob - q).mean()
    grads = torch.autograd.grad(actor_loss, list(params.values()))
    for name, grad in zip(actor_names, grads):
        p[name] = adam(p[name], grad, opt.setdefault(name, {}), **hyper)
    # 4. Temperature: loss alpha (H - H_target), gradient w.r.t. log alpha, Adam(beta1 0.5).
    entropy = -log_prob.detach().mean()
    temperature_loss = alpha * (entropy - (-ACT / 2))
    p["log_alpha"] = adam(p["log_alpha"], temperature_loss, opt.setdefault("log_alpha", {}),
                          lr=cfg.temperature_lr, betas=(cfg.temperature_beta1, 0.999), eps=1e-8,
                          weight_decay=0.0)
    return {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
            "temperature_loss": temperature_loss.detach(), "entropy": entropy,
            "q_target_mean": (target * z).sum(-1).mean(), "q_mean": q.detach().mean()}


# ---------------------------------------------------------------- the comparison
def make_batch(num_tasks: int, dtype, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(B, generator=g) > 0.2).to(dtype)
    return Batch(obs=torch.randn(B, OBS, generator=g, dtype=dtype),
                 action=torch.rand(B, ACT, generator=g, dtype=dtype) * 2 - 1,
                 # wide enough that some shifted atoms clip at both ends of the support
                 reward=torch.randn(B, generator=g, dtype=dtype) * 6,
                 next_obs=torch.randn(B, OBS, generator=g, dtype=dtype),
                 mask=mask, discount=torch.full((B,), 0.99, dtype=dtype),
                 task_id=torch.randint(0, num_tasks, (B,), generator=g))


def run_both(num_tasks: int, dtype, fused_ops: bool = True, updates: int = 2):
    cfg = AgentConfig(critic_width=WIDTH, actor_width=ACTOR_WIDTH, num_atoms=21, v_min=-5.0,
                      v_max=5.0, temperature_lr=3e-3, fused_ops=fused_ops)
    torch.manual_seed(0)
    agent = BRCAgent(cfg, OBS, ACT, num_tasks).to(dtype)
    p = {n: t.detach().to(torch.float64).clone() for n, t in agent.state_dict().items()}
    p = {n: t for n, t in p.items() if n != "atoms"}
    p["log_alpha"] = p["log_alpha"].reshape(())
    opt: dict = {}
    denominator = torch.linspace(0.5, 2.0, num_tasks, dtype=dtype)
    for u in range(updates):
        batch = make_batch(num_tasks, dtype, seed=10 + u)
        torch.manual_seed(100 + u)
        ours = agent.update(batch, denominator)
        # The agent's draws, in its order: (B, A) for the next action, then (B, A) for the action.
        torch.manual_seed(100 + u)
        noise = [torch.randn(B, ACT, dtype=dtype).to(torch.float64) for _ in range(2)]
        batch64 = Batch(*(t.to(torch.float64) if t.is_floating_point() else t
                          for t in vars(batch).values()))
        theirs = reference_update(p, opt, cfg, batch64, denominator.to(torch.float64), noise)
    return agent, ours, p, theirs


@pytest.mark.parametrize("num_tasks", [1, 3])
def test_float64_updates_equal_the_spec_rederivation(num_tasks):
    agent, ours, p, theirs = run_both(num_tasks, torch.float64)
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-9, atol=1e-9, msg=name)
    for name, value in agent.state_dict().items():
        if name != "atoms":
            torch.testing.assert_close(value.reshape(p[name].shape), p[name], rtol=1e-9,
                                       atol=1e-9, msg=name)


@pytest.mark.parametrize("fused_ops", [True, False])
def test_float32_updates_track_the_spec_rederivation(fused_ops):
    """The CPU float32 path (one-node networks, fused TD ops and AdamW) within float32 rounding."""
    agent, ours, p, theirs = run_both(3, torch.float32, fused_ops=fused_ops)
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name].double(), value, rtol=1e-4, atol=1e-4, msg=name)
    for name, value in agent.state_dict().items():
        if name != "atoms":
            # parameters move by ~lr per step: their changes must agree, not only their values
            torch.testing.assert_close(value.double().reshape(p[name].shape), p[name],
                                       rtol=1e-5, atol=2e-6, msg=name)
