"""Configs: validation, presets, task sets (brc-spec §2.1, §9.1)."""

import dataclasses

import pytest

import mtrl.envs
from mtrl.config import (AgentConfig, BufferConfig, EnvConfig, TrainConfig, group_tasks,
                         laptop_preset, paper_preset, resolve_tasks)


def test_paper_preset_is_the_released_configuration():
    cfg = paper_preset()
    assert cfg.agent.critic_width == 4096 and cfg.agent.critic_depth == 2
    assert cfg.buffer.resolved_batch_size(7) == 1024 and cfg.buffer.resolved_batch_size(1) == 256
    assert cfg.updates_per_iteration == 2 and cfg.random_iterations == 5000
    assert cfg.buffer.capacity_per_task == 1_000_000
    assert cfg.eval_interval == 50_000 and cfg.eval_episodes == 10
    a = cfg.agent
    assert (a.lr, a.weight_decay, a.tau, a.gamma, a.init_temperature, a.temperature_beta1) == (
        3e-4, 1e-4, 0.005, 0.99, 0.1, 0.5)
    assert (a.num_atoms, a.v_min, a.v_max, a.embedding_dim, a.actor_width) == (101, -10, 10, 32, 256)


def test_tensorboard_by_default_wandb_only_when_asked():
    # Issue 4: TensorBoard by default, W&B only when asked, in both presets.
    for cfg in (paper_preset(), laptop_preset()):
        assert cfg.tensorboard and not cfg.wandb


def test_frozen_and_validated():
    cfg = laptop_preset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        BufferConfig(batch_size=0)
    with pytest.raises(ValueError, match="gamma"):
        AgentConfig(gamma=1.0)
    with pytest.raises(ValueError, match="iterations must be > 0"):
        TrainConfig(iterations=0)
    with pytest.raises(ValueError, match="at least one task"):
        EnvConfig(tasks=())


def test_task_sets_resolve():
    avail = mtrl.envs.available_tasks()
    hard = resolve_tasks(("dmc-hard",), avail)
    assert hard == ["dmc:dog-stand", "dmc:dog-walk", "dmc:dog-trot", "dmc:dog-run",
                    "dmc:humanoid-stand", "dmc:humanoid-walk", "dmc:humanoid-run"]
    mt30 = resolve_tasks(("dmc-mt30",), avail)
    assert len(mt30) == 30 == len(set(mt30))
    mt10 = resolve_tasks(("metaworld-mt10",), avail)
    assert len(mt10) == 10 and all(t.startswith("metaworld:") for t in mt10)
    mt50 = resolve_tasks(("metaworld-mt50",), avail)
    assert len(mt50) == 50
    assert resolve_tasks(("cheetah-run", "dmc:walker-walk"), avail) == ["dmc:cheetah-run", "dmc:walker-walk"]
    assert len(resolve_tasks(("laptop",), avail)) == 4


def test_group_tasks_by_the_task_set_they_came_from():
    # The logger draws a curve PNG per task set from these groups (issue 4).
    avail = mtrl.envs.available_tasks()
    names = ("laptop", "cheetah-run", "dmc-hard", "dmc:hopper-hop")
    groups = group_tasks(names, avail)
    assert list(groups) == ["laptop", "other", "dmc-hard"]  # order of first appearance
    laptop, hard = resolve_tasks(("laptop",), avail), resolve_tasks(("dmc-hard",), avail)
    assert groups == {"laptop": laptop, "other": ["dmc:cheetah-run", "dmc:hopper-hop"],
                      "dmc-hard": hard}
    # The run's task order (engine, checkpoints) is not the groups' order: it stays as listed.
    assert resolve_tasks(names, avail) == [*laptop, "dmc:cheetah-run", *hard, "dmc:hopper-hop"]
    assert group_tasks(("laptop",), avail) == {"laptop": laptop}
    assert group_tasks(("cheetah-run", "walker-walk"), avail) == {
        "other": ["dmc:cheetah-run", "dmc:walker-walk"]}
    # The same checks as resolve_tasks: a task in a set and named again is refused.
    with pytest.raises(ValueError, match="listed more than once: dmc:walker-walk"):
        group_tasks(("laptop", "walker-walk"), avail)
    with pytest.raises(ValueError, match="unknown task 'chetah-run'"):
        group_tasks(("laptop", "chetah-run"), avail)


