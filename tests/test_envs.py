"""Tests of mtrl.envs (the front and its envpool backend): layout, episode ends, seeding, errors."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("MUJOCO_GL", "egl")  # dm_control must not try to open a GLFW window

import numpy as np
import pytest

import mtrl.envs as envs


def _rand(pool, rng):
    return rng.uniform(-1, 1, (pool.num_envs, pool.action_dim)).astype(np.float32)


def test_available_tasks_and_names():
    tasks = envs.available_tasks()
    assert "dmc:cheetah-run" in tasks and "metaworld:reach" in tasks
    assert "dmc:dog-run" in tasks and "dmc:humanoid-run" in tasks
    assert envs.resolve("cheetah-run") == envs.resolve("dmc:cheetah-run")
    assert envs.resolve("metaworld:reach-v3").name == "metaworld:reach"
    assert envs.resolve("dmc:ball_in_cup-catch").envpool_id == "BallInCupCatch-v1"
    assert envs.resolve("metaworld:button-press-topdown").envpool_id == (
        "MetaWorld/ButtonPressTopdown-v3")


def test_unknown_task_lists_close_names():
    with pytest.raises(ValueError, match="unknown task 'dmc:cheetah-rn'.*dmc:cheetah-run"):
        envs.make(["dmc:cheetah-rn"])
    with pytest.raises(ValueError, match="metaworld:reach"):
        envs.resolve("metaworld:reech")
    with pytest.raises(ValueError, match="distinct"):
        envs.make(["cheetah-run", "dmc:cheetah-run"])
    with pytest.raises(ValueError, match="envs_per_task"):
        envs.make(["cheetah-run"], envs_per_task=0)
    with pytest.raises(ValueError, match="backend"):
        envs.make(["cheetah-run"], backend="gpu")
    # envs_per_task=2**40 was killed by the OOM killer, 10**6 ran for minutes building envs.
    with pytest.raises(ValueError, match=r"at most 65536 envs in one pool.*2 tasks x 40000"):
        envs.make(["cheetah-run", "walker-walk"], envs_per_task=40_000)
    with pytest.raises(TypeError, match="tasks must be a list of task names, got NoneType"):
        envs.make(None)
    with pytest.raises(ValueError, match="envs_per_task must be an int >= 1, got None"):
        envs.make(["cheetah-run"], envs_per_task=None)
    for seed in (1.5, "1", None, 2**70, -2**64):
        with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63, 2\*\*63"):
            envs.make(["cheetah-run"], seed=seed)
    for name, value in (("num_threads", 2**40), ("max_episode_steps", 2**70)):
        with pytest.raises(ValueError, match=rf"{name} must be None or an int in \[1, "):
            envs.make(["cheetah-run"], **{name: value})


@pytest.mark.parametrize("name", ["dmc:fish-swim", "dmc:quadruped-fetch", "dmc:humanoid-run",
                                  "dmc:finger-spin", "dmc:walker-walk"])
def test_obs_key_table_matches_dm_control(name):
    from dm_control import suite

    domain, task = envs.resolve(name).short.split("-", 1)
    spec = suite.load(domain, task).observation_spec()
    assert envs.resolve(name).obs_keys == tuple(spec.keys())


@pytest.mark.parametrize("backend", ["envpool", "auto"])
def test_shapes_padding_and_task_ids(backend):
    with envs.make(["cheetah-run", "pendulum-swingup", "metaworld:reach"], envs_per_task=2,
                   backend=backend) as p:
        assert p.num_envs == 6 and p.num_tasks == 3
        assert p.task_names == ["dmc:cheetah-run", "dmc:pendulum-swingup", "metaworld:reach"]
        assert p.task_ids.dtype == np.int64 and p.task_ids.tolist() == [0, 0, 1, 1, 2, 2]
        assert p.obs_dims.tolist() == [17, 3, 39] and p.obs_dim == 39
        assert p.action_dims.tolist() == [6, 1, 4] and p.action_dim == 6
        assert p.max_episode_steps.tolist() == [1000, 1000, 200]  # MetaWorld: brc-spec §7
        obs = p.reset()
        assert obs.shape == (6, 39) and obs.dtype == np.float32
        assert np.all(obs[0:2, 17:] == 0) and np.all(obs[2:4, 3:] == 0)
        assert np.all(np.abs(obs[2:4, :2]) > 0)  # pendulum: cos, sin (velocity starts at 0)
        out = p.step(_rand(p, np.random.default_rng(0)))
        for a in (out.obs, out.final_obs):
            assert a.shape == (6, 39) and a.dtype == np.float32
            assert np.all(a[0:2, 17:] == 0) and np.all(a[2:4, 3:] == 0)
        for a in (out.terminated, out.truncated, out.success, out.diverged):
            assert a.shape == (6,) and a.dtype == np.bool_
        assert out.reward.shape == (6,) and out.reward.dtype == np.float32
        assert np.all(np.isfinite(out.reward))


def _episode_end_run(last_action: float, backend: str
                     ) -> tuple[np.ndarray, envs.StepOutput, envs.StepOutput]:
    with envs.make(["cheetah-run"], envs_per_task=2, seed=3, max_episode_steps=3,
                   backend=backend) as p:
        p.reset()
        a = np.full((2, 6), 0.3, np.float32)
        outs = [p.step(a) for _ in range(3)]
        after = p.step(np.full((2, 6), last_action, np.float32))
        return outs[1].obs, outs[2], after


@pytest.mark.parametrize("backend", ["envpool", "engine"])
def test_episode_end_returns_final_and_reset_obs_and_ignores_no_action(backend):
    prev, end, after = _episode_end_run(0.0, backend)
    assert end.truncated.all() and not end.terminated.any()
    # The final observation continues the episode; the acting observation is a fresh reset.
    assert not np.allclose(end.final_obs, end.obs)
    assert np.abs(end.final_obs - prev).max() < np.abs(end.obs - prev).max()
    assert not after.truncated.any() and np.array_equal(after.obs, after.final_obs)
    # The first action of the new episode acts (envpool alone would ignore it).
    _, end2, after2 = _episode_end_run(1.0, backend)
    assert np.array_equal(end.obs, end2.obs)
    assert not np.allclose(after.obs, after2.obs)


@pytest.mark.parametrize("backend", ["envpool", "auto"])
def test_same_seed_same_trajectory_new_seed_differs(backend):
    def run(seed):
        with envs.make(["cheetah-run", "metaworld:reach"], envs_per_task=2, seed=seed,
                       backend=backend) as p:
            rng = np.random.default_rng(0)
            obs = [p.reset()]
            obs += [p.step(_rand(p, rng)).obs for _ in range(5)]
            return np.stack(obs)

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[:, :2], c[:, :2])


@pytest.mark.parametrize("backend", ["envpool", "engine", "auto"])
def test_reseed_restarts_sequences(backend):
    tasks = ["cheetah-run", "metaworld:reach"] if backend == "auto" else ["cheetah-run"]
    with envs.make(tasks, seed=1, backend=backend) as p:
        first = p.reset()
        p.seed(1)
        np.testing.assert_array_equal(p.reset(), first)


@pytest.mark.parametrize("tasks,backend", [
    (["cheetah-run"], "engine"), (["cheetah-run"], "envpool"), (["gym:Pendulum-v1"], "auto"),
    (["cheetah-run", "metaworld:reach"], "auto")])
def test_reseed_refuses_what_make_refuses(tasks, backend):
    # pool.seed() used to take int(seed): 1.5 became 1, "7" became 7, silently
    from mtrl.envs.gym import GymVectorEnv

    with envs.make(tasks, seed=1, backend=backend) as p:
        first = p.reset()
        for bad in (1.5, "7", None, True, float("nan"), 2**63):
            with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63"):
                p.seed(bad)
        with pytest.raises(ValueError, match="seed must be an int"):
            GymVectorEnv(p).reset(seed=1.5)
        p.seed(1.0)  # an integral float, as make() takes
        np.testing.assert_array_equal(p.reset(), first)
        if "metaworld:reach" in tasks:
            return  # (a mixed pool takes no env_seeds)
        # env_seeds: 1.7 and True were truncated, 2**64 overflowed unnamed, and a wrong count
        # reached envpool (an assert; under python -O an abort).
        n = p.num_envs
        p.seed(1)
        for bad, match in (([1.7] * n, "must hold ints"), ([True] * n, "must hold ints"),
                           ([2**64] * n, "must hold ints"), ([1] * (n + 1), f"must have {n} "),
                           (5, f"must be a list of {n} ints")):
            with pytest.raises(ValueError, match=f"env_seeds {match}"):
                p.seed(0, env_seeds=bad)
        np.testing.assert_array_equal(p.reset(), first)  # the refused calls changed nothing


def test_bad_actions_raise_and_out_of_range_clips():
    with envs.make(["cheetah-run", "pendulum-swingup"], seed=0) as p:
        with pytest.raises(RuntimeError, match="reset"):
            p.step(np.zeros((2, 6), np.float32))
        p.reset()
        with pytest.raises(ValueError, match="float32"):
            p.step(np.zeros((2, 6), np.float64))
        with pytest.raises(ValueError, match=r"\(2, 6\), got \(2, 5\)"):
            p.step(np.zeros((2, 5), np.float32))
        a = np.zeros((2, 6), np.float32)
        a[1, 0] = np.nan
        with pytest.raises(ValueError, match=r"NaN or inf for envs \[1\]"):
            p.step(a)
        a[1, 0], a[1, 3] = 0.0, np.nan  # NaN in padding that pendulum does not use: fine
        p.step(a)

    def after(v):
        with envs.make(["pendulum-swingup"], seed=0) as p:
            p.reset()
            return p.step(np.full((1, 1), v, np.float32)).obs

    np.testing.assert_array_equal(after(5.0), after(1.0))
    assert not np.array_equal(after(0.5), after(1.0))


def test_check_actions_rule():
    with envs.make(["cheetah-run", "pendulum-swingup"], envs_per_task=6, seed=0) as p:
        p.reset()
        a = np.zeros((12, 6), np.float32)
        a[0, :3] = [2.0, -3.5, 0.25]
        a[6, 0], a[6, 1], a[7, 5] = -7.0, np.nan, -np.inf  # padding of pendulum envs 6, 7
        c = p.check_actions(a)
        assert c.dtype == np.float32 and c.flags.c_contiguous and c is not a
        assert c[0, :3].tolist() == [1.0, -1.0, 0.25]
        assert c[6, :2].tolist() == [-1.0, 0.0] and c[7, 5] == 0.0
        assert np.array_equal(c[1:6], a[1:6])
        np.testing.assert_array_equal(p.check_actions(np.asfortranarray(a)), c)
        a[:, 0] = np.inf
        with pytest.raises(ValueError, match=r"for envs \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] \.\.\.$"):
            p.check_actions(a)


def test_envpool_backend_has_no_state():
    with envs.make(["pendulum-swingup"], backend="envpool") as p:
        with pytest.raises(NotImplementedError, match="envpool"):
            p.get_state()
        with pytest.raises(NotImplementedError, match="envpool"):
            p.set_state({})


def test_closed_pool_rejects_use():
    p = envs.make(["pendulum-swingup"])
    p.reset()
    p.close()
    p.close()
    with pytest.raises(RuntimeError, match="closed"):
        p.step(np.zeros((1, 1), np.float32))


def test_metaworld_success_flag_is_reported():
    with envs.make(["metaworld:reach"], envs_per_task=2, seed=0, max_episode_steps=5) as p:
        p.reset()
        for _ in range(5):
            out = p.step(np.zeros((2, 4), np.float32))
        assert out.truncated.all() and out.success.dtype == np.bool_
        assert p.max_episode_steps.tolist() == [5]


def test_step_into_replay_stores_final_obs_and_used_actions():
    from mtrl.replay import ReplayBuffer

    with envs.make(["cheetah-run", "pendulum-swingup"], envs_per_task=2, seed=0,
                   max_episode_steps=2) as p:
        replay = ReplayBuffer(p.num_tasks, 16, p.obs_dim, p.action_dim, p.num_envs)
        obs = p.reset()
        a = np.full((p.num_envs, p.action_dim), 3.0, np.float32)  # clipped to 1 when stored
        out1 = p.step_into(replay, obs, a)
        out2 = p.step_into(replay, out1.obs, a)
        assert replay.sizes.tolist() == [4, 4]
        assert out2.truncated.all()
        batch = replay.fetch(np.arange(4))  # ring order of task 0: env 0 step 1, env 1 step 1, ...
        stored = np.asarray(batch.next_obs)
        assert any(np.allclose(stored[i], out2.final_obs[0]) for i in range(4))
        assert not any(np.allclose(stored[i], out2.obs[0]) for i in range(4))
        assert np.all(np.asarray(batch.action)[:, :6] == 1.0)


def test_gym_vector_env_view():
    from mtrl.envs.gym import GymVectorEnv

    env = GymVectorEnv(envs.make(["pendulum-swingup", "cheetah-run"], seed=0,
                                 max_episode_steps=2))
    obs, info = env.reset(seed=4)
    assert obs.shape == (2, 17) and env.action_space.shape == (2, 6)
    assert info["task_id"].tolist() == [0, 1]
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["_final_obs"].tolist() == [False, False]  # gymnasium's mask (was a KeyError)
    obs, reward, term, trunc, info = env.step(np.zeros((2, 6), np.float32))
    assert trunc.all() and not np.allclose(info["final_obs"], obs)
    assert info["_final_obs"].tolist() == [True, True]
    assert np.array_equal(info["final_obs"][info["_final_obs"]], info["final_obs"])
    again, _ = env.reset(seed=4)
    with pytest.raises(ValueError, match="options"):
        env.reset(options={"x": 1})
    assert env.discrete.tolist() == [False, False]
    env.close()


def test_gym_vector_env_exposes_discrete_tasks():
    from mtrl.envs.gym import GymVectorEnv

    env = GymVectorEnv(envs.make(["cheetah-run", "gym:CartPole-v1"], seed=0))
    assert env.discrete.tolist() == [False, True]
    env.discrete[:] = False  # a copy: the pool's flags stay
    assert env.pool.discrete.tolist() == [False, True]
    env.reset(seed=0)
    a = np.zeros((2, 6), np.float32)
    a[1, 1] = 0.5  # CartPole (2 actions) steps through the same Box action space
    _, reward, *_ = env.step(a)
    assert reward[1] == 1.0
    env.close()


def test_gym_vector_env_infos_are_the_callers_and_close_sets_closed():
    # gymnasium's contract: new info data on every call (users keep and edit it). The info's
    # task_id was the pool's own array: editing it refiled step_into's transitions.
    from mtrl.envs.gym import GymVectorEnv
    from mtrl.replay import ReplayBuffer

    env = GymVectorEnv(envs.make(["pendulum-swingup", "cheetah-run"], seed=0))
    obs, info = env.reset(seed=1)
    info["task_id"][:] = 0
    _, _, _, _, info = env.step(np.zeros((2, 6), np.float32))
    info["task_id"][:] = 0
    assert env.pool.task_ids.tolist() == [0, 1]
    replay = ReplayBuffer(2, 4, env.pool.obs_dim, env.pool.action_dim, 2)
    env.pool.step_into(replay, obs, np.zeros((2, 6), np.float32))
    assert replay.sizes.tolist() == [1, 1]
    env.close()
    assert env.closed and env.pool._closed


def test_step_into_checks_the_replay_and_obs_before_stepping():
    from mtrl.replay import ReplayBuffer

    with envs.make(["pendulum-swingup", "cheetah-run"], seed=0) as p:
        obs = p.reset()
        a = np.zeros((p.num_envs, p.action_dim), np.float32)
        state = p.get_state()
        bad = [(ReplayBuffer(2, 4, p.obs_dim, p.action_dim, 3), obs, "num_envs is 3"),
               (ReplayBuffer(2, 4, p.obs_dim + 1, p.action_dim, 2), obs, "obs_dim is 18"),
               (ReplayBuffer(2, 4, p.obs_dim, p.action_dim - 1, 2), obs, "action_dim is 5"),
               (ReplayBuffer(1, 4, p.obs_dim, p.action_dim, 2), obs, "num_tasks is 1"),
               (ReplayBuffer(2, 4, p.obs_dim, p.action_dim, 2), obs[:, :-1], r"obs must have")]
        for replay, o, match in bad:
            with pytest.raises(ValueError, match=match):
                p.step_into(replay, o, a)
        # Refused by the buffer only after every env stepped (the step's obs lost), until the
        # pool checked them too: values the buffer cannot store, a closed buffer, no buffer.
        fits = ReplayBuffer(2, 4, p.obs_dim, p.action_dim, 2)
        nan_obs, huge_obs = obs.copy(), obs.astype(np.float64)
        nan_obs[1, 2], huge_obs[0, 1] = np.nan, 1e39
        for replay, o, error, match in (
                (fits, nan_obs, ValueError, r"obs\[1, 2\] = nan is not a finite float32"),
                (fits, huge_obs, ValueError, r"obs\[0, 1\] = 1e\+39"),
                (fits, obs.astype(object), TypeError, "obs must hold real numbers"),
                (None, obs, TypeError, "replay must be a mtrl.replay.ReplayBuffer")):
            with pytest.raises(error, match=match):
                p.step_into(replay, o, a)
        fits.close()
        with pytest.raises(RuntimeError, match="replay buffer is closed"):
            p.step_into(fits, obs, a)
        # No env stepped: the pool's state is the one before the calls.
        after = p.get_state()
        assert all(np.array_equal(x[0], y[0]) for x, y in zip(state["envs"], after["envs"]))
        p.step_into(ReplayBuffer(3, 4, p.obs_dim, p.action_dim, 2), obs, a)  # more tasks: fine


def test_read_only_actions_are_taken():
    # Inputs are only read: a read-only array (a memmap, a frozen buffer) was refused with
    # "array is not writeable".
    with envs.make(["cheetah-run"], envs_per_task=2, seed=0, backend="engine") as p, \
            envs.make(["cheetah-run"], envs_per_task=2, seed=0, backend="engine") as q:
        p.reset()
        q.reset()
        writable = np.full((p.num_envs, p.action_dim), 0.5, np.float32)
        read_only = writable.copy()
        read_only.flags.writeable = False
        np.testing.assert_array_equal(p.step(read_only).obs, q.step(writable).obs)


@pytest.mark.parametrize("tasks,backend", [(["cartpole-balance"], "envpool"),
                                           (["gym:CartPole-v1"], "auto")])
def test_every_documented_seed_works_on_every_backend(tasks, backend):
    # envpool takes int32 seeds, gymnasium non-negative ones: both once raised (AssertionError,
    # gymnasium.error.Error) for seeds make() accepts.
    for seed in (-3, 2**31 - 1, 2**31 + 5, -2**63, 2**63 - 2):
        with envs.make(tasks, envs_per_task=2, seed=seed, backend=backend) as p:
            p.reset()
            p.step(np.zeros((2, p.action_dim), np.float32))
            p.seed(seed)
            p.reset()
    with envs.make(tasks, envs_per_task=2, seed=7, backend=backend) as p, \
            envs.make(tasks, envs_per_task=2, seed=7 + 2**31, backend=backend) as q:
        if backend == "envpool":  # wrapped mod 2**31: the same envs as seed 7
            assert np.array_equal(p.reset(), q.reset())


def test_metaworld_is_goal_observable_with_200_step_episodes():
    # brc-spec §7: BRC builds MetaWorld goal-observable in a 200-step TimeLimit. envpool's defaults
    # hid the goal (obs[36:39] all zero, though it moves every episode) and ran 500 steps.
    with envs.make(["metaworld:reach"], envs_per_task=3, seed=0, max_episode_steps=None) as p:
        assert p.max_episode_steps.tolist() == [200]
        goals = [p.reset()[:, 36:39]]
        a = np.zeros((3, p.action_dim), np.float32)
        for step in range(200):
            out = p.step(a)
        assert out.truncated.all() and not out.terminated.any()  # the 200th step ends it
        goals.append(out.obs[:, 36:39])  # the next episode's goal
    goals = np.concatenate(goals)
    assert np.all(np.abs(goals).sum(axis=1) > 0.1)  # the goal is observed
    assert len({tuple(np.round(g, 4)) for g in goals}) == 6  # and differs per env and episode


def test_envpool_backend_warns_where_its_port_departs_from_dm_control():
    from mtrl.envs.envpool_backend import ENVPOOL_DEVIATIONS

    assert set(ENVPOOL_DEVIATIONS) == {"dmc:cartpole-two_poles", "dmc:cartpole-three_poles"}
    with pytest.warns(UserWarning, match="cartpole-two_poles starts its extra poles"):
        envs.make(["cartpole-two_poles"], backend="envpool").close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs.make(["cartpole-two_poles"], backend="auto").close()  # the engine: no warning
        envs.make(["cartpole-balance"], backend="envpool").close()


@pytest.mark.parametrize("backend", ["engine", "envpool"])
def test_a_pool_used_from_several_threads_runs_one_call_at_a_time(backend):
    # The C++ step releases the GIL: two threads stepping one engine pool stepped the same MuJoCo
    # data at once and crashed (a segfault, or MuJoCo's "nefc under-allocation"); envpool's pools
    # broke the same way. Calls now run one at a time, each with its own outputs.
    import threading

    tasks = ["cartpole-balance", "walker-walk"] + (["cheetah-run"] if backend == "engine" else [])
    with envs.make(tasks, envs_per_task=4, seed=0, num_threads=2, backend=backend,
                   max_episode_steps=5) as p:
        p.reset()
        errors = []

        def work(seed):
            rng = np.random.default_rng(seed)
            try:
                for _ in range(150):
                    a = rng.uniform(-1, 1, (p.num_envs, p.action_dim)).astype(np.float32)
                    out = p.step(a)
                    assert np.isfinite(out.obs).all() and out.obs.shape == (p.num_envs, p.obs_dim)
                    if backend == "engine" and seed == 0:
                        p.set_state(p.get_state())
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
