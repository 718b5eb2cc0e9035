"""Tests of the C++ environment engine (mtrl/envs/engine.py, csrc/envs/): alignment with
dm_control, determinism across threads and seeds, exact resume, divergence, errors."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # dm_control must not try to open a GLFW window

import pickle

import numpy as np
import pytest

import mtrl.envs as envs
from mtrl import _core
from mtrl.envs import fidelity
from mtrl.envs.engine import EngineTaskPool, dm_control_suite_dir, engine_tasks
from mtrl.replay import ReplayMemoryError

TASKS = engine_tasks()


def _rand(pool, rng):
    return rng.uniform(-1, 1, (pool.num_envs, pool.action_dim)).astype(np.float32)


@pytest.mark.parametrize("task", TASKS)
def test_alignment_and_timing_match_dm_control(task):
    env = fidelity.load_dm_control(task)
    # Same physics state, same actions: same observations and rewards (float32 rounding only).
    # (CI runs a few steps; benchmarks/check_engine_fidelity.py runs 200.)
    diff = fidelity.compare_rollout(task, steps=10, seed=1, env=env)
    assert diff.steps == 10
    assert diff.obs < 1e-5 and diff.reward < 1e-5, diff
    with envs.make([task], backend="engine") as p:
        assert p.n_sub_steps[0] == env._n_sub_steps
        assert p.max_episode_steps[0] == int(np.ceil(env._step_limit)) == 1000
        assert p.action_dims[0] == env.action_spec().shape[0]
        assert p.obs_dims[0] == sum(int(np.prod(v.shape)) for v in env.observation_spec().values())


@pytest.mark.parametrize("task", ["dmc:pendulum-swingup", "dmc:walker-walk", "dmc:reacher-easy",
                                  "dmc:cartpole-swingup", "dmc:point_mass-hard",
                                  "dmc:swimmer-swimmer6", "dmc:fish-swim"])
def test_initial_state_distribution_matches_dm_control(task):
    n = 150
    ours, ref = fidelity.initial_obs_samples(task, n, seed=0)
    mean_gap, ks = fidelity.distribution_gap(ours, ref)
    assert mean_gap < 4 * np.sqrt(2 / n), mean_gap
    assert ks < 2.2 * np.sqrt(2 / n), ks
    # And the check can fail: a shifted sample is caught.
    shifted_gap, _ = fidelity.distribution_gap(ours + ours.std(0) + 1e-3, ref)
    assert shifted_gap > 4 * np.sqrt(2 / n)


def test_initial_obs_samples_in_chunks_are_the_same_samples(monkeypatch):
    # benchmarks/check_engine_fidelity.py takes 200 resets per task: 200 dog envs at once were
    # refused on a 24 GB machine (EnvMemoryError, ~109 MB each). The engine envs are built a
    # chunk at a time, env k still seeded seed + k, so the samples do not depend on the chunk.
    task, n = "dmc:cartpole-swingup", 7
    whole, ref_whole = fidelity.initial_obs_samples(task, n, seed=3, chunk=n)
    built = []
    real_pool = fidelity.EngineTaskPool

    def recording_pool(tasks, *, envs_per_task, **kwargs):
        built.append(envs_per_task)
        return real_pool(tasks, envs_per_task=envs_per_task, **kwargs)

    monkeypatch.setattr(fidelity, "EngineTaskPool", recording_pool)
    chunked, ref_chunked = fidelity.initial_obs_samples(task, n, seed=3, chunk=3)
    assert built == [3, 3, 1]
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(ref_chunked, ref_whole)
    assert len(np.unique(whole[:, 0])) == n  # distinct resets, not one state repeated
    with pytest.raises(ValueError, match="chunk"):
        fidelity.initial_obs_samples(task, n, chunk=0)


@pytest.mark.parametrize("task", TASKS)
def test_contract_every_task(task):
    with envs.make([task], envs_per_task=2, backend="engine", seed=0) as p:
        obs = p.reset()
        assert np.all(np.isfinite(obs))
        rng = np.random.default_rng(0)
        for _ in range(5):
            out = p.step(_rand(p, rng))
            assert np.all(np.isfinite(out.obs)) and np.all(np.isfinite(out.final_obs))
            assert np.all((out.reward >= 0) & (out.reward <= 1))
            assert not out.diverged.any() and not out.success.any()


def _trajectory(seed, threads, steps=30, tasks=("cheetah-run", "walker-walk", "reacher-easy")):
    with envs.make(list(tasks), envs_per_task=3, seed=seed, num_threads=threads,
                   backend="engine", max_episode_steps=11) as p:
        rng = np.random.default_rng(0)
        rows = [p.reset()]
        for _ in range(steps):
            out = p.step(_rand(p, rng))
            rows += [out.obs, out.final_obs, out.reward[:, None]]
        return np.concatenate([r.reshape(len(r), -1) for r in rows], axis=1)


def test_same_seed_any_thread_count_same_trajectories():
    a = _trajectory(5, 1)
    np.testing.assert_array_equal(a, _trajectory(5, 2))
    np.testing.assert_array_equal(a, _trajectory(5, 4))
    assert not np.allclose(a, _trajectory(6, 2))


def test_engine_keeps_mujoco_timers_for_other_users():
    # The engine's threads skip MuJoCo's stage-timer callback (csrc/envs/physics.h); MuJoCo used
    # from Python outside the engine's steps must still fill mjData.timer.
    import mujoco

    m = mujoco.MjModel.from_xml_string(
        "<mujoco><worldbody><body><freejoint/><geom size='.1'/></body></worldbody></mujoco>")
    d = mujoco.MjData(m)
    with envs.make(["cheetah-run"], envs_per_task=2, backend="engine", num_threads=2) as p:
        p.reset()
        p.step(np.zeros((2, 6), np.float32))
        for _ in range(20):
            mujoco.mj_step(m, d)
        p.step(np.zeros((2, 6), np.float32))
    assert d.timer[mujoco.mjtTimer.mjTIMER_STEP].number == 20
    assert d.timer[mujoco.mjtTimer.mjTIMER_STEP].duration > 0


def test_non_contiguous_actions_are_accepted():
    with envs.make(["cheetah-run"], envs_per_task=3, backend="engine", seed=0) as p, \
            envs.make(["cheetah-run"], envs_per_task=3, backend="engine", seed=0) as q:
        p.reset()
        q.reset()
        a = np.random.default_rng(0).uniform(-1, 1, (6, 3)).astype(np.float32).T  # F-order
        np.testing.assert_array_equal(p.step(a).obs, q.step(np.ascontiguousarray(a)).obs)


def test_env_k_is_seeded_with_seed_plus_k():
    with envs.make(["cheetah-run"], envs_per_task=3, seed=10, backend="engine") as a, \
            envs.make(["cheetah-run"], envs_per_task=1, seed=11, backend="engine") as b:
        np.testing.assert_array_equal(a.reset()[1], b.reset()[0])


def test_get_set_state_resumes_exactly_across_episode_ends():
    with envs.make(["cheetah-run", "reacher-hard", "finger-turn_easy", "point_mass-hard"],
                   envs_per_task=2, seed=3, backend="engine", max_episode_steps=7) as p:
        rng = np.random.default_rng(1)
        p.reset()
        for _ in range(5):
            p.step(_rand(p, rng))
        state = pickle.loads(pickle.dumps(p.get_state()))
        actions = [_rand(p, rng) for _ in range(12)]
        first = [p.step(a) for a in actions]
        p.set_state(state)
        again = [p.step(a) for a in actions]
    assert any(o.truncated.any() for o in first)
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.final_obs, y.final_obs)
        np.testing.assert_array_equal(x.reward, y.reward)
        np.testing.assert_array_equal(x.truncated, y.truncated)


def test_set_state_rejects_foreign_state():
    with envs.make(["cheetah-run"], backend="engine") as p, \
            envs.make(["walker-walk"], backend="engine") as q:
        p.reset()
        q.reset()
        with pytest.raises(ValueError, match="walker-walk"):
            p.set_state(q.get_state())
        bad = p.get_state()
        bad["envs"][0] = (np.zeros(3), bad["envs"][0][1], 0, np.zeros(0))
        with pytest.raises(ValueError, match="physics state of cheetah-run must have"):
            p.set_state(bad)
    with envs.make(["reacher-easy", "cheetah-run"], backend="engine") as p:
        p.reset()
        good = p.get_state()
        phys, rng, count, task = good["envs"][0]
        # Each of these was accepted: a task state of another size was silently ignored, a
        # negative step count or an all-zero RNG state (xoshiro then yields only zeros) stored.
        for env_state, message in (
                ((phys, rng, count, np.zeros(5)),
                 r"task state of reacher-easy must have 2 values \(or none\), got 5"),
                ((phys, rng, -1, task), r"step count of reacher-easy must be in \[0, 2\*\*62\], "
                                        "got -1"),
                # (its increment overflowed int64: the time limit never fired)
                ((phys, rng, 2**63 - 1, task), r"must be in \[0, 2\*\*62\], got 9223372036854775807"),
                ((phys, np.zeros(4, np.uint64), count, task),
                 "RNG state of reacher-easy must not be all zeros"),
                ((phys, rng, "x", task), "env 0's state: "),
                ((1, 2, 3, 4), "env 0's state: ")):
            bad = {**good, "envs": [env_state, good["envs"][1]]}
            with pytest.raises(ValueError, match=message):
                p.set_state(bad)
        with pytest.raises(ValueError, match="state must come from get_state"):
            p.set_state({"backend": "engine"})
        after = p.get_state()
        for a, b in zip(after["envs"], good["envs"]):  # nothing was changed by the refusals
            assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_diverged_physics_resets_env_and_is_flagged():
    with envs.make(["cheetah-run"], envs_per_task=2, backend="engine") as p:
        p.reset()
        state = p.get_state()
        phys, rng, count, task = state["envs"][1]
        phys = phys.copy()
        phys[1 + 9:1 + 18] = 1e200  # qvel of env 1: MuJoCo reports a bad state
        state["envs"][1] = (phys, rng, count, task)
        p.set_state(state)
        out = p.step(np.zeros((2, 6), np.float32))
        assert out.diverged.tolist() == [False, True]
        assert out.truncated.tolist() == [False, True] and not out.terminated.any()
        assert np.all(np.isfinite(out.obs)) and np.all(out.final_obs[1] == 0)
        out = p.step(np.zeros((2, 6), np.float32))
        assert not out.diverged.any() and np.all(np.isfinite(out.obs))


def test_engine_errors():
    with pytest.raises(ValueError, match="does not implement.*metaworld:reach"):
        envs.make(["metaworld:reach"], backend="engine")
    suite = str(dm_control_suite_dir())
    with pytest.raises(ValueError, match="unknown engine task 'nope'; known: acrobot-swingup"):
        _core.EnginePool(["nope"], [0], suite, 1, 0)
    with pytest.raises(RuntimeError, match="cannot load MuJoCo model /nonexistent/cheetah.xml"):
        _core.EnginePool(["cheetah-run"], [0], "/nonexistent", 1, 0)
    with pytest.raises(ValueError, match="seeds must have one entry per env"):
        _core.EnginePool(["cheetah-run"], [0, 1], suite, 1, 0)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        _core.EnginePool(["cheetah-run"], [0], suite, 0, 0)
    raw = _core.EnginePool(["cheetah-run"], [0], suite, 1, 0)
    obs = np.zeros((1, 17), np.float32)
    raw._reset(obs)
    args = [np.zeros((1, 17), np.float32), np.zeros((1, 17), np.float32), np.zeros(1, np.float32),
            np.zeros(1, bool), np.zeros(1, bool), np.zeros(1, bool)]
    with pytest.raises(ValueError, match="`actions` must have dtype float32, got float64"):
        raw._step(np.zeros((1, 6)), *args)
    with pytest.raises(ValueError, match=r"`actions` must have shape \(1, 6\), got \(1, 5\)"):
        raw._step(np.zeros((1, 5), np.float32), *args)
    with pytest.raises(ValueError, match="`final_obs` must be C-contiguous"):
        raw._step(np.zeros((1, 6), np.float32), args[0], np.zeros((1, 34), np.float32)[:, ::2],
                  *args[2:])
    with pytest.raises(IndexError, match="env index 3 out of range"):
        raw.env_info(3)
    # A pool far beyond the machine's memory is refused after its first env (MemAvailable),
    # instead of allocating until the OOM killer ends the process.
    # It is the env engine's own MemoryError, not the replay buffer's.
    n = 2**20
    with pytest.raises(envs.EnvMemoryError, match=rf"the env pool \({n} envs\) needs \d+ "
                                                  r"bytes but this machine has only") as info:
        _core.EnginePool(["dog-run"] * n, list(range(n)), suite, 1, 0)
    assert isinstance(info.value, MemoryError)
    assert not isinstance(info.value, ReplayMemoryError)


def test_closed_engine_pool():
    p = EngineTaskPool([envs.resolve("pendulum-swingup")], num_threads=2)
    p.reset()
    state = p.get_state()
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.reset()
    # seed/get_state/set_state after close raised AttributeError ('... has no attribute _pool')
    for use in (lambda: p.seed(1), p.get_state, lambda: p.set_state(state)):
        with pytest.raises(RuntimeError, match="the env pool is closed"):
            use()


@pytest.mark.parametrize("shape,out", [((30, 30), (201, 201)), ((4, 5), (9, 23)), ((1, 3), (1, 7))])
def test_spline_zoom_matches_scipy(shape, out):
    from scipy import ndimage

    a = np.random.default_rng(0).uniform(0.15, 1, shape)
    ref = ndimage.zoom(a, (out[0] / shape[0], out[1] / shape[1]))
    assert ref.shape == out
    np.testing.assert_allclose(_core._spline_zoom(a, *out), ref, rtol=0, atol=1e-12)


_FORK_CHILD_STEPS_AND_EXITS = """
import os, signal
import numpy as np
import mtrl.envs as envs
pool = envs.make(["cheetah-run"], envs_per_task=4, num_threads=2, backend="engine")
pool.reset()
statuses = []
for how in ("close", "exit"):
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)  # a hung child dies of SIGALRM instead of hanging the test
        out = pool.step(np.zeros((4, pool.action_dim), np.float32))
        if how == "close":
            pool.close()
        os._exit(0 if np.isfinite(out.reward).all() else 1) if how == "close" else exit(0)
    statuses.append(os.waitpid(pid, 0)[1])
out = pool.step(np.zeros((4, pool.action_dim), np.float32))
pool.close()
print(statuses, bool(np.isfinite(out.reward).all()))
"""


def test_pool_in_a_forked_child_steps_and_closes():
    # The child has none of the pool's worker threads: closing the pool (or exiting, which
    # destroys it) joined them and hung forever. A child now steps on its own thread.
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _FORK_CHILD_STEPS_AND_EXITS],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[0, 0] True"
