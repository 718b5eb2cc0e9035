"""End to end: ``python -m mtrl.train`` smoke run, checkpoints, resume, signals, errors."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("mtrl.replay", reason="needs the replay buffer component (mtrl.replay)")

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import mtrl.envs  # noqa: E402
from mtrl import checkpoint as ckpt  # noqa: E402
from mtrl.config import AgentConfig, BufferConfig, EnvConfig, TrainConfig  # noqa: E402
from mtrl.fused_bronet import cpu_bf16_features  # noqa: E402
from mtrl.train import main, train  # noqa: E402

TINY = ["--agent.critic-width", "32", "--agent.actor-width", "32", "--buffer.batch-size", "64",
        "--buffer.capacity-per-task", "1000", "--env.max-episode-steps", "50",
        "--eval-episodes", "2", "--torch-threads", "1", "--progress", "lines", "--no-tensorboard"]


def tiny_config(run_dir, **kw):
    base = dict(
        env=EnvConfig(tasks=("cartpole-balance", "walker-stand"), max_episode_steps=50),
        agent=AgentConfig(critic_width=32, actor_width=32),
        buffer=BufferConfig(capacity_per_task=1000, batch_size=64),
        iterations=120, random_iterations=40, eval_interval=60, eval_episodes=2, log_interval=20,
        checkpoint_interval=60, run_dir=str(run_dir), progress="lines", tensorboard=False, torch_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_smoke_cli_300_iterations(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtrl.train", "--env.tasks", "cartpole-balance", "walker-stand",
           "--iterations", "300", "--random-iterations", "100", "--log-interval", "50",
           "--eval-interval", "150", "--checkpoint-interval", "100", "--tensorboard",
           "--run-dir", str(run), *TINY[:-1]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "finished at iteration 300" in res.stdout
    # plain progress lines (no TTY): env steps, iterations/s, updates/s, last eval (issue 4)
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("[mtrl] iteration 300 "))
    for key in ("env_steps=600", "it/s=", "upd/s=", "eval="):
        assert key in line, (key, line)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved_tasks"] == ["dmc:cartpole-balance", "dmc:walker-stand"]
    assert cfg["agent"]["critic_width"] == 32
    train_rows = read_csv(run / "train.csv")
    assert [int(r["iteration"]) for r in train_rows] == list(range(50, 301, 50))
    last = train_rows[-1]
    assert float(last["train/updates"]) == 2 * 200
    for key in ("critic_loss", "actor_loss", "alpha", "entropy", "q_mean"):
        assert math.isfinite(float(last[f"train/{key}"])), key
    evals = read_csv(run / "eval.csv")
    assert [int(r["iteration"]) for r in evals] == [150, 300]
    assert "eval/dmc:walker-stand/return" in evals[0] and "eval/return_mean" in evals[0]
    for r in evals:  # DMC score = return / 1000 (spec §9.3)
        assert float(r["eval/dmc:walker-stand/score"]) == pytest.approx(
            float(r["eval/dmc:walker-stand/return"]) / 1000)
        assert 0 <= float(r["eval/dmc:walker-stand/success"]) <= 1
    assert (run / "curves.png").stat().st_size > 0
    assert [p.name for p in run.glob("*.png")] == ["curves.png"]  # task names only: one group
    assert any((run / "tb").iterdir())
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["iter_000000200", "iter_000000300"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(ln)["kind"] for ln in lines} == {"train", "eval"}


def test_help_documents_fields():
    res = subprocess.run([sys.executable, "-m", "mtrl.train", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0
    for flag in ("--agent.critic-width", "--buffer.batch-size", "--env.tasks", "--resume",
                 "--preset", "Critic BroNet width", "--agent.tf32, --agent.no-tf32",
                 "JAX's default matmul"):
        assert flag in res.stdout, flag
    # The usage line shows the command a user types, not the path of mtrl/train.py.
    usage = [line for line in res.stdout.splitlines() if line.startswith("usage:")]
    assert usage and usage[0].startswith("usage: python -m mtrl.train [-h]"), usage

def _field_docstrings():
    """{(class name, field): docstring} of the config dataclasses, read from mtrl/config.py."""
    import ast

    import mtrl.config
    tree = ast.parse(Path(mtrl.config.__file__).read_text())
    docs = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for st, nxt in zip(node.body, node.body[1:] + [None]):
                if isinstance(st, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(
                        getattr(nxt, "value", None), ast.Constant):
                    docs[(node.name, st.target.id)] = nxt.value.value
    return docs


def test_help_documents_every_field():
    # Issue 4: `--help` documents every field. Every leaf field of TrainConfig has a docstring,
    # and --help shows its flag followed by that text (the table's borders and wrapping removed).
    import dataclasses
    import re

    res = subprocess.run([sys.executable, "-m", "mtrl.train", "--help"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})
    assert res.returncode == 0, res.stderr[-2000:]
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.stdout).split())
    docs = _field_docstrings()

    def leaves(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory if callable(f.default_factory) else None):
                yield from leaves(f.default_factory, f"{prefix}{f.name}.")
            else:
                yield cls.__name__, f.name, f"--{prefix}{f.name.replace('_', '-')}"

    found = list(leaves(TrainConfig))
    assert len(found) >= 40
    for cls, name, flag in found:
        doc = docs.get((cls, name))
        assert doc, f"{cls}.{name} has no docstring"
        assert flag in text, flag
        after = text[text.index(flag):]
        assert " ".join(doc.split()) in after[:len(doc) + 200], (flag, doc)


def test_checkpoint_contents_and_resume_continues(tmp_path):
    cfg = tiny_config(tmp_path / "r")
    out = train(cfg.replace(iterations=60))
    assert out["iteration"] == 60
    state = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path / "r")[-1])
    for key in ("agent", "normalizer", "rng", "iteration", "updates", "config", "env_state"):
        assert key in state
    for key in ("modules", "critic_optimizer", "actor_optimizer", "temperature_optimizer"):
        assert key in state["agent"]
    assert any(k.startswith("target_critic.") for k in state["agent"]["modules"])
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    out = train(cfg.replace(resume=True))
    assert out["iteration"] == 120 and out["updates"] == 2 * 80
    rows = read_csv(tmp_path / "r" / "train.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(20, 121, 20))


def _backend_with_state():
    if "engine" not in getattr(mtrl.envs, "BACKENDS", ()):
        pytest.skip("exact resume needs an env backend with get_state (the C++ engine); "
                    "envpool exposes no physics/RNG state")
    return "engine"


_NATIVE_BF16 = any(cpu_bf16_features().values())


@pytest.mark.parametrize("bf16", [False, pytest.param(True, marks=pytest.mark.skipif(
    not _NATIVE_BF16, reason="CPU without AMX-BF16 / AVX512-BF16"))])
def test_resume_reproduces_uninterrupted_run(tmp_path, bf16):
    backend = _backend_with_state()
    env = EnvConfig(tasks=("cartpole-balance", "walker-stand"), max_episode_steps=50, backend=backend)
    agent = AgentConfig(critic_width=32, actor_width=32, bf16=bf16)
    full = tiny_config(tmp_path / "full", env=env, agent=agent, checkpoint_interval=50)
    train(full)
    part = tiny_config(tmp_path / "part", env=env, agent=agent, checkpoint_interval=50)
    train(part.replace(iterations=70))  # checkpoints at 50 and 70
    train(part.replace(resume=True))
    a, b = read_csv(tmp_path / "full" / "train.csv"), read_csv(tmp_path / "part" / "train.csv")
    keys = [k for k in a[0] if not k.endswith("_per_s")]
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    full_eval = read_csv(tmp_path / "full" / "eval.csv")
    part_eval = read_csv(tmp_path / "part" / "eval.csv")  # also holds the stopped run's final eval at 70
    assert [r["iteration"] for r in part_eval] == ["60", "70", "120"]
    assert full_eval == [r for r in part_eval if r["iteration"] != "70"]


def test_resume_from_a_checkpoint_with_a_version_1_replay(tmp_path):
    # Checkpoints written before replay format 2 hold the replay at full capacity (version 1):
    # they still resume, to the same run as an uninterrupted one.
    from mtrl.replay import ReplayBuffer

    env = EnvConfig(tasks=("cartpole-balance", "walker-stand"), max_episode_steps=50,
                    backend=_backend_with_state())
    full = tiny_config(tmp_path / "full", env=env, iterations=90, eval_interval=45,
                       checkpoint_interval=45)
    train(full)
    part = tiny_config(tmp_path / "part", env=env, iterations=45, eval_interval=45,
                       checkpoint_interval=45)
    train(part)
    replay = ckpt.list_checkpoints(tmp_path / "part")[-1] / "replay"
    assert np.load(replay / "obs.npy").shape[0] == 2 * 45  # version 2: the stored rows
    ReplayBuffer.load(replay).save(replay, version=1)
    assert json.loads((replay / "meta.json").read_text())["version"] == 1
    assert np.load(replay / "obs.npy").shape[0] == 2 * 1000  # every slot
    train(part.replace(iterations=90, resume=True))
    a, b = read_csv(tmp_path / "full" / "train.csv"), read_csv(tmp_path / "part" / "train.csv")
    keys = [k for k in a[0] if not k.endswith("_per_s")]
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert read_csv(tmp_path / "full" / "eval.csv") == read_csv(tmp_path / "part" / "eval.csv")


def test_sigterm_writes_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "sig"
    cmd = [sys.executable, "-m", "mtrl.train", "--env.tasks", "cartpole-balance", "walker-stand",
           "--iterations", "100000", "--random-iterations", "50", "--log-interval", "10",
           "--eval-interval", "100000", "--checkpoint-interval", "0", "--run-dir", str(run), *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "train.csv").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM" in out
    found = ckpt.list_checkpoints(run)
    assert len(found) == 1
    it = int(found[0].name.split("_")[1])
    assert 10 <= it < 100000
    assert ckpt.load_checkpoint(found[0])["iteration"] == it


def test_unknown_task_lists_close_names(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown task 'cartpole-balanse'.*dmc:cartpole-balance"):
        train(tiny_config(tmp_path, env=EnvConfig(tasks=("cartpole-balanse",))))
    assert main(["--env.tasks", "walker-wlak", "--run-dir", str(tmp_path)]) == 2
    assert "dmc:walker-walk" in capsys.readouterr().err


def test_incompatible_checkpoint_names_field(tmp_path):
    cfg = tiny_config(tmp_path / "r", iterations=60)
    train(cfg)
    bad = cfg.replace(resume=True, iterations=120, agent=AgentConfig(critic_width=64, actor_width=32))
    with pytest.raises(ValueError, match=r"agent.critic_width.*32.*64"):
        train(bad)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        train(cfg.replace(resume=True, run_dir=str(tmp_path / "empty")))


def test_impossible_config(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size 64 is larger than the 20 transitions"):
        train(tiny_config(tmp_path, random_iterations=9))
    with pytest.raises(ValueError, match="critic_width must be > 0"):
        AgentConfig(critic_width=0)
    with pytest.raises(ValueError, match="v_min"):
        AgentConfig(v_min=1.0, v_max=-1.0)


def test_nan_loss_names_tasks(tmp_path):
    cfg = tiny_config(tmp_path, agent=AgentConfig(critic_width=32, actor_width=32, lr=1e30))
    # lr 1e30: the first critic step blows the critic up, so the actor loss on it is NaN; the
    # error names the tasks of that batch (both here), not "none".
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration \d+.*actor_loss"
                                                 r".*from task\(s\) \['dmc:cartpole-balance', "
                                                 r"'dmc:walker-stand'\]"):
        train(cfg)


class _NeverEndingEnv(gymnasium.Env):
    """A task with no time limit that never terminates."""

    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 1.0, False, False, {}


def test_evaluate_ends_on_a_task_without_time_limit():
    from mtrl.agent import BRCAgent
    from mtrl.train import EVAL_STEP_LIMIT, evaluate

    gymnasium.register("MtrlNeverEnds-v0", entry_point=_NeverEndingEnv)
    with mtrl.envs.make(["gym:MtrlNeverEnds-v0"]) as pool:
        assert int(pool.max_episode_steps[0]) == 0
        agent = BRCAgent(AgentConfig(critic_width=16, actor_width=16), pool.obs_dim,
                         pool.action_dim, 1)
        result = evaluate(agent, pool, pool.task_names, torch.device("cpu"), seed=0)
    assert result["gym:MtrlNeverEnds-v0/return"] == EVAL_STEP_LIMIT


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_sets_glibc_thresholds():
    import platform

    from mtrl.train import keep_freed_memory
    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")


def test_fresh_run_refuses_a_run_dir_that_holds_a_run(tmp_path):
    # A second run without --resume in the same run_dir deleted the first run's train.csv,
    # eval.csv and metrics.jsonl and mixed its checkpoints with the new run's.
    (tmp_path / "metrics.jsonl").write_text('{"kind": "eval", "iteration": 5}\n')
    with pytest.raises(ValueError, match=r"already holds a run \(metrics.jsonl\); it has no "
                                         r"checkpoint to resume from: delete them"):
        train(tiny_config(tmp_path))
    assert (tmp_path / "metrics.jsonl").read_text() == '{"kind": "eval", "iteration": 5}\n'
    assert not (tmp_path / "config.json").exists()
    # TensorBoard's files alone (a run killed before its first checkpoint, its CSV and JSONL
    # files deleted as the message says): a new run's events would be shown as the same run.
    tb_only = tmp_path / "tb_only"
    (tb_only / "tb").mkdir(parents=True)
    (tb_only / "tb" / "events.out.tfevents.1.host").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"already holds a run \(tb\); it has no checkpoint"):
        train(tiny_config(tb_only))
    other = tmp_path / "other"
    (other / "checkpoints" / "iter_000000010").mkdir(parents=True)
    (other / "checkpoints" / "iter_000000010" / "state.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoints\); pass --resume"):
        train(tiny_config(other))


def test_resume_from_a_damaged_checkpoint_names_it(tmp_path):
    cfg = tiny_config(tmp_path / "r", iterations=60, checkpoint_interval=30, eval_interval=60)
    train(cfg)
    first, latest = ckpt.list_checkpoints(tmp_path / "r")
    replay = latest / "replay"
    replay.rename(tmp_path / "replay")
    with pytest.raises(ValueError,
                       match=rf"cannot resume from {latest}: replay buffer: .*meta.json.*: "
                             rf"move it out of .*the one before it is {first.name}$"):
        train(cfg.replace(resume=True, iterations=90))
    (tmp_path / "replay").rename(replay)
    data = (latest / "state.pt").read_bytes()
    for damaged in (data[:100], b"", b"not a checkpoint"):
        (latest / "state.pt").write_bytes(damaged)
        with pytest.raises(ValueError, match=rf"checkpoint {latest} is unreadable .*{first.name}"):
            train(cfg.replace(resume=True, iterations=90))
    # No state.pt at all (a copy of the run dir cut short): named too, not skipped for the one
    # before it (which quietly rewound the run).
    (latest / "state.pt").unlink()
    with pytest.raises(ValueError, match=rf"checkpoint {latest} is unreadable \(it has no "
                                         rf"state.pt\).*{first.name}"):
        train(cfg.replace(resume=True, iterations=90))
    (latest / "state.pt").write_bytes(data)
    # Fewer iterations than the checkpoint holds: the run ended at once and its config.json said
    # the smaller number.
    config = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(ValueError, match=rf"--iterations 50 is below the iteration of the "
                                         rf"checkpoint to resume \({latest.name}, iteration 60\)"):
        train(cfg.replace(resume=True, iterations=50))
    assert (tmp_path / "r" / "config.json").read_text() == config
    # A changed batch size is named by its flag's field, not by the derived "batch_size".
    with pytest.raises(ValueError, match=r"config field 'buffer.batch_size' is 64"):
        train(cfg.replace(resume=True, buffer=BufferConfig(capacity_per_task=1000, batch_size=16)))


def test_the_earlier_checkpoint_hint_names_a_readable_one(tmp_path):
    from mtrl.train import _earlier_checkpoint_hint

    root = tmp_path / "checkpoints"
    for it, readable in ((10, True), (20, False), (30, False)):
        (root / f"iter_{it:09d}").mkdir(parents=True)
        if readable:
            (root / f"iter_{it:09d}" / "state.pt").write_bytes(b"x")
    found = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["iter_000000010", "iter_000000020", "iter_000000030"]
    assert _earlier_checkpoint_hint(found).endswith("the one before it is iter_000000010")
    assert "before it" not in _earlier_checkpoint_hint(found[1:])


def test_cpu_runs_neither_save_nor_restore_cuda_generators(monkeypatch):
    # A CPU run draws nothing from CUDA generators: saving all of them made a checkpoint from a
    # machine with more GPUs fail to resume elsewhere. Any CUDA RNG call here is a failure.
    from mtrl import train as train_module

    def no_cuda(*args, **kwargs):
        raise AssertionError("a CPU run touched a CUDA generator")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    rng = np.random.default_rng(3)
    state = train_module._rng_state(rng, torch.device("cpu"))
    assert "cuda" not in state
    expected = rng.uniform(size=4)
    older = {**state, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 3}  # old layout: all GPUs
    train_module._set_rng_state(older, rng, torch.device("cpu"))
    np.testing.assert_array_equal(rng.uniform(size=4), expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_of_the_run_device_round_trips():
    from mtrl import train as train_module

    device = torch.device("cuda")
    rng = np.random.default_rng(0)
    state = train_module._rng_state(rng, device)
    expected = torch.rand(8, device=device)
    train_module._set_rng_state(state, rng, device)
    torch.testing.assert_close(torch.rand(8, device=device), expected, rtol=0, atol=0)
    # An older checkpoint's list of every GPU's state, longer than this machine has GPUs.
    own = torch.cuda.get_rng_state()
    expected = torch.rand(8, device=device)
    older = {**state, "cuda": [own] + [own] * torch.cuda.device_count()}
    train_module._set_rng_state(older, rng, device)
    torch.testing.assert_close(torch.rand(8, device=device), expected, rtol=0, atol=0)


def test_a_closed_stdout_is_no_error():
    # `mtrl-train --help | head -1`: the closed pipe was reported as "error: [Errno 32]". A
    # one-page pipe holds less than the help (~14 kB), so the writer meets the closed end.
    import fcntl

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ (Linux)
    proc = subprocess.Popen([sys.executable, "-m", "mtrl.train", "--help"], stdout=write_end,
                            stderr=subprocess.PIPE)
    os.close(write_end)
    assert os.read(read_end, 100)
    os.close(read_end)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert "error" not in err.lower() and "Traceback" not in err, err


def test_networks_too_large_for_memory_are_refused_before_allocation(tmp_path, monkeypatch):
    # Widths with no upper bound reached torch's allocator (a traceback; at 10^8 the process
    # grew past 5 GB ignoring SIGTERM). The check needs no allocation to refuse them.
    for width in (10**8, 2**63):
        cfg = tiny_config(tmp_path / "w", agent=AgentConfig(critic_width=width, actor_width=32))
        with pytest.raises(ValueError, match=rf"networks need at least .* GiB \(critic_width="
                                             rf"{width}.*free on cpu"):
            train(cfg)
    # A size that fits here, refused when the machine has less free (the rule, not the host).
    from mtrl import _core as core
    monkeypatch.setattr(core, "_available_memory_bytes", lambda: 10**4)
    with pytest.raises(ValueError, match=r"critic_width=32.*free on cpu"):
        train(tiny_config(tmp_path / "s"))
    assert not (tmp_path / "s" / "checkpoints").exists()


def test_bad_device_and_run_dir_are_errors_not_tracebacks(tmp_path, capsys):
    from mtrl.train import resolve_device

    for name in ("tpu", "cuda:x"):
        with pytest.raises(ValueError, match=rf"device {name!r} is not a torch device"):
            resolve_device(name)
    for name in ("meta", "mps", "xpu"):  # torch devices, but mtrl's ops and agent need cpu/cuda
        with pytest.raises(ValueError, match=rf"device {name!r}: mtrl runs on cpu or cuda"):
            resolve_device(name)
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match=r"run_dir .*afile exists and is not a directory"):
        train(tiny_config(afile))
    assert main([*TINY, "--env.tasks", "cartpole-balance", "--run-dir", str(afile / "x")]) == 2
    assert "Not a directory" in capsys.readouterr().err


def test_checkpoint_keep_and_listing(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1"):
        ckpt.save_checkpoint(tmp_path, 1, {"iteration": 1}, lambda p: p.mkdir(), 0)
    ckpt.save_checkpoint(tmp_path, 1, {"iteration": 1}, lambda p: p.mkdir(), 2)
    (tmp_path / "checkpoints" / "iter_abc").mkdir()
    (tmp_path / "checkpoints" / "iter_abc" / "state.pt").write_bytes(b"")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["iter_000000001"]
    # A second checkpoint of the same iteration (the signal save after a periodic one) is
    # swapped in whole; a failing one leaves the first as it was; no temp dirs are left.
    ckpt.save_checkpoint(tmp_path, 1, {"iteration": 1, "config": 2}, lambda p: p.mkdir(), 2)

    def full_disk(path):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 1, {}, full_disk, 2)
    (only,) = ckpt.list_checkpoints(tmp_path)
    assert ckpt.load_checkpoint(only)["config"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000000001",
                                                                           "iter_abc"]


def test_tf32_on_a_cpu_device_is_refused_before_the_envs_start(tmp_path, monkeypatch, capsys):
    import mtrl.train

    def no_envs(*args, **kwargs):
        raise AssertionError("environments were built before the device check")
    monkeypatch.setattr(mtrl.envs, "make", no_envs)
    for device in ("cpu", "auto") if not torch.cuda.is_available() else ("cpu",):
        with pytest.raises(ValueError, match=rf"AgentConfig.tf32 needs a CUDA device, and this "
                                             rf"run's device is cpu \(--device {device}\)"):
            train(tiny_config(tmp_path / device, device=device,
                              agent=AgentConfig(critic_width=32, actor_width=32, tf32=True)))
    assert not (tmp_path / "cpu").exists()  # refused before the run dir was written
    assert mtrl.train.main([*TINY, "--agent.tf32", "--device", "cpu",
                            "--run-dir", str(tmp_path / "cli")]) == 2
    assert "AgentConfig.tf32 needs a CUDA device" in capsys.readouterr().err


def test_resume_allows_tf32_and_bf16_to_change_but_not_shapes():
    saved = {"agent": {"critic_width": 32, "bf16": False, "tf32": False}, "seed": 0}
    ckpt.check_compatible(saved, {"agent": {"critic_width": 32, "bf16": True, "tf32": True},
                                  "seed": 0})
    older = {"agent": {"critic_width": 32, "bf16": False}, "seed": 0}  # written before tf32 existed
    ckpt.check_compatible(older, {"agent": {"critic_width": 32, "bf16": False, "tf32": True},
                                  "seed": 0})
    with pytest.raises(ValueError, match="'agent.critic_width' is 32 in the checkpoint but 64"):
        ckpt.check_compatible(saved, {"agent": {"critic_width": 64, "bf16": False, "tf32": True},
                                      "seed": 0})


# ----------------------------------------------------------------------------- signals at startup


def _interrupt_startup(run, stage, sig, *args):
    """Runs the CLI until its startup pauses at ``stage`` (a test hook), sends ``sig``; returns
    (exit status, stderr after the pause line)."""
    from mtrl._startup import PAUSE_ENV

    cmd = [sys.executable, "-m", "mtrl.train", "--env.tasks", "cartpole-balance", "walker-stand",
           "--run-dir", str(run), *TINY, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, PAUSE_ENV: stage})
    watchdog = threading.Timer(120, proc.kill)  # a hang fails the test instead of blocking it
    watchdog.start()
    try:
        before = []
        for line in proc.stderr:  # everything up to the pause line
            if line == f"mtrl.train: startup paused at {stage} ({PAUSE_ENV})\n":
                break
            before.append(line)
        else:
            raise AssertionError(f"startup never paused at {stage}: {''.join(before)[-3000:]}")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return proc.returncode, err


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("stage", ["imports", "ready"])
def test_sigterm_during_startup_exits_143_with_one_line(tmp_path, stage):
    # "imports": before the package imports torch; "ready": envs, agent and replay built.
    code, err = _interrupt_startup(tmp_path / "run", stage, signal.SIGTERM, "--iterations", "2",
                                   "--random-iterations", "2")
    assert (code, err) == (143, "mtrl.train: interrupted (SIGTERM) before training started; "
                                "nothing was saved\n")
    assert not (tmp_path / "run").exists()


def test_sigint_during_resume_startup_leaves_the_run_dir_as_it_was(tmp_path):
    run = tmp_path / "run"
    first = ["--iterations", "40", "--random-iterations", "40", "--eval-interval", "40",
             "--log-interval", "20", "--checkpoint-interval", "40"]
    assert main(["--env.tasks", "cartpole-balance", "walker-stand", "--run-dir", str(run),
                  *TINY, *first]) == 0
    before = _snapshot(run)
    assert "checkpoints/iter_000000040/state.pt" in before
    code, err = _interrupt_startup(run, "ready", signal.SIGINT, *first[2:], "--iterations", "80",
                                   "--resume")
    assert (code, err) == (130, "mtrl.train: interrupted (SIGINT) before training started; "
                                "nothing was saved\n")
    assert _snapshot(run) == before


def test_progress_bar_on_a_terminal_plain_lines_otherwise(capsys, monkeypatch):
    # Issue 4: a progress bar (env steps, iterations/s, updates/s, last eval) on a terminal,
    # plain periodic lines otherwise.
    from mtrl.train import _Progress

    def run(mode, n=50):
        progress = _Progress(mode, total=100, start=0, every=20)
        for it in range(1, n + 1):
            progress.update(it, {"env_steps": 2 * it, "it/s": 5.0, "upd/s": 10.0, "eval": 1.5})
        progress.close()
        return progress, capsys.readouterr()

    progress, out = run("auto")  # pytest's captured stderr is no terminal
    assert progress.bar is None and out.err == ""
    assert out.out.splitlines() == [
        f"[mtrl] iteration {it} env_steps={2 * it} it/s=5.0 upd/s=10.0 eval=1.5" for it in (20, 40)]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    for mode in ("auto", "bar"):
        progress, out = run(mode)
        assert progress.bar is not None and out.out == ""
        assert "50/100" in out.err  # tqdm shows its own it/s; the postfix the rest
        assert all(k in out.err for k in ("env_steps=", "it/s=5", "upd/s=10", "eval=1.5"))


class _NanRewardEnv(_NeverEndingEnv):
    """Returns a NaN reward at its third step."""

    def reset(self, *, seed=None, options=None):
        self._t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self._t += 1
        return np.zeros(2, np.float32), (float("nan") if self._t == 3 else 0.0), False, False, {}


def test_nan_reward_from_an_env_names_its_task(tmp_path):
    gymnasium.register("MtrlNanReward-v0", entry_point=_NanRewardEnv, max_episode_steps=20)
    cfg = tiny_config(tmp_path, env=EnvConfig(tasks=("cartpole-balance", "gym:MtrlNanReward-v0"),
                                              max_episode_steps=50))
    with pytest.raises(ValueError, match=r"reward\[1\] = nan is not finite \(env 1, task "
                                         r"'gym:MtrlNanReward-v0'\)"):
        train(cfg)


def test_agent_gamma_is_the_discount_of_the_sampled_batches(tmp_path, monkeypatch):
    # --agent.gamma reached the normaliser but not the TD target: the replay batches were
    # sampled with ReplayBuffer.sample's default gamma (0.99), so batch.discount stayed 0.99.
    from mtrl.agent import BRCAgent

    seen = set()
    update = BRCAgent.update

    def recording_update(self, batch, denominator):
        seen.update(batch.discount.unique().tolist())
        return update(self, batch, denominator)

    monkeypatch.setattr(BRCAgent, "update", recording_update)
    agent = AgentConfig(critic_width=32, actor_width=32, gamma=0.9)
    train(tiny_config(tmp_path, agent=agent, iterations=50, eval_interval=50,
                      checkpoint_interval=0))
    assert len(seen) == 1 and seen.pop() == pytest.approx(0.9)


def test_signal_on_a_checkpoint_iteration_saves_it_once(tmp_path, monkeypatch):
    # SIGTERM arriving while the periodic checkpoint of iteration 60 is written: the loop used to
    # write iteration 60 a second time for the signal (a second replay write, GBs at paper scale).
    saved = []
    save = ckpt.save_checkpoint

    def save_and_signal(run_dir, iteration, *args, **kw):
        path = save(run_dir, iteration, *args, **kw)
        saved.append(iteration)
        if len(saved) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by train's handler: a flag
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_and_signal)
    out = train(tiny_config(tmp_path, iterations=120, checkpoint_interval=60))
    assert saved == [60]
    assert out["iteration"] == 60 and out["exit"].startswith("SIGTERM: checkpoint ")
    assert out["exit"].endswith("iter_000000060")


def test_checkpoint_save_removes_partial_checkpoints_of_a_crashed_save(tmp_path):
    # A save killed mid-write (OOM, kill -9, power) leaves its hidden temp dir (a partial replay
    # copy, GBs at paper scale) in checkpoints/; nothing removed it, so crashes piled them up.
    root = tmp_path / "checkpoints"
    stale = root / ".iter_000000005.tmp-0123abcd"
    (stale / "replay").mkdir(parents=True)
    (stale / "replay" / "obs.npy").write_bytes(b"x" * 1000)
    (root / "notes.txt").write_text("not a checkpoint: kept")
    ckpt.save_checkpoint(tmp_path, 10, {"iteration": 10, "config": {}}, lambda p: p.mkdir(), 2)
    assert sorted(p.name for p in root.iterdir()) == ["iter_000000010", "notes.txt"]


def test_a_checkpoint_left_aside_by_a_crash_between_the_renames_is_recovered(tmp_path):
    # Saving a checkpoint of an iteration already saved swaps it (mtrl/_atomic.py); a kill
    # between the two renames left the complete old one only under a hidden .old- name, so
    # --resume did not see it (or fell back to an older one).
    root = tmp_path / "checkpoints"
    for it in (5, 10):
        ckpt.save_checkpoint(tmp_path, it, {"iteration": it, "config": {}}, lambda p: p.mkdir(), 3)
    (root / "iter_000000010").rename(root / ".iter_000000010.old-0123abcd")
    (root / ".iter_000000005.old-fedcba98").mkdir()  # an empty placeholder: not a checkpoint
    with pytest.warns(RuntimeWarning, match=r"\.iter_000000010\.old-0123abcd.*renamed back"):
        found = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["iter_000000005", "iter_000000010"]
    assert ckpt.load_checkpoint(found[-1])["iteration"] == 10
    # Two complete copies of one checkpoint: refused, naming both, nothing moved.
    (root / "iter_000000010").rename(root / ".iter_000000010.old-0123abcd")
    shutil.copytree(root / ".iter_000000010.old-0123abcd", root / ".iter_000000010.old-99999999")
    with pytest.raises(ValueError, match=r"old-0123abcd, \.iter_000000010\.old-99999999"):
        ckpt.list_checkpoints(tmp_path)
    assert not (root / "iter_000000010").exists()
    # The next save of that iteration removes both (and the placeholder).
    ckpt.save_checkpoint(tmp_path, 10, {"iteration": 10, "config": {}}, lambda p: p.mkdir(), 3)
    assert sorted(p.name for p in root.iterdir()) == ["iter_000000005", "iter_000000010"]


def test_resume_takes_the_runs_config_for_flags_not_given(tmp_path):
    # README: `python -m mtrl.train --run-dir runs/mt10 --resume` continues a run started with
    # `--env.tasks metaworld-mt10 --run-dir runs/mt10`. It failed: every field not repeated took
    # the preset's default and the checkpoint check refused the run (env.tasks differs).
    from mtrl.train import parse_args

    run = tmp_path / "run"
    first = ["--env.tasks", "cartpole-balance", "walker-stand", "--iterations", "60",
             "--random-iterations", "40", "--log-interval", "20", "--eval-interval", "60",
             "--checkpoint-interval", "30", "--run-dir", str(run), *TINY]
    assert main(first) == 0
    cfg = parse_args(["--run-dir", str(run), "--resume", "--iterations", "90"])
    assert cfg.resume and cfg.iterations == 90 and cfg.run_dir == str(run)
    assert cfg.env.tasks == ("cartpole-balance", "walker-stand")
    assert (cfg.agent.critic_width, cfg.buffer.batch_size, cfg.progress) == (32, 64, "lines")
    assert main(["--run-dir", str(run), "--resume", "--iterations", "90"]) == 0
    assert ckpt.list_checkpoints(run)[-1].name == "iter_000000090"
    assert int(read_csv(run / "train.csv")[-1]["iteration"]) == 80  # logged every 20
    # Flags given with --resume still win; a run dir without config.json keeps the preset.
    assert parse_args(["--run-dir", str(run), "--resume", "--seed", "3"]).seed == 3
    assert parse_args(["--run-dir", str(tmp_path / "none"), "--resume"]).agent.critic_width == 256


def test_pools_are_closed_when_setup_fails(tmp_path, monkeypatch):
    # An error after the env pools were built (agent, replay allocation, a restore on --resume)
    # left them open until garbage collection (engine worker threads and MuJoCo models).
    import mtrl.train as train_module

    closed, made = [], []
    make = mtrl.envs.make

    def recording_make(*args, **kw):
        pool = make(*args, **kw)
        close = pool.close
        pool.close = lambda: (closed.append(pool), close())[1]
        made.append(pool)
        return pool

    def failing_agent(*args, **kw):
        raise ValueError("agent construction failed")

    monkeypatch.setattr(mtrl.envs, "make", recording_make)
    monkeypatch.setattr(train_module, "BRCAgent", failing_agent)
    with pytest.raises(ValueError, match="agent construction failed"):
        train(tiny_config(tmp_path))
    assert len(made) == 2 and all(any(p is c for c in closed) for p in made)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                    reason="names a descriptor's path through /proc/self/fd")
def test_run_files_are_on_disk_before_the_checkpoint_that_needs_them(tmp_path, monkeypatch):
    # A power loss just after a checkpoint must keep it, the metrics rows up to it and a whole
    # config.json (--resume reads it): each is fsynced before the checkpoint is renamed in.
    events = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def rename(src, dst):
        events.append(("rename", os.fspath(dst)))
        real_rename(src, dst)

    def replace(src, dst):
        events.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    run = Path(os.path.realpath(tmp_path))
    train(tiny_config(run, iterations=50, eval_interval=50, checkpoint_interval=0))
    final = os.fspath(run / "checkpoints" / "iter_000000050")
    swapped_in = events.index(("rename", final))
    synced = [e[1] for e in events[:swapped_in] if e[0] == "fsync"]
    for name in ("train.csv", "eval.csv", "metrics.jsonl"):
        assert os.fspath(run / name) in synced, name
    config_in = events.index(("replace", os.fspath(run / "config.json")))
    assert config_in < swapped_in  # written as a temp file, synced, then replaced in
    assert any(e[0] == "fsync" and Path(e[1]).name.startswith(".config.json.tmp-")
               for e in events[:config_in])
    assert ("fsync", os.fspath(run / "checkpoints")) in events[swapped_in:]
    assert ckpt.load_checkpoint(Path(final))["iteration"] == 50


def test_a_run_combining_task_sets_draws_a_curve_png_per_set_also_on_resume(tmp_path):
    # Issue 4: the laptop set plus one task named on its own: curves.png, curves-laptop.png and
    # curves-other.png. A resume takes the sets from the run's config.json and redraws them.
    from mtrl.train import parse_args

    run = tmp_path / "run"
    first = ["--env.tasks", "laptop", "pendulum-swingup", "--iterations", "20",
             "--random-iterations", "40", "--log-interval", "20", "--eval-interval", "20",
             "--checkpoint-interval", "20", "--run-dir", str(run), *TINY]
    first[first.index("--eval-episodes") + 1] = "1"
    assert main(first) == 0
    pngs = ["curves-laptop.png", "curves-other.png", "curves.png"]
    assert sorted(p.name for p in run.glob("*.png")) == pngs
    before = {name: (run / name).read_bytes() for name in pngs}
    assert parse_args(["--run-dir", str(run), "--resume"]).env.tasks == ("laptop",
                                                                        "pendulum-swingup")
    assert main(["--run-dir", str(run), "--resume", "--iterations", "40"]) == 0
    assert sorted(p.name for p in run.glob("*.png")) == pngs
    for name in pngs:  # redrawn with the evaluation of iteration 40
        assert (run / name).read_bytes() != before[name], name


def test_startup_summary_says_what_the_run_does(tmp_path, capsys):
    train(tiny_config(tmp_path / "r", iterations=60, checkpoint_interval=30,
                      env=EnvConfig(tasks=("laptop", "pendulum-swingup"), max_episode_steps=50)))
    out = capsys.readouterr().out.splitlines()
    summary = out[:out.index(next(ln for ln in out if ln.startswith("[mtrl] iteration ")))]
    assert summary == [
        f"[mtrl] run dir {tmp_path / 'r'}: new run; device cpu, 1 torch thread(s); float32",
        "[mtrl] 5 task(s) from laptop, other: dmc:cartpole-balance, dmc:cartpole-swingup, "
        "dmc:walker-stand, dmc:walker-walk, dmc:pendulum-swingup",
        "[mtrl] critic: 2 x BroNet, width 32, 2 blocks, 101 atoms, 19.9k parameters; actor: "
        "width 32, 4.5k parameters",  # spec §3.4: 2 x 9,893 + 5 x 32; actor 4,524
        summary[3],  # replay size: checked below
        "[mtrl] 60 iterations: random actions for the first 40, eval every 60 (2 episode(s) per "
        "task), checkpoint every 30 (last 2 kept)"]
    assert summary[3].startswith("[mtrl] replay: 5 x 1,000 transitions (")
    assert summary[3].endswith(" GiB); batch 64, 2 update(s) per iteration")
    # a resumed run says where it starts; a wide critic on the CPU gets a note
    train(tiny_config(tmp_path / "r", iterations=90, checkpoint_interval=30, resume=True,
                      env=EnvConfig(tasks=("laptop", "pendulum-swingup"), max_episode_steps=50)))
    assert (f"[mtrl] run dir {tmp_path / 'r'}: resuming iter_000000060 at iteration 60; device "
            f"cpu") in capsys.readouterr().out
    cfg = tiny_config(tmp_path / "w", agent=AgentConfig(critic_width=2048, actor_width=32))
    from mtrl.agent import BRCAgent
    from mtrl.train import startup_summary

    class Sized:
        nbytes = 0
    with torch.device("meta"):  # sizes only (a real 2048-wide init takes seconds)
        agent = BRCAgent(cfg.agent, 3, 1, 1)
    lines = startup_summary(cfg, ["dmc:cartpole-balance"], {"other": ["dmc:cartpole-balance"]},
                            torch.device("cpu"), agent, Sized(), 64, None, 0)
    flops = 6 * 64 * 2 * 2 * (4 * 2048 + 4 * 2048 * 2048 + 2048 * 101)
    assert lines[-1] == (f"[mtrl] note: a 2048-wide critic on the CPU is ~{flops / 1e12:.1f} TFLOP "
                         "per update (seconds to minutes each); the paper's width is meant for a GPU")
    assert "note" not in "".join(startup_summary(cfg.replace(agent=AgentConfig(critic_width=1024)),
                                                 ["a"], {"other": ["a"]}, torch.device("cpu"),
                                                 agent, Sized(), 64, None, 0))


def test_wandb_without_the_package_leaves_the_run_dir_untouched(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ValueError, match=r"--wandb needs the wandb package"):
        train(tiny_config(tmp_path / "r", wandb=True))
    assert not (tmp_path / "r").exists()  # config.json was written before the refusal
