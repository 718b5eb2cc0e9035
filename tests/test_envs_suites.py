"""Tests of the MyoSuite, Atari and gymnasium suites behind the mtrl.envs front (mtrl/envs/suites.py,
gym_backend.py, the envpool backend's discrete path): layout, padding, episode ends, seeding, errors."""

from __future__ import annotations

import os
import pickle
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium
import numpy as np
import pytest

import mtrl.envs as envs


def _rand(pool, rng):
    return rng.uniform(-1, 1, (pool.num_envs, pool.action_dim)).astype(np.float32)


def _run(pool, steps, seed=0):
    rng = np.random.default_rng(seed)
    outs = [pool.reset()]
    for _ in range(steps):
        o = pool.step(_rand(pool, rng))
        outs += [o.obs, o.final_obs, o.reward, o.terminated, o.truncated]
    return outs


# ---------------------------------------------------------------- names


def test_suite_names_resolve_and_are_listed():
    tasks = set(envs.available_tasks())
    assert {"gym:Pendulum-v1", "atari:pong", "myo:myoElbowPose1D6MRandom-v0"} <= tasks
    assert envs.resolve("atari:Pong-v5").name == "atari:pong"
    assert envs.resolve("atari:space_invaders").envpool_id == "SpaceInvaders-v5"
    assert envs.resolve("myo:MyoSuite/myoHandReachFixed-v0").name == "myo:myoHandReachFixed-v0"
    assert envs.resolve("gym:Pendulum-v1").suite == "gym"
    # 398 MyoSuite tasks (envpool's 796 ids count each twice, with the "MyoSuite/" alias).
    assert sum(t.startswith("myo:") for t in tasks) == 398
    assert sum(t.startswith("atari:") for t in tasks) == 104


def test_task_listing_without_envpool_or_gymnasium(monkeypatch):
    # A trimmed environment (e.g. a GPU box without envpool wheels) still lists and resolves DMC.
    import mtrl.envs.suites as suites

    monkeypatch.setitem(sys.modules, "envpool", None)
    monkeypatch.setitem(sys.modules, "envpool.registration", None)
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    suites._envpool_specs.cache_clear(), suites.myo_ids.cache_clear(), suites.atari_games.cache_clear()
    try:
        names = envs.available_tasks()
        assert "dmc:cheetah-run" in names and "metaworld:reach" in names
        assert not any(n.startswith(("myo:", "atari:", "gym:")) for n in names)
        assert envs.resolve("cheetah-run").name == "dmc:cheetah-run"
    finally:
        suites._envpool_specs.cache_clear(), suites.myo_ids.cache_clear(), suites.atari_games.cache_clear()

@pytest.mark.parametrize("name,close", [("gym:Pendulm-v1", "gym:Pendulum-v1"),
                                        ("atari:pongg", "atari:pong"),
                                        ("myo:myoElbowPose1D6MRandm-v0",
                                         "myo:myoElbowPose1D6MRandom-v0")])
def test_unknown_suite_names_list_close_names(name, close):
    with pytest.raises(ValueError, match=f"unknown task '{name}'.*{close}"):
        envs.make([name])


def test_gym_id_that_cannot_be_made_is_a_value_error(monkeypatch):
    from mtrl.envs import gym_backend

    def boom(*a, **k):
        raise gymnasium.error.DependencyNotInstalled("box2d is not installed")

    monkeypatch.setattr(gymnasium, "make", boom)
    with pytest.raises(ValueError, match="gymnasium cannot make 'Pendulum-v1'.*box2d"):
        gym_backend.GymTaskPool([envs.resolve("gym:Pendulum-v1")])


# ---------------------------------------------------------------- gymnasium


