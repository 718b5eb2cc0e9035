"""BRC agent update (brc-spec §2.2): embeddings, Polyak, temperature, optimisers, fused path."""

import copy

import pytest
import torch

import mtrl
from mtrl import math as M
from mtrl.agent import Batch, BRCAgent, fused_ops_available
from mtrl.config import AgentConfig

from agent_fixtures import ACT, OBS, TASKS, B, make_agent, make_batch

def test_update_metrics_detached_and_finite():
    agent = make_agent()
    metrics = agent.update(make_batch(), torch.ones(TASKS))
    for name, value in metrics.items():
        assert not value.requires_grad, name
        assert torch.isfinite(value).all(), name
    assert metrics["nonfinite_per_task"].shape == (TASKS,)
    assert metrics["alpha"].item() == pytest.approx(0.1)
    assert agent.target_entropy == -ACT / 2


def test_reward_divided_by_task_denominator():
    agent = make_agent()
    batch = make_batch()
    den = torch.tensor([1.0, 2.0, 4.0])
    metrics = agent.update(batch, den)
    torch.testing.assert_close(metrics["reward_mean"], (batch.reward / den[batch.task_id]).mean())


def test_polyak_after_critic_step():
    agent = make_agent()
    old_target = [p.clone() for p in agent.target_critic.parameters()]
    for a, b in zip(agent.target_critic.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(a, b)  # identical at init (§11.4)
    agent.update(make_batch(), torch.ones(TASKS))
    for old, new, online in zip(old_target, agent.target_critic.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(new, 0.995 * old + 0.005 * online)
    names = [n for n, _ in agent.target_critic.named_parameters()]
    assert "task_embedding" in names  # the target keeps its own averaged embedding


def test_actor_step_leaves_critic_and_embedding_untouched():
    agent = make_agent()
    before = copy.deepcopy(agent.critic.state_dict())
    actor_before = [p.clone() for p in agent.actor.parameters()]
    agent.actor_step(make_batch(), agent.alpha)
    for k, v in agent.critic.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in agent.critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters()))


def test_critic_step_trains_embedding_and_keeps_it_unit_norm():
    agent = make_agent()
    emb = agent.critic.task_embedding.detach().clone()
    batch = make_batch()
    agent.critic_step(batch, batch.reward, agent.alpha)
    assert not torch.equal(emb, agent.critic.task_embedding.detach())
    torch.testing.assert_close(agent.critic.embed(torch.arange(TASKS)).norm(dim=-1), torch.ones(TASKS))


def test_temperature_moves_toward_target_entropy():
    agent = make_agent()
    a0 = agent.alpha.clone()
    agent.temperature_step(torch.tensor(5.0))  # entropy above target -> alpha shrinks
    assert agent.alpha < a0
    agent = make_agent()
    agent.temperature_step(torch.tensor(-50.0))
    assert agent.alpha > a0
    assert agent.temperature_optimizer.param_groups[0]["betas"] == (0.5, 0.999)


def test_temperature_gradient_is_autograds():
    agent = make_agent()
    with torch.no_grad():
        agent.log_alpha.fill_(-1.3)
    entropy = torch.tensor(0.37)
    log_alpha = agent.log_alpha.detach().clone().requires_grad_()
    (log_alpha.exp() * (entropy - agent.target_entropy)).backward()
    grads = []
    agent.temperature_optimizer.step = lambda: grads.append(agent.log_alpha.grad.clone())
    agent.temperature_step(entropy)
    assert torch.equal(grads[0], log_alpha.grad)


def test_optimizers_cover_all_params_with_weight_decay():
    agent = make_agent()
    g = agent.critic_optimizer.param_groups
    assert len(g) == 1 and g[0]["weight_decay"] == 1e-4 and g[0]["lr"] == 3e-4
    assert {id(p) for p in g[0]["params"]} == {id(p) for p in agent.critic.parameters()}
    g = agent.actor_optimizer.param_groups
    assert {id(p) for p in g[0]["params"]} == {id(p) for p in agent.actor.parameters()}
    assert g[0]["weight_decay"] == 1e-4