def test_task_errors():
    avail = mtrl.envs.available_tasks()
    with pytest.raises(ValueError, match=r"unknown task 'chetah-run'.*dmc:cheetah-run"):
        resolve_tasks(("chetah-run",), avail)
    with pytest.raises(ValueError, match="more than once"):
        resolve_tasks(("cheetah-run", "dmc:cheetah-run"), avail)
    # A misspelled task set is suggested as the set, not only as look-alike task names.
    with pytest.raises(ValueError, match=r"unknown task 'dmc-hardd'; close names: dmc-hard "
                                         r"\(task set\), dmc:"):
        resolve_tasks(("dmc-hardd",), avail)
    with pytest.raises(ValueError, match=r"close names: dmc-mt30 \(task set\)"):
        resolve_tasks(("dmc_mt30",), avail)
    with pytest.raises(ValueError, match=r"close names: none; see mtrl.envs.available_tasks\(\) "
                                         r"and the task sets dmc-hard, dmc-mt30"):
        resolve_tasks(("zzzzqqqq",), avail)


def _flat(obj, prefix=""):
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flat(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def test_laptop_preset_changes_only_scale_and_schedule_fields():
    # The laptop preset may pick tasks, size and schedule (README "Quick start"), never the method:
    # gamma, tau, learning rates of actor/critic, weight decay, support, temperature init/beta1
    # and the update count per iteration stay the released values (spec §2.1).
    paper, laptop = _flat(paper_preset()), _flat(laptop_preset())
    changed = {k for k in paper if paper[k] != laptop[k]}
    allowed = {"env.tasks", "agent.critic_width", "agent.temperature_lr", "buffer.capacity_per_task",
               "buffer.batch_size", "iterations", "random_iterations", "eval_interval",
               "eval_episodes", "log_interval", "checkpoint_interval", "run_dir", "torch_threads"}
    assert changed <= allowed, sorted(changed - allowed)


def test_non_finite_and_out_of_range_values_are_refused():
    # lr=inf or init_temperature=inf used to pass and fail as a non-finite loss after warm-up;
    # v_max=1e39 failed deep in torch; num_atoms=5000 only at the first fused update.
    for field_name in ("lr", "temperature_lr", "init_temperature"):
        with pytest.raises(ValueError, match=rf"AgentConfig.{field_name} must be finite and > 0"):
            AgentConfig(**{field_name: float("inf")})
    with pytest.raises(ValueError, match=r"AgentConfig.weight_decay must be finite and >= 0"):
        AgentConfig(weight_decay=float("nan"))
    with pytest.raises(ValueError, match=r"AgentConfig.v_min and v_max must be finite with "
                                         r"\|v\| <= 1e\+38"):
        AgentConfig(v_min=-1e39, v_max=1e39)
    with pytest.raises(ValueError, match=r"AgentConfig.v_min and v_max"):
        AgentConfig(v_min=float("nan"))
    with pytest.raises(ValueError, match=r"num_atoms <= 4096.*no-fused-ops"):
        AgentConfig(num_atoms=5000)
    assert AgentConfig(num_atoms=5000, fused_ops=False).num_atoms == 5000
    for seed in (-1, 2**70):
        with pytest.raises(ValueError, match=r"TrainConfig.seed must be in \[0, 2\*\*62\]"):
            TrainConfig(seed=seed)


def test_values_that_broke_the_reward_scale_or_run_dir_are_refused():
    # v_max is also the normaliser's V_max (D = (G - ...) / V_max): 0 made every reward 0 and a
    # negative one flipped their signs, silently. A temperature outside float32's range became
    # 0 or inf in log_alpha. run_dir "" wrote the run into the current directory.
    for v_min, v_max in ((-10.0, 0.0), (-20.0, -1.0)):
        with pytest.raises(ValueError, match=r"AgentConfig.v_max must be > 0.*§4.2"):
            AgentConfig(v_min=v_min, v_max=v_max)
    for temperature in (1e-320, 1e40):
        with pytest.raises(ValueError, match=r"AgentConfig.init_temperature must be in"):
            AgentConfig(init_temperature=temperature)
    assert AgentConfig(v_min=-1.0, v_max=1e-3).v_max == 1e-3
    for run_dir in ("", "  "):
        with pytest.raises(ValueError, match="TrainConfig.run_dir must name a directory"):
            TrainConfig(run_dir=run_dir)


def test_torch_threads_range():
    # torch.set_num_threads takes any count, and a huge one aborts the process later when
    # libgomp fails to create the threads; the config refuses it up front.
    for threads in (-1, 4097, 10**5):
        with pytest.raises(ValueError, match=r"TrainConfig.torch_threads must be in \[0, 4096\]"):
            TrainConfig(torch_threads=threads)
    assert TrainConfig(torch_threads=4096).torch_threads == 4096