def test_gym_layout_padding_and_action_rescaling():
    with envs.make(["gym:Pendulum-v1", "gym:CartPole-v1", "gym:MountainCarContinuous-v0"],
                   envs_per_task=2, seed=4) as p:
        assert p.obs_dims.tolist() == [3, 4, 2] and p.action_dims.tolist() == [1, 2, 1]
        assert p.discrete.tolist() == [False, True, False]
        assert p.max_episode_steps.tolist() == [200, 500, 999]
        assert p.task_ids.tolist() == [0, 0, 1, 1, 2, 2]
        obs = p.reset()
        assert obs.shape == (6, 4) and obs.dtype == np.float32
        assert np.all(obs[[0, 1], 3] == 0) and np.all(obs[4:, 2:] == 0)
        # Pendulum: action 1.0 in [-1, 1] is torque +2 (its Box is [-2, 2]); compare against a
        # plain gymnasium env with the same seed.
        ref = gymnasium.make("Pendulum-v1")
        ref.reset(seed=4)
        a = np.zeros((6, 2), np.float32)
        a[:, 0] = 1.0
        a[2] = [0.3, 0.7]  # CartPole env 2 -> argmax 1
        a[3] = [0.9, 0.7]  # CartPole env 3 -> argmax 0
        out = p.step(a)
        o_ref, r_ref, *_ = ref.step(np.array([2.0], np.float32))
        np.testing.assert_allclose(out.obs[0, :3], o_ref, rtol=1e-6)
        assert out.reward[0] == pytest.approx(r_ref, rel=1e-6)
        cp = [gymnasium.make("CartPole-v1") for _ in range(2)]
        for j, (env, act) in enumerate(zip(cp, (1, 0))):
            env.reset(seed=4 + 2 + j)
            o_cp, *_ = env.step(act)
            np.testing.assert_allclose(out.obs[2 + j], o_cp, rtol=1e-6)


def test_gym_final_obs_vs_reset_obs_at_time_limit():
    with envs.make(["gym:Pendulum-v1"], envs_per_task=2, seed=0, max_episode_steps=3) as p:
        assert p.max_episode_steps.tolist() == [3]
        ref = gymnasium.make("Pendulum-v1", max_episode_steps=3)
        ref.reset(seed=0)
        p.reset()
        z = np.zeros((2, 1), np.float32)
        for i in range(3):
            out = p.step(z)
            o_ref, _, te, tr, _ = ref.step(np.zeros(1, np.float32))
            assert out.truncated.tolist() == [i == 2] * 2 and not out.terminated.any()
            np.testing.assert_allclose(out.final_obs[0], o_ref, rtol=1e-6)
        # The ended step: final_obs is the last observation, obs the reset one (ref's next reset).
        o_reset, _ = ref.reset()
        np.testing.assert_allclose(out.obs[0], o_reset, rtol=1e-6)
        assert not np.allclose(out.obs, out.final_obs)
        out = p.step(z)  # the next action is not ignored: a normal step of the new episode
        assert not out.truncated.any()
        o_ref, *_ = ref.step(np.zeros(1, np.float32))
        np.testing.assert_allclose(out.final_obs[0], o_ref, rtol=1e-6)


def test_gym_termination_and_determinism():
    # CartPole pushed one way falls within ~10 steps: terminated (not truncated).
    with envs.make(["gym:CartPole-v1"], envs_per_task=3, seed=7) as p:
        p.reset()
        a = np.tile(np.array([[1.0, 0.0]], np.float32), (3, 1))
        ended = np.zeros(3, bool)
        for _ in range(40):
            out = p.step(a)
            assert not out.truncated.any()
            done = out.terminated
            assert np.all(np.abs(out.final_obs[done, 2]) > 0.2)   # pole angle past the limit
            assert np.all(np.abs(out.obs[done]) <= 0.05)            # fresh reset state
            ended |= done
        assert ended.all()
    with envs.make(["gym:Pendulum-v1", "gym:CartPole-v1"], envs_per_task=2, seed=3) as p, \
            envs.make(["gym:Pendulum-v1", "gym:CartPole-v1"], envs_per_task=2, seed=3) as q:
        first = _run(p, 30)
        for x, y in zip(first, _run(q, 30), strict=True):
            np.testing.assert_array_equal(x, y)
        p.seed(3)  # reseeding replays the same trajectories
        for x, y in zip(_run(p, 30), first, strict=True):
            np.testing.assert_array_equal(x, y)
        p.seed(4)
        assert not np.array_equal(p.reset(), first[0])