def test_critic_loss_uses_projected_soft_target():
    agent = make_agent(fused_ops=False)
    batch = make_batch()
    alpha = agent.alpha
    torch.manual_seed(5)
    with torch.no_grad():
        emb = agent.critic.embed(batch.task_id)
        a, logp = agent.actor.sample(batch.next_obs, emb)
        target, _ = M.categorical_td_target(
            agent.target_critic(batch.next_obs, a, batch.task_id), batch.reward, batch.mask,
            batch.discount, alpha * logp, -10.0, 10.0)
        expected = M.categorical_cross_entropy(agent.critic(batch.obs, batch.action, batch.task_id), target)
    torch.manual_seed(5)
    loss, _, finite = agent.critic_step(batch, batch.reward, alpha)
    torch.testing.assert_close(loss, expected)
    assert finite.all()


def test_single_task_has_no_embedding():
    torch.manual_seed(0)
    agent = BRCAgent(AgentConfig(critic_width=32, actor_width=16), OBS, ACT, 1)
    assert agent.critic.task_embedding is None
    metrics = agent.update(make_batch().__class__(**{**make_batch().__dict__, "task_id": torch.zeros(B, dtype=torch.long)}), torch.ones(1))
    assert torch.isfinite(metrics["critic_loss"])


def test_nonfinite_batch_is_attributed_to_its_task():
    agent = make_agent()
    batch = make_batch()
    batch.task_id[:] = 0
    batch.task_id[3] = 2
    batch.reward[3] = float("nan")
    metrics = agent.update(batch, torch.ones(TASKS))
    assert metrics["nonfinite_per_task"].tolist() == [0.0, 0.0, 1.0]


def test_nonfinite_actor_loss_is_attributed_to_the_tasks_of_its_batch():
    # A critic step that blows the weights up (lr 1e30) leaves the critic loss finite (computed
    # before the step) but the actor loss, on the updated critic, NaN: its samples' tasks must be
    # counted too, else the training loop's error names no task (issue 4, "NaN in a loss").
    agent = make_agent(lr=1e30)
    batch = make_batch()
    batch.task_id[:] = 0
    batch.task_id[:5] = 2
    metrics = agent.update(batch, torch.ones(TASKS))
    assert torch.isfinite(metrics["critic_loss"]) and not torch.isfinite(metrics["actor_loss"])
    assert metrics["nonfinite_per_task"].tolist() == [B - 5.0, 0.0, 5.0]


@pytest.mark.skipif(not fused_ops_available(), reason="mtrl.ops fused kernels not built in this tree")
def test_fused_and_reference_paths_agree():
    results = []
    for fused in (True, False):
        agent = make_agent(fused_ops=fused)
        assert agent.use_fused == fused
        torch.manual_seed(3)
        results.append(agent.update(make_batch(), torch.ones(TASKS)))
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


def test_checkpoint_with_other_network_layout_is_rejected_clearly():
    agent = make_agent()
    state = agent.full_state_dict()
    modules = dict(state["modules"])
    modules["actor.mean.weight"] = modules.pop("actor.head.weight")  # an older actor layout
    with pytest.raises(ValueError, match=r"incompatible checkpoint.*missing: actor.head.weight.*"
                                         r"unexpected: actor.mean.weight"):
        agent.load_full_state_dict({**state, "modules": modules})
    modules = dict(state["modules"])
    modules["critic.head.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="different shape: critic.head.bias"):
        agent.load_full_state_dict({**state, "modules": modules})


def test_partial_checkpoint_and_bad_denominator_are_refused():
    agent = make_agent()
    state = agent.full_state_dict()
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    other = make_agent()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    partial = {k: v for k, v in other.full_state_dict().items() if k != "actor_optimizer"}
    # Loaded the networks, then failed with KeyError: 'actor_optimizer' (half a checkpoint).
    with pytest.raises(ValueError, match="incompatible checkpoint: it lacks actor_optimizer"):
        agent.load_full_state_dict(partial)
    for k, v in agent.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="incompatible checkpoint: expected a dict"):
        agent.load_full_state_dict(None)
    agent.load_full_state_dict(state)
    # A denominator with more entries than tasks was used silently (gathered by task id).
    with pytest.raises(ValueError, match=rf"denominator must have shape \({TASKS},\), got \(5,\)"):
        agent.update(make_batch(), torch.ones(5))