def test_gym_get_set_state_continues_identically():
    with envs.make(["gym:Pendulum-v1"], envs_per_task=2, seed=1, max_episode_steps=5) as p:
        rng = np.random.default_rng(0)
        p.reset()
        for _ in range(3):
            p.step(_rand(p, rng))
        state = pickle.loads(pickle.dumps(p.get_state()))
        acts = [_rand(p, rng) for _ in range(6)]
        a = [p.step(x).final_obs for x in acts]
        p.set_state(state)
        b = [p.step(x).final_obs for x in acts]
        np.testing.assert_array_equal(np.stack(a), np.stack(b))
        # A snapshot with other envs was taken as it was: one env for two stepped zeros forever,
        # non-env objects made even close() fail, bad pending seeds failed at reset.
        one_env = {**state, "envs": pickle.dumps(pickle.loads(state["envs"])[:1])}
        for bad, match in ((one_env, "must be the 2 gymnasium envs"),
                           ({**state, "envs": pickle.dumps([1, 2])}, "must be the 2 gymnasium"),
                           ({**state, "envs": b"junk"}, "cannot be unpickled"),
                           ({**state, "pending_seeds": [7]}, "pending_seeds must be None or 2")):
            with pytest.raises(ValueError, match=match):
                p.set_state(bad)
        p.set_state(state)
        np.testing.assert_array_equal(np.stack([p.step(x).final_obs for x in acts]), np.stack(a))
    with envs.make(["gym:InvertedPendulum-v5"]) as p:  # MuJoCo env: EzPickle, no state
        p.reset()
        with pytest.raises(NotImplementedError, match="EzPickle"):
            p.get_state()


def test_gym_bad_actions():
    with envs.make(["gym:Pendulum-v1", "gym:CartPole-v1"]) as p:
        with pytest.raises(RuntimeError, match="reset"):
            p.step(np.zeros((2, 2), np.float32))
        p.reset()
        with pytest.raises(ValueError, match="shape"):
            p.step(np.zeros((2, 1), np.float32))
        with pytest.raises(ValueError, match="float32"):
            p.step(np.zeros((2, 2), np.float64))
        bad = np.zeros((2, 2), np.float32)
        bad[1, 0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            p.step(bad)


# ---------------------------------------------------------------- envpool suites (Atari, MyoSuite)


def _against_raw_envpool(name, envpool_id, steps, limit, seed, actions_for):
    """Step our pool and a raw envpool side by side (2 envs, seeds seed, seed+1) and check that
    ours is envpool with its next-step auto-reset hidden: at an episode end ``final_obs`` is the
    raw terminal observation and ``obs`` the raw reset observation (which raw envpool only
    returns on the following call, ignoring that call's action)."""
    import envpool

    raw = envpool.make_gymnasium(envpool_id, num_envs=2, batch_size=2, env_seed=[seed, seed + 1],
                                 max_episode_steps=limit)
    rng = np.random.default_rng(seed)
    ends = 0
    with envs.make([name], envs_per_task=2, seed=seed, max_episode_steps=limit) as p:
        o_raw, _ = raw.reset()
        np.testing.assert_array_equal(p.reset(), o_raw.reshape(2, -1).astype(np.float32))
        for _ in range(steps):
            a, a_raw = actions_for(p, rng)
            out = p.step(a)
            o_raw, r_raw, te_raw, tr_raw, info = raw.step(a_raw)
            np.testing.assert_array_equal(out.final_obs,
                                          o_raw.reshape(2, -1).astype(np.float32))
            np.testing.assert_array_equal(out.reward, r_raw.astype(np.float32))
            np.testing.assert_array_equal(out.terminated, te_raw)
            np.testing.assert_array_equal(out.truncated, tr_raw)
            success = np.asarray(info.get("solved", np.zeros(2))) > 0
            np.testing.assert_array_equal(out.success, success)
            ended = te_raw | tr_raw
            if ended.any():
                ends += 1
                # raw envpool: this call's action is ignored and the reset observation returned
                o_raw, r_raw, *_ = raw.step(a_raw)
                assert np.all(r_raw[ended] == 0)
                np.testing.assert_array_equal(out.obs[ended],
                                              o_raw.reshape(2, -1)[ended].astype(np.float32))
                # only safe to keep comparing if both envs ended together (same time limit)
                assert ended.all()
            else:
                np.testing.assert_array_equal(out.obs, out.final_obs)
    raw.close()
    return ends


def test_atari_argmax_rule_layout_and_episode_ends():
    def acts(p, rng):
        a = rng.uniform(-1, 1, (2, p.action_dim)).astype(np.float32)
        a[1] = 0.0  # an all-tie row means action 0 (NOOP)
        return a, np.array([int(np.argmax(a[0])), 0], np.int32)

    with envs.make(["atari:pong"], envs_per_task=2, seed=5) as p:
        assert p.discrete.tolist() == [True]
        assert p.action_dims.tolist() == [6] and p.obs_dims.tolist() == [4 * 84 * 84]
        assert p.max_episode_steps.tolist() == [27000]
        obs = p.reset()
        assert obs.dtype == np.float32 and obs.min() >= 0 and obs.max() <= 255
        assert np.array_equal(obs, np.round(obs)) and obs.max() > 1  # unscaled pixels
    assert _against_raw_envpool("atari:pong", "Pong-v5", steps=13, limit=6, seed=5,
                                actions_for=acts) == 2


def test_myosuite_matches_envpool_and_ends_episodes():
    def acts(p, rng):
        a = rng.uniform(-1, 1, (2, p.action_dim)).astype(np.float32)
        return a, a.astype(np.float64)

    with envs.make(["myo:myoElbowPose1D6MRandom-v0"], envs_per_task=1) as p:
        assert p.obs_dims.tolist() == [9] and p.action_dims.tolist() == [6]
        assert not p.discrete.any()
    assert _against_raw_envpool("myo:myoElbowPose1D6MRandom-v0", "myoElbowPose1D6MRandom-v0",
                                steps=9, limit=4, seed=2, actions_for=acts) == 2


def test_mixed_engine_envpool_gym_pool():
    names = ["dmc:cartpole-balance", "atari:pong", "myo:myoElbowPose1D6MRandom-v0",
             "gym:MountainCarContinuous-v0"]
    with envs.make(names, envs_per_task=2, seed=0, max_episode_steps=3) as p, \
            envs.make(names, envs_per_task=2, seed=0, max_episode_steps=3) as q:
        assert p.task_names == names and p.num_envs == 8
        assert p.obs_dims.tolist() == [5, 28224, 9, 2] and p.obs_dim == 28224
        assert p.action_dims.tolist() == [1, 6, 6, 1] and p.action_dim == 6
        assert p.discrete.tolist() == [False, True, False, False]
        a, b = _run(p, 4), _run(q, 4)
        for x, y in zip(a, b, strict=True):  # same seed, same trajectories
            np.testing.assert_array_equal(x, y)
        obs = a[0]
        assert np.all(obs[:2, 5:] == 0) and np.all(obs[4:6, 9:] == 0) and np.all(obs[6:, 2:] == 0)
        # outs: [reset] + per step [obs, final_obs, reward, terminated, truncated]
        reset_obs, final, trunc = a[1 + 2 * 5], a[2 + 2 * 5], a[5 + 2 * 5]
        assert np.all(trunc)  # every env hits the time limit at step 3
        for o in (final, reset_obs):  # padding kept at the episode end
            assert np.all(o[:2, 5:] == 0) and np.all(o[4:6, 9:] == 0) and np.all(o[6:, 2:] == 0)
        assert not np.array_equal(final[6:, :2], reset_obs[6:, :2])
        assert not np.array_equal(final[:2, :5], reset_obs[:2, :5])
        with pytest.raises(ValueError, match=r"shape \(num_envs, action_dim\) = \(8, 6\)"):
            p.step(np.zeros((8, 5), np.float32))


class _DictEnv(gymnasium.Env):
    """A tiny env with a Dict observation (Box + Discrete), Discrete actions and is_success."""

    observation_space = gymnasium.spaces.Dict({"pos": gymnasium.spaces.Box(-5, 5, (2,)),
                                               "mode": gymnasium.spaces.Discrete(3)})
    action_space = gymnasium.spaces.Discrete(3, start=1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return {"pos": self.pos.copy(), "mode": 0}, {}

    def step(self, action):
        assert self.action_space.contains(action)
        self.pos = self.pos + np.float32(action)
        return ({"pos": self.pos.copy(), "mode": int(action) - 1}, float(action), False, False,
                {"is_success": action == 3})


def test_gym_user_registered_env_dict_obs_discrete_actions():
    gymnasium.register("MtrlTestDict-v0", entry_point=_DictEnv, max_episode_steps=2)
    assert "gym:MtrlTestDict-v0" in envs.available_tasks()
    with envs.make(["gym:MtrlTestDict-v0", "gym:Pendulum-v1"], seed=0) as p:
        # Dict flattened in key order ("mode" one-hot 3, then "pos" 2); Discrete(3, start=1).
        assert p.obs_dims.tolist() == [5, 3] and p.action_dims.tolist() == [3, 1]
        assert p.discrete.tolist() == [True, False] and p.max_episode_steps.tolist() == [2, 200]
        obs = p.reset()
        np.testing.assert_array_equal(obs[0, :3], [1, 0, 0])
        a = np.array([[0.1, 0.2, 0.9], [0.0, 0.0, 0.0]], np.float32)  # argmax 2 -> action 3
        out = p.step(a)
        np.testing.assert_array_equal(out.obs[0, :3], [0, 0, 1])  # mode = action - 1 = 2
        np.testing.assert_allclose(out.obs[0, 3:], obs[0, 3:] + 3, rtol=1e-6)
        assert out.reward[0] == 3 and out.success.tolist() == [True, False]
        out = p.step(np.array([[1, 0, 0], [0, 0, 0]], np.float32))  # action 1, time limit 2
        assert out.truncated.tolist() == [True, False] and not out.success[0]
        np.testing.assert_allclose(out.final_obs[0, 3:], obs[0, 3:] + 4, rtol=1e-6)
        np.testing.assert_array_equal(out.obs[0, :3], [1, 0, 0])  # the reset observation
        assert np.all(np.abs(out.obs[0, 3:]) <= 1)


_FORK_CHILDREN = """
import os, sys, threading
import numpy as np
import mtrl.envs as envs
engine = envs.make(["cheetah-run"], envs_per_task=2, backend="engine")
viaenvpool = envs.make(["cheetah-run"], envs_per_task=2, backend="envpool")
for p in (engine, viaenvpool):
    p.reset()
zeros = np.zeros((2, engine.action_dim), np.float32)
held, release = threading.Event(), threading.Event()
def hold():  # another thread inside a pool call while the process forks
    with engine._lock:
        held.set()
        release.wait()
threading.Thread(target=hold).start()
held.wait()
statuses = []
for pool, expect in ((engine, "in use by another thread"), (viaenvpool, "forked child")):
    pid = os.fork()
    if pid == 0:
        try:
            pool.step(zeros)
            sys.exit(3)
        except RuntimeError as e:
            pool.close()  # allowed: only marks it closed
            sys.exit(0 if expect in str(e) else 4)  # a normal exit: destructors run
    statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
release.set()
print(statuses, [bool(np.isfinite(p.step(zeros).reward).all()) for p in (engine, viaenvpool)])
"""


_FORK_AFTER_CLOSE = """
import os, sys
import mtrl.envs as envs
pool = envs.make(["cartpole-balance"], envs_per_task=2, backend="envpool")
pool.reset()
pool.close()  # closed, but still holding its envpools
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: the child destroys what it inherited
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_pools_in_a_forked_child_refuse_clearly_instead_of_hanging():
    # A lock held by another thread at fork hung every call in the child (any backend); an
    # envpool pool hung at the child's first step (its worker threads stay in the parent) and
    # crashed the child at exit (SIGSEGV) even unused.
    import subprocess

    res = subprocess.run([sys.executable, "-c", _FORK_CHILDREN], capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[0, 0] [True, True]"
    # A closed envpool pool is left alone in the child too (the child crashed at exit, SIGSEGV).
    res = subprocess.run([sys.executable, "-c", _FORK_AFTER_CLOSE], capture_output=True,
                         text=True, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "0", res.stderr[-2000:]


def test_mixed_pool_set_state_is_all_or_nothing_and_envpool_limits_are_named():
    # The parts were restored one by one: a part refusing its state left the parts before it
    # restored; a wrong part count read as a zip() error, a missing one as KeyError.
    with envs.make(["cheetah-run", "gym:Pendulum-v1"], envs_per_task=1, seed=0) as p:
        p.reset()
        zeros = np.zeros((2, p.action_dim), np.float32)
        start = p.get_state()
        p.step(zeros)
        later = p.get_state()
        wrong = {**start, "parts": [start["parts"][0], {"backend": "engine"}]}
        for bad, match in ((wrong, "get_state\\(\\) of a gymnasium pool"),
                           ({**start, "parts": start["parts"][:1]}, "state has 1 parts"),
                           ({"backend": "mixed"}, "get_state\\(\\) of a mixed pool")):
            with pytest.raises(ValueError, match=match):
                p.set_state(bad)
        assert p.get_state()["parts"][0]["envs"][0][2] == later["parts"][0]["envs"][0][2] == 1
    # envpool's max_episode_steps is an int32: larger values failed in its constructor.
    with pytest.raises(ValueError, match=r"max_episode_steps up to 2\*\*31 - 1"):
        envs.make(["atari:pong"], max_episode_steps=2**31)