def test_task_ids_out_of_range_are_refused():
    # -1 indexed the last task's embedding and reward denominator silently (torch indexing).
    agent = make_agent()
    batch = make_batch()
    obs = torch.zeros(2, OBS)
    for bad, value in ((torch.tensor([0, -1]), -1), (torch.tensor([0, TASKS]), TASKS)):
        with pytest.raises(ValueError, match=rf"task_id {value} out of range for {TASKS} task"):
            agent.act(obs, bad)
        with pytest.raises(ValueError, match=rf"task_id {value} out of range"):
            agent.update(Batch(**{**vars(batch), "task_id": bad.repeat(B // 2)}), torch.ones(TASKS))
    with pytest.raises(ValueError, match="task_id must be an integer tensor, got torch.float32"):
        agent.act(obs, torch.zeros(2))
    assert agent.act(obs, torch.tensor([0, TASKS - 1])).shape == (2, ACT)


# ---------------------------------------------------------------- AgentConfig.tf32
MATMUL = torch.backends.cuda.matmul


@pytest.fixture
def default_precision():
    """torch's default CUDA matmul precision before and after (the flag is process-global)."""
    MATMUL.fp32_precision = "none"
    yield
    MATMUL.fp32_precision = "none"


def _record_precision(agent: BRCAgent) -> list[tuple[str, str]]:
    """(where, CUDA matmul precision) at every actor/critic forward and at the gradient of their
    first parameters (computed inside backward)."""
    seen = []
    for name, module in (("actor", agent.actor), ("critic", agent.critic)):
        module.register_forward_pre_hook(
            lambda *_, name=name: seen.append((f"{name} forward", MATMUL.fp32_precision)))
        next(module.parameters()).register_hook(
            lambda grad, name=name: seen.append((f"{name} backward", MATMUL.fp32_precision)))
    return seen


def test_tf32_scopes_every_agent_call_and_restores(monkeypatch, default_precision):
    # On the CPU the agent sets nothing and tf32 is refused; the CUDA branch of
    # _matmul_precision is replaced by the real context manager, to check that act, the critic
    # step and the actor step (forwards, backward) all run inside it and nothing leaks out.
    from mtrl.precision import cuda_matmul_precision

    agent = make_agent()
    monkeypatch.setattr(BRCAgent, "_matmul_precision", lambda self: cuda_matmul_precision(True))
    seen = _record_precision(agent)
    agent.update(make_batch(), torch.ones(TASKS))
    assert MATMUL.fp32_precision == "none"
    agent.act(torch.zeros(2, OBS), torch.tensor([0, 1]), deterministic=True)
    assert MATMUL.fp32_precision == "none"
    wheres = {w for w, _ in seen}
    assert wheres == {"actor forward", "critic forward", "actor backward", "critic backward"}
    assert all(p == "tf32" for _, p in seen), seen


# Dynamo warns when it wraps the actor's action (a non-leaf input of the compiled critic in the
# actor loss) and reads its .grad (as in test_bf16_cpu); nothing about precision.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_critic_under_tf32_compiles_as_often_as_float32(monkeypatch, default_precision):
    # Dynamo reads the CUDA matmul precision (a guard of every compiled graph, and state it
    # restores after tracing): the critic compiled and run inside the agent's TF32 scope (the
    # CUDA branch simulated as above) trains, compiles as many graphs as a float32 agent, so no
    # graph is compiled twice for two precisions, and later updates reuse them.
    from torch._dynamo.utils import counters

    from mtrl.precision import cuda_matmul_precision

    graphs = []
    for tf32 in (False, True):
        torch._dynamo.reset()
        counters.clear()
        agent = make_agent(compile=True)
        if tf32:
            monkeypatch.setattr(BRCAgent, "_matmul_precision",
                                lambda self: cuda_matmul_precision(True))
        counts = []
        for seed in range(3):
            metrics = agent.update(make_batch(seed), torch.ones(TASKS))
            assert all(torch.isfinite(v).all() for v in metrics.values())
            counts.append(counters["stats"]["unique_graphs"])
        assert counts[0] == counts[-1], counts  # no recompilation after the first update
        graphs.append(counts[-1])
        assert MATMUL.fp32_precision == "none"
    torch._dynamo.reset()
    assert graphs[0] > 0 and graphs[1] == graphs[0], graphs


def test_float32_agent_on_cpu_sets_no_flag(default_precision):
    agent = make_agent()
    MATMUL.fp32_precision = "tf32"  # a caller's TF32 is left alone on the CPU (CUDA-only flag)
    seen = _record_precision(agent)
    agent.update(make_batch(), torch.ones(TASKS))
    assert seen and all(p == "tf32" for _, p in seen)
    assert MATMUL.fp32_precision == "tf32"


def test_tf32_on_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"AgentConfig.tf32 needs a CUDA device, and this agent "
                                         r"runs on cpu.*Leave tf32 off here"):
        make_agent(tf32=True)
    make_agent(tf32=False)


def test_tf32_cpu_agent_built_where_cuda_exists_is_refused_at_first_use(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # skips the construction check
    agent = make_agent(tf32=True)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="AgentConfig.tf32 needs a CUDA device.*runs on cpu"):
        agent.act(torch.zeros(2, OBS), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="AgentConfig.tf32 needs a CUDA device"):
        agent.update(make_batch(), torch.ones(TASKS))


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and mtrl.cuda_available()),
                    reason="needs a CUDA device and mtrl built with CUDA")
@pytest.mark.parametrize("tf32,bf16", [(False, False), (True, False), (True, True)])
def test_cuda_agent_runs_in_its_precision(tf32, bf16, default_precision):
    MATMUL.fp32_precision = "ieee" if tf32 else "tf32"  # the caller's is the other one
    torch.manual_seed(0)
    agent = BRCAgent(AgentConfig(critic_width=32, actor_width=16, tf32=tf32, bf16=bf16), OBS,
                     ACT, TASKS).cuda()
    seen = _record_precision(agent)
    batch = Batch(**{k: v.cuda() for k, v in vars(make_batch()).items()})
    metrics = agent.update(batch, torch.ones(TASKS, device="cuda"))
    agent.act(batch.obs, batch.task_id)
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert {p for _, p in seen} == {"tf32" if tf32 else "ieee"}
    assert MATMUL.fp32_precision == ("ieee" if tf32 else "tf32")


# Dynamo warns when it wraps the actor's action (a non-leaf input of the compiled critic in the
# actor loss) and reads its .grad (the same filter as tests/test_bf16_cpu.py).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compile_option_compiles_the_critics_and_matches_eager():
    # AgentConfig.compile in float32 (the bf16 + compile test skips on CPUs without native bf16):
    # the online and target critic forwards are compiled, the actor is not, and one update gives
    # what the eager agent gives (the compiled critic is the composed ops, the eager one the
    # fused CPU node: equal up to float rounding). (~10 s of compilation.)
    eager, compiled = make_agent(), make_agent(compile=True)
    assert compiled._critic_fwd is not compiled.critic
    assert compiled._target_fwd is not compiled.target_critic
    assert eager._critic_fwd is eager.critic
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    batch = make_batch()
    for agent in (eager, compiled):
        torch.manual_seed(5)
        agent.update(batch, torch.ones(TASKS))
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


def test_fused_ops_are_used_on_cuda_only_where_their_kernels_were_built(monkeypatch):
    # A build that found no nvcc is CPU-only: a CUDA agent reached _core._td_target_cuda, which
    # raised "mtrl was built without CUDA" at the first update, after the warm-up.
    import mtrl.agent as agent_module

    agent = BRCAgent(AgentConfig(critic_width=16, actor_width=16), OBS, ACT, 1)
    assert agent.use_fused
    cpu, elsewhere = torch.zeros(1), torch.zeros(1, device="meta")
    for built in (False, True):
        monkeypatch.setattr(agent_module, "_cuda_kernels_built", lambda built=built: built)
        assert agent._fused_on(cpu)
        assert agent._fused_on(elsewhere) == built
