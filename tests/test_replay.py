"""Tests of mtrl.replay against a plain-Python reference buffer and NumPy float64 references."""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import pytest
from scipy import stats

from mtrl.replay import ReplayBatch, ReplayBuffer, ReplayMemoryError

# ----------------------------------------------------------------------------- reference model


class RefBuffer:
    """Per-task FIFO rings storing every field of every transition, in plain Python."""

    def __init__(self, num_tasks: int, capacity: int, num_envs: int) -> None:
        self.C = capacity
        self.rings: list[list[dict | None]] = [[None] * capacity for _ in range(num_tasks)]
        self.pos = [0] * num_tasks
        self.size = [0] * num_tasks
        self.serial = 0
        self.streams: list[list[tuple[int, int, int]]] = [[] for _ in range(num_envs)]

    def add(self, task_id, obs, action, reward, term, trunc, next_obs) -> None:
        for k in range(len(task_id)):
            t = int(task_id[k])
            i = self.pos[t]
            self.rings[t][i] = dict(obs=obs[k].copy(), action=action[k].copy(),
                                    reward=np.float32(reward[k]), term=bool(term[k]),
                                    trunc=bool(trunc[k]), next_obs=next_obs[k].copy(), env=k,
                                    serial=self.serial, task=t, slot=i)
            self.streams[k].append((t, i, self.serial))
            self.serial += 1
            self.pos[t] = (i + 1) % self.C
            self.size[t] = min(self.size[t] + 1, self.C)

    def live(self) -> np.ndarray:
        return np.array([t * self.C + i for t in range(len(self.size)) for i in range(self.size[t])])

    def get(self, g: int) -> dict:
        return self.rings[g // self.C][g % self.C]

    def following(self, x: dict) -> dict | None:
        """The env's next transition if it continues x's stream (same task, obs == next_obs)."""
        stream = self.streams[x["env"]]
        j = next(j for j in range(len(stream) - 1, -1, -1) if stream[j][2] == x["serial"])
        if j + 1 == len(stream):
            return None
        t, i, serial = stream[j + 1]
        y = self.rings[t][i]
        if y is None or y["serial"] != serial or t != x["task"]:
            return None
        return y if y["obs"].tobytes() == x["next_obs"].tobytes() else None

    def nstep(self, g: int, n: int, gamma: float) -> tuple[float, np.ndarray, float, float]:
        cur = self.get(g)
        ret, disc = 0.0, 1.0
        for j in range(n):
            ret += disc * float(cur["reward"])
            disc *= gamma
            if cur["term"] or cur["trunc"] or j + 1 == n:
                break
            nxt = self.following(cur)
            if nxt is None:
                break
            cur = nxt
        mask = 0.0 if cur["term"] and not cur["trunc"] else 1.0
        return ret, cur["next_obs"], mask, disc


def run_envs(buf, ref, steps, *, task_of_env, seed=0, p_end=0.1, p_jump=0.0, p_switch=0.0,
             num_tasks=None):
    """Steps fake envs (random obs, random episode ends), adding to buf and ref each step."""
    rng = np.random.default_rng(seed)
    n, o, a = len(task_of_env), buf.obs_dim, buf.action_dim
    task = np.array(task_of_env, dtype=np.int64)
    obs = rng.standard_normal((n, o)).astype(np.float32)
    for _ in range(steps):
        action = rng.uniform(-1, 1, (n, a)).astype(np.float32)
        reward = rng.standard_normal(n).astype(np.float32)
        nxt = rng.standard_normal((n, o)).astype(np.float32)
        end = rng.random(n) < p_end
        kind = rng.integers(0, 3, n)  # 0 terminated, 1 truncated, 2 both
        term = end & (kind != 1)
        trunc = end & (kind != 0)
        buf.add(task, obs, action, reward, term, trunc, nxt)
        if ref is not None:
            ref.add(task, obs, action, reward, term, trunc, nxt)
        obs = nxt.copy()
        reset = end | (rng.random(n) < p_jump)  # a jump: the stream breaks without an end flag
        obs[reset] = rng.standard_normal((int(reset.sum()), o)).astype(np.float32)
        if p_switch and num_tasks:
            switch = rng.random(n) < p_switch
            task[switch] = rng.integers(0, num_tasks, int(switch.sum()))


def check_against_ref(buf: ReplayBuffer, ref: RefBuffer, n_step: int = 1, gamma: float = 0.9):
    live = ref.live()
    assert np.array_equal(buf.sizes, ref.size)
    got = buf.fetch(live, n_step=n_step, gamma=gamma)
    for row, g in enumerate(live):
        x = ref.get(int(g))
        ret, next_obs, mask, disc = ref.nstep(int(g), n_step, gamma)
        assert np.array_equal(got.obs[row], x["obs"]), g
        assert np.array_equal(got.action[row], x["action"]), g
        assert np.array_equal(got.next_obs[row], next_obs), g
        assert got.reward[row] == pytest.approx(ret, rel=1e-6, abs=1e-6), g
        assert got.mask[row] == mask, g
        assert got.discount[row] == pytest.approx(disc, rel=1e-6), g
        assert got.task_id[row] == x["task"]


# ----------------------------------------------------------------------------- storage


def test_estimate_nbytes_matches_allocation():
    kw = dict(num_tasks=3, capacity_per_task=1000, obs_dim=17, action_dim=6, num_envs=5)
    buf = ReplayBuffer(**kw)
    assert buf.nbytes == ReplayBuffer.estimate_nbytes(**kw)
    # obs stored once: well under two obs arrays per transition
    assert buf.nbytes < 3 * 1000 * (2 * 17 + 6) * 4


@pytest.mark.parametrize("n_step", [1, 3, 6])
def test_contents_wraparound_and_nstep_match_reference(n_step):
    buf = ReplayBuffer(3, 20, 4, 2, 6, seed=0)
    ref = RefBuffer(3, 20, 6)
    run_envs(buf, ref, 19, task_of_env=[0, 0, 1, 2, 2, 2], p_end=0.15, p_jump=0.05)
    assert len(buf) == 20 + 19 + 20 and buf.size(1) == 19
    check_against_ref(buf, ref, n_step=n_step)


@pytest.mark.parametrize("action_dim", [12, 13, 38])  # record = 1 line up to 12 floats
def test_wide_actions_round_trip(tmp_path, action_dim):
    buf = ReplayBuffer(2, 10, 5, action_dim, 3, seed=0)
    ref = RefBuffer(2, 10, 3)
    run_envs(buf, ref, 13, task_of_env=[0, 1, 1], p_end=0.2)
    check_against_ref(buf, ref, n_step=2)
    buf.save(tmp_path)
    assert np.load(tmp_path / "action.npy").shape == (20, action_dim)
    check_against_ref(ReplayBuffer.load(tmp_path), ref, n_step=2)


def test_task_switch_and_many_envs_per_small_ring():
    # 8 envs into rings of 3: one call overwrites transitions inserted by the same call.
    buf = ReplayBuffer(2, 3, 3, 1, 8, seed=0)
    ref = RefBuffer(2, 3, 8)
    run_envs(buf, ref, 40, task_of_env=[0] * 5 + [1] * 3, p_end=0.2, p_switch=0.2, num_tasks=2)
    check_against_ref(buf, ref, n_step=4)


def test_final_observations_at_episode_ends():
    buf = ReplayBuffer(1, 10, 2, 1, 1)
    o = lambda v: np.full((1, 2), v, np.float32)  # noqa: E731
    f = np.zeros(1, bool)
    t = np.ones(1, bool)
    z = np.zeros((1, 1), np.float32)
    buf.add([0], o(1), z, [0.0], f, f, o(2))
    buf.add([0], o(2), z, [0.0], t, f, o(3))       # terminal: final obs 3
    buf.add([0], o(10), z, [0.0], f, t, o(11))     # truncated: final obs 11
    buf.add([0], o(20), z, [0.0], f, f, o(21))
    got = buf.fetch([0, 1, 2, 3])
    assert got.next_obs[:, 0].tolist() == [2, 3, 11, 21]
    assert got.mask.tolist() == [1, 0, 1, 1]
    assert buf.final_obs_in_use == 2
    assert buf.nbytes > ReplayBuffer.estimate_nbytes(  # the pool grew by one chunk
        num_tasks=1, capacity_per_task=10, obs_dim=2, action_dim=1, num_envs=1)
    for _ in range(20):  # wrap twice: the pool rows are freed with their transitions
        buf.add([0], o(20), z, [0.0], f, f, o(20))
    assert buf.final_obs_in_use == 0


def test_mask_follows_spec_5_4():
    buf = ReplayBuffer(1, 4, 1, 1, 4)
    term = np.array([0, 1, 0, 1], bool)
    trunc = np.array([0, 0, 1, 1], bool)
    buf.add(np.zeros(4, np.int64), np.zeros((4, 1)), np.zeros((4, 1)), np.zeros(4), term, trunc,
            np.zeros((4, 1)))
    assert buf.fetch([0, 1, 2, 3]).mask.tolist() == [1, 0, 1, 1]


def test_bool_flags_with_any_nonzero_byte_are_true():
    # NumPy reads any nonzero byte of a bool array as True (e.g. np.frombuffer or .view(bool) of
    # uint8 data); the buffer must too (it once took byte 2 for "truncated" and kept the bootstrap).
    buf = ReplayBuffer(1, 8, 1, 1, 4)
    term = np.array([2, 255, 0, 0], np.uint8).view(np.bool_)
    trunc = np.array([0, 0, 4, 0], np.uint8).view(np.bool_)
    buf.add(np.zeros(4, np.int64), np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32),
            np.zeros(4, np.float32), term, trunc, np.ones((4, 1), np.float32))
    assert buf.fetch([0, 1, 2, 3]).mask.tolist() == [0, 0, 1, 1]
    assert buf.final_obs_in_use == 3  # three episode ends


def test_non_native_byte_order_arrays_are_read_by_value():
    # A big-endian float32/int64/float64 array has the same dtype number as the native one: it
    # must be converted (by value), not read as raw native bytes.
    be = lambda x, t: np.asarray(x, np.dtype(t).newbyteorder(">"))  # noqa: E731
    buf = ReplayBuffer(2, 4, 2, 1, 1, alpha=1.0)
    buf.add(be([1], "i8"), be([[1.0, 2.0]], "f4"), be([[0.5]], "f4"), be([3.0], "f4"),
            np.array([False]), np.array([False]), be([[1.5, 2.5]], "f4"))
    got = buf.fetch([4])
    assert got.obs.tolist() == [[1.0, 2.0]] and got.action.tolist() == [[0.5]]
    assert got.reward.tolist() == [3.0] and got.next_obs.tolist() == [[1.5, 2.5]]
    assert got.task_id.tolist() == [1]
    buf.update_priorities(be([4], "i8"), be([2.0], "f8"))
    assert buf.tree_levels(1)[0][0] == 2.0 and buf.max_priority == 2.0
    out = buf.allocate_batch(1)
    out = ReplayBatch(**{k: (be(v, v.dtype) if k == "reward" else v) for k, v in vars(out).items()})
    with pytest.raises(TypeError, match="reward"):  # an output array is written, never converted
        buf.sample(1, out=out)


# ----------------------------------------------------------------------------- sampling


def filled(num_tasks=3, capacity=40, envs=(0, 1, 1, 2, 2, 2), steps=30, **kw):
    buf = ReplayBuffer(num_tasks, capacity, 2, 1, len(envs), **kw)
    run_envs(buf, None, steps, task_of_env=list(envs), p_end=0.05)
    return buf


def test_uniform_frequencies_chi_square():
    buf = filled()  # sizes 30, 40 (wrapped), 40 (wrapped)
    assert buf.sizes.tolist() == [30, 40, 40]
    counts = np.zeros(3 * 40)
    for _ in range(60):
        counts += np.bincount(buf.sample(1024).index, minlength=120)
    live = counts[np.r_[0:30, 40:120]]
    assert counts.sum() == live.sum()
    assert stats.chisquare(live).pvalue > 1e-4


def test_stratified_counts_and_frequencies():
    buf = filled()
    b = buf.sample(300, stratified=True)
    assert np.bincount(b.task_id, minlength=3).tolist() == [100, 100, 100]
    counts = np.zeros(120)
    extra = np.zeros(3)
    for _ in range(300):
        b = buf.sample(301, stratified=True)  # 301 % 3 == 1: one task gets an extra row
        per_task = np.bincount(b.task_id, minlength=3)
        assert sorted(per_task.tolist()) == [100, 100, 101]
        extra += per_task == 101
        counts += np.bincount(b.index, minlength=120)
    for lo, hi in ((0, 30), (40, 80), (80, 120)):
        assert stats.chisquare(counts[lo:hi]).pvalue > 1e-4
    assert stats.chisquare(extra).pvalue > 1e-4


def test_stratified_smaller_batch_than_tasks():
    buf = filled()
    seen = np.zeros(3)
    for _ in range(300):
        b = buf.sample(2, stratified=True)
        assert len(set(b.task_id.tolist())) == 2  # two distinct tasks, one row each
        seen[b.task_id] += 1
    assert stats.chisquare(seen).pvalue > 1e-4


def set_random_priorities(buf, rng):
    live = np.concatenate([t * buf.capacity_per_task + np.arange(buf.size(t))
                           for t in range(buf.num_tasks)])
    p = rng.uniform(0.0, 3.0, live.size)
    p[::7] = 0.0  # zero priority: never sampled
    buf.update_priorities(live, p)
    return live, p


@pytest.mark.parametrize("stratified", [False, True])
def test_prioritized_probabilities_and_weights(stratified):
    rng = np.random.default_rng(1)
    buf = filled(alpha=0.7)
    live, p = set_random_priorities(buf, rng)
    C = buf.capacity_per_task
    pa = np.power(p.astype(np.float64), 0.7)
    task = live // C
    if stratified:
        prob = pa / np.bincount(task, weights=pa)[task]
        n = buf.sizes[task]
    else:
        prob = pa / pa.sum()
        n = np.full(live.size, live.size)
    prob_of = dict(zip(live.tolist(), prob))
    n_of = dict(zip(live.tolist(), n))
    counts = dict.fromkeys(live.tolist(), 0)
    for _ in range(100):
        b = buf.sample(999, prioritized=True, stratified=stratified, beta=0.5)
        w_ref = np.array([(n_of[i] * prob_of[i]) ** -0.5 for i in b.index.tolist()])
        np.testing.assert_allclose(b.weight, w_ref / w_ref.max(), rtol=1e-5)
        for i in b.index.tolist():
            counts[i] += 1
    obs = np.array([counts[i] for i in live.tolist()], dtype=float)
    assert obs[p == 0].sum() == 0
    if stratified:
        for t in range(3):
            sel = (task == t) & (p > 0)
            expected = prob[sel] / prob[sel].sum() * obs[sel].sum()
            assert stats.chisquare(obs[sel], expected).pvalue > 1e-4
    else:
        sel = p > 0
        assert stats.chisquare(obs[sel], prob[sel] * obs.sum()).pvalue > 1e-4


def check_tree(levels: list[np.ndarray]) -> None:
    """node i of level j+1 == ((c0 + c1) + ...) + c7 of its children, exactly; padding 0."""
    for lower, upper in zip(levels[:-1], levels[1:]):
        sums = np.cumsum(lower.reshape(-1, 8), axis=1)[:, -1]  # cumsum sums sequentially
        assert np.array_equal(upper[:sums.size], sums)
        assert np.all(upper[sums.size:] == 0)
    assert levels[-1][0] >= 0 and np.all(levels[-1][1:] == 0)


def test_sum_tree_invariants_after_random_updates():
    rng = np.random.default_rng(2)
    buf = filled(capacity=37, alpha=0.6)  # non-power-of-8 capacity
    for _ in range(20):
        idx = rng.integers(0, 3 * 37, 50)
        idx = idx[idx % 37 < buf.sizes[idx // 37]]
        pri = rng.exponential(1.0, idx.size)
        buf.update_priorities(idx, pri)
    roots = []
    for t in range(3):
        levels = buf.tree_levels(t)
        assert len(levels) == 3 and levels[0].size == 40
        check_tree(levels)
        assert np.all(levels[0][buf.size(t):] == 0)
        roots.append(levels[-1][0])
    top = buf.top_levels()
    check_tree(top)
    assert top[0][:3].tolist() == roots
    big = ReplayBuffer(2, 5000, 1, 1, 1)
    run_envs(big, None, 700, task_of_env=[1])
    big.update_priorities(5000 + rng.integers(0, 700, 300), rng.exponential(1.0, 300))
    check_tree(big.tree_levels(1))
    assert big.tree_levels(1)[-1][0] == pytest.approx(
        np.sum(big.tree_levels(1)[0].astype(np.float64)), rel=1e-12)


def test_leaves_are_priority_pow_alpha_and_new_get_max():
    buf = filled(num_tasks=1, capacity=16, envs=(0,), steps=8, alpha=0.6)
    buf.update_priorities([0, 3], [5.0, 0.25])
    leaves = buf.tree_levels(0)[0]
    np.testing.assert_allclose(leaves[[0, 3, 1]], [5**0.6, 0.25**0.6, 1.0], rtol=1e-14)
    assert buf.max_priority == 5.0
    buf.add([0], np.zeros((1, 2)), np.zeros((1, 1)), [0.0], [False], [False], np.zeros((1, 2)))
    assert buf.tree_levels(0)[0][8] == pytest.approx(5**0.6, rel=1e-14)


def test_same_seed_same_samples_new_seed_differs():
    a, b, c = filled(seed=5), filled(seed=5), filled(seed=6)
    for kw in (dict(), dict(stratified=True), dict(prioritized=True, n_step=3)):
        xa, xb, xc = (buf.sample(64, **kw).index.copy() for buf in (a, b, c))
        assert np.array_equal(xa, xb)
        assert not np.array_equal(xa, xc)


def test_out_arrays_and_internal_batch():
    buf = filled()
    out = buf.allocate_batch(32)
    assert buf.sample(32, out=out) is out
    for name in ("obs", "action", "reward", "next_obs", "mask", "discount", "weight"):
        assert getattr(out, name).dtype == np.float32 and getattr(out, name).flags.c_contiguous
    assert out.index.dtype == np.int64 and out.task_id.dtype == np.int64
    first = buf.sample(16)
    assert buf.sample(16) is first  # out=None reuses the buffer's own batch


def test_pin_memory_without_cuda_raises():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        buf = ReplayBuffer(1, 4, 2, 1, 1, pin_memory=True)
        assert torch.from_numpy(buf.allocate_batch(4).obs).is_pinned()
    else:
        with pytest.raises(ValueError, match="pin_memory"):
            ReplayBuffer(1, 4, 2, 1, 1, pin_memory=True)


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    buf = ReplayBuffer(3, 25, 4, 2, 6, alpha=0.5, seed=9)
    ref = RefBuffer(3, 25, 6)
    run_envs(buf, ref, 40, task_of_env=[0, 0, 1, 2, 2, 2], p_end=0.1, p_jump=0.05)
    set_random_priorities(buf, rng)
    buf.sample(10, prioritized=True)
    buf.save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["size"] == [25, 25, 25] and meta["num_tasks"] == 3
    assert np.load(tmp_path / "b" / "obs.npy").shape == (75, 4)  # plain numpy arrays
    loaded = ReplayBuffer.load(tmp_path / "b")
    check_against_ref(loaded, ref, n_step=3)
    for t in range(3):
        for x, y in zip(loaded.tree_levels(t), buf.tree_levels(t), strict=True):
            assert np.array_equal(x, y)
    assert loaded.max_priority == buf.max_priority
    for kw in (dict(), dict(prioritized=True, stratified=True, n_step=2)):
        x, y = buf.sample(50, **kw), loaded.sample(50, **kw)
        for name in ("index", "obs", "next_obs", "reward", "weight"):
            assert np.array_equal(getattr(x, name), getattr(y, name))
    # Both continue identically after more inserts.
    run_envs(buf, None, 7, task_of_env=[0, 0, 1, 2, 2, 2], seed=4)
    run_envs(loaded, None, 7, task_of_env=[0, 0, 1, 2, 2, 2], seed=4)
    assert np.array_equal(buf.fetch(ref.live(), n_step=4).next_obs,
                          loaded.fetch(ref.live(), n_step=4).next_obs)


@pytest.mark.parametrize("field,kw", [
    ("num_tasks", dict(num_tasks=2)), ("capacity_per_task", dict(capacity_per_task=30)),
    ("obs_dim", dict(obs_dim=5)), ("action_dim", dict(action_dim=3)),
    ("num_envs", dict(num_envs=4)), ("alpha", dict(alpha=0.6))])
def test_load_into_different_shape_names_field(tmp_path, field, kw):
    buf = ReplayBuffer(3, 25, 4, 2, 6, alpha=0.5)
    buf.save(tmp_path)
    args = dict(num_tasks=3, capacity_per_task=25, obs_dim=4, action_dim=2, num_envs=6, alpha=0.5)
    args.update(kw)
    other = ReplayBuffer(**args)
    with pytest.raises(ValueError, match=field):
        other.load_into(tmp_path)


def test_load_rejects_corrupt_arrays(tmp_path):
    buf = ReplayBuffer(1, 8, 2, 1, 2)
    run_envs(buf, None, 3, task_of_env=[0, 0])
    buf.save(tmp_path)
    before = buf.fetch([0, 1, 2]).obs.copy()
    nxt = np.load(tmp_path / "next.npy")
    nxt[0] = 7  # an unused slot: not a later live slot
    np.save(tmp_path / "next.npy", nxt)
    with pytest.raises(ValueError, match="next.npy"):
        buf.load_into(tmp_path)
    np.save(tmp_path / "next.npy", nxt.astype(np.int32))
    with pytest.raises(ValueError, match="dtype"):
        buf.load_into(tmp_path)
    np.save(tmp_path / "obs.npy", np.zeros((9, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        buf.load_into(tmp_path)
    assert np.array_equal(buf.fetch([0, 1, 2]).obs, before)  # unchanged on failure
    with pytest.raises(FileNotFoundError):
        buf.load_into(tmp_path / "missing")


@pytest.mark.parametrize("name,row", [("obs.npy", 1), ("action.npy", 0), ("reward.npy", 2),
                                      ("pending_obs.npy", 1)])
def test_load_rejects_non_finite_stored_values(tmp_path, name, row):
    buf = ReplayBuffer(1, 8, 2, 1, 2)
    run_envs(buf, None, 3, task_of_env=[0, 0])
    buf.save(tmp_path)
    arr = np.load(tmp_path / name)
    arr[row] = np.nan
    np.save(tmp_path / name, arr)
    with pytest.raises(ValueError, match=f"{name}.*(NaN|infinite)"):
        buf.load_into(tmp_path)
    with pytest.raises(ValueError, match=name):
        ReplayBuffer.load(tmp_path)


# Task fills used below: task 0 empty, 1 partly filled (5 of 10), 2 wrapped (15 added: full,
# oldest at slot 5), 3 exactly full (10 added: oldest at slot 0).
FILL_ENVS = [1, 2, 2, 2, 3, 3]
PER_SLOT = ("obs", "action", "reward", "terminated", "truncated", "env", "next", "priority")


def mixed_fill_buffer(seed=0):
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(4, 10, 3, 2, 6, alpha=0.6, seed=5)
    ref = RefBuffer(4, 10, 6)
    run_envs(buf, ref, 5, task_of_env=FILL_ENVS, p_end=0.3, p_jump=0.05, seed=seed)
    set_random_priorities(buf, rng)
    buf.sample(16, prioritized=True)  # the sampler state moves on
    return buf, ref


def assert_same_state(a: ReplayBuffer, b: ReplayBuffer, live: np.ndarray) -> None:
    assert np.array_equal(a.sizes, b.sizes)
    assert a.max_priority == b.max_priority
    for t in range(a.num_tasks):
        for x, y in zip(a.tree_levels(t), b.tree_levels(t), strict=True):
            assert np.array_equal(x, y)
    for x, y in zip(a.top_levels(), b.top_levels(), strict=True):
        assert np.array_equal(x, y)
    if live.size:
        x, y = a.fetch(live, n_step=3), b.fetch(live, n_step=3)
        for name in ("obs", "action", "reward", "next_obs", "mask", "discount"):
            assert np.array_equal(getattr(x, name), getattr(y, name)), name


def assert_same_samples(a: ReplayBuffer, b: ReplayBuffer) -> None:
    for kw in (dict(), dict(prioritized=True, n_step=2, beta=0.5)):
        x, y = a.sample(64, **kw), b.sample(64, **kw)
        for name in ("index", "obs", "action", "next_obs", "reward", "mask", "weight"):
            assert np.array_equal(getattr(x, name), getattr(y, name)), name


def as_version_1(src, dst) -> None:
    """Writes the save at ``src`` (version 2) as a version-1 directory, independently of the
    C++ writer: every per-slot array at num_tasks * capacity_per_task rows, indexed by global
    slot, unused slots zero (as the previous code wrote them: never-written memory)."""
    dst.mkdir()
    meta = json.loads((src / "meta.json").read_text())
    T, C = meta["num_tasks"], meta["capacity_per_task"]
    offsets = np.concatenate([[0], np.cumsum(meta["size"])])
    for name in PER_SLOT:
        rows = np.load(src / f"{name}.npy")
        full = np.zeros((T * C, *rows.shape[1:]), rows.dtype)
        for t in range(T):
            full[t * C:t * C + meta["size"][t]] = rows[offsets[t]:offsets[t + 1]]
        np.save(dst / f"{name}.npy", full)
    for name in ("pending_obs", "last_slot", "final_obs"):
        shutil.copy(src / f"{name}.npy", dst / f"{name}.npy")
    (dst / "meta.json").write_text(json.dumps({**meta, "version": 1}))


def test_save_holds_only_the_stored_transitions(tmp_path):
    buf, ref = mixed_fill_buffer()
    assert buf.sizes.tolist() == [0, 5, 10, 10]
    buf.save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["version"] == 2
    assert meta["size"] == [0, 5, 10, 10] and meta["position"] == [0, 5, 5, 0]
    for name in PER_SLOT:
        assert np.load(tmp_path / "b" / f"{name}.npy").shape[0] == 25, name
    # Row offset[t] + slot holds slot `slot` of task t, in slot order (not oldest first).
    obs, env = np.load(tmp_path / "b" / "obs.npy"), np.load(tmp_path / "b" / "env.npy")
    offsets = [0, 0, 5, 15]
    for t in range(1, 4):
        for slot in range(buf.size(t)):
            x = ref.rings[t][slot]
            assert np.array_equal(obs[offsets[t] + slot], x["obs"])
            assert env[offsets[t] + slot] == x["env"]
    # The tree leaves of the stored slots, as priority.npy.
    leaves = np.concatenate([buf.tree_levels(t)[0][:buf.size(t)] for t in range(4)])
    assert np.array_equal(np.load(tmp_path / "b" / "priority.npy"), leaves)


@pytest.mark.parametrize("version", [2, 1])
def test_round_trip_at_every_fill_level(tmp_path, version):
    buf, ref = mixed_fill_buffer()
    buf.save(tmp_path / "b", version=version)
    rows = np.load(tmp_path / "b" / "obs.npy").shape[0]
    assert rows == (25 if version == 2 else 40)
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["version"] == version
    loaded = ReplayBuffer.load(tmp_path / "b")
    check_against_ref(loaded, ref, n_step=3)
    assert_same_state(buf, loaded, ref.live())
    assert_same_samples(buf, loaded)
    # Both continue identically: the wrapped ring overwrites from its oldest slot, the partly
    # filled and the empty ring fill on, and a second save round-trips again.
    for b in (buf, loaded):
        run_envs(b, None, 4, task_of_env=[0, 1, 2, 2, 3, 0], p_end=0.3, seed=8)
    ref_live = np.concatenate([t * 10 + np.arange(buf.size(t)) for t in range(4)])
    assert buf.sizes.tolist() == [8, 9, 10, 10]
    assert_same_state(buf, loaded, ref_live)
    assert_same_samples(buf, loaded)
    loaded.save(tmp_path / "b")
    assert_same_state(buf, ReplayBuffer.load(tmp_path / "b"), ref_live)


def test_save_keeps_the_final_observations_in_use_only(tmp_path):
    # Many episode ends and overwrites: pool rows are freed and reused out of order, so the
    # saved rows are renumbered and every link to them rewritten.
    buf = ReplayBuffer(2, 50, 3, 1, 4, seed=6)
    ref = RefBuffer(2, 50, 4)
    run_envs(buf, ref, 150, task_of_env=[0, 0, 1, 1], p_end=0.3, p_jump=0.1, seed=6)
    in_use = buf.final_obs_in_use
    assert 0 < in_use < 1024
    buf.save(tmp_path / "b")
    assert np.load(tmp_path / "b" / "final_obs.npy").shape == (in_use, 3)
    nxt = np.load(tmp_path / "b" / "next.npy")
    assert sorted(-2 - nxt[nxt <= -2]) == list(range(in_use))  # each row used once
    loaded = ReplayBuffer.load(tmp_path / "b")
    assert loaded.final_obs_in_use == in_use
    check_against_ref(loaded, ref, n_step=4)
    assert_same_samples(buf, loaded)
    for b in (buf, loaded):
        run_envs(b, None, 40, task_of_env=[0, 1, 1, 0], p_end=0.3, seed=7)
    assert_same_state(buf, loaded, np.r_[0:100])
    assert_same_samples(buf, loaded)


def test_round_trip_of_an_empty_buffer(tmp_path):
    buf = ReplayBuffer(2, 16, 3, 1, 2, seed=4)
    buf.save(tmp_path / "b")
    assert np.load(tmp_path / "b" / "obs.npy").shape == (0, 3)
    assert np.load(tmp_path / "b" / "final_obs.npy").shape == (0, 3)
    loaded = ReplayBuffer.load(tmp_path / "b")
    assert len(loaded) == 0
    with pytest.raises(RuntimeError):
        loaded.sample(4)
    for b in (buf, loaded):
        run_envs(b, None, 6, task_of_env=[0, 1], p_end=0.3, seed=2)
    assert_same_state(buf, loaded, np.r_[0:6, 16:22])
    assert_same_samples(buf, loaded)


def test_save_size_follows_the_stored_transitions(tmp_path):
    """A 1%-filled buffer saves ~1% of the bytes of a full-capacity (version 1) save."""
    buf = ReplayBuffer(1, 20_000, 16, 4, 4, seed=0)
    run_envs(buf, None, 50, task_of_env=[0] * 4, p_end=0.0)
    assert len(buf) == 200
    buf.save(tmp_path / "v2")
    buf.save(tmp_path / "v1", version=1)
    size = {v: sum(f.stat().st_size for f in (tmp_path / v).iterdir()) for v in ("v1", "v2")}
    assert size["v2"] < 0.02 * size["v1"]
    assert_same_state(buf, ReplayBuffer.load(tmp_path / "v2"), np.arange(200))


def test_version_1_writer_matches_the_previous_layout(tmp_path):
    buf, _ = mixed_fill_buffer(seed=1)
    buf.save(tmp_path / "v2")
    as_version_1(tmp_path / "v2", tmp_path / "expected")
    buf.save(tmp_path / "v1", version=1)
    # Version 1 keeps the whole final-observation pool (1024-row chunks, free rows included),
    # version 2 only the rows in use: compare the observations the links point at.
    assert np.load(tmp_path / "v1" / "final_obs.npy").shape == (1024, 3)
    for name in PER_SLOT + ("pending_obs", "last_slot"):
        x, y = (np.load(tmp_path / d / f"{name}.npy") for d in ("v1", "expected"))
        assert x.dtype == y.dtype, name
        if name == "next":
            assert np.array_equal(x >= -1, y >= -1) and np.array_equal(x[x >= -1], y[y >= -1])
            x, y = (np.load(tmp_path / d / "final_obs.npy")[-2 - a[a <= -2]]
                    for d, a in (("v1", x), ("expected", y)))
        assert np.array_equal(x, y), name
    # The independently written version-1 directory loads to the same state and samples.
    live = np.concatenate([t * 10 + np.arange(buf.size(t)) for t in range(4)])
    loaded = ReplayBuffer.load(tmp_path / "expected")
    assert_same_state(buf, loaded, live)
    assert_same_samples(buf, loaded)


def v1_fixture_buffer():
    """The buffer saved in tests/data/replay_v1 by mtrl at 398faa8 (version 1, the last code that
    wrote it): 3 tasks of 6 slots, obs 3, action 2, 4 envs; task 0 partly filled (5), task 1
    wrapped (15 added, oldest at slot 3), task 2 empty; episode ends, priorities, 5 samples."""
    rng = np.random.default_rng(20261127)
    buf = ReplayBuffer(3, 6, 3, 2, 4, alpha=0.5, seed=77)
    task = np.array([0, 1, 1, 1])
    obs = rng.standard_normal((4, 3)).astype(np.float32)
    for step in range(5):
        nxt = rng.standard_normal((4, 3)).astype(np.float32)
        end = np.array([step == 1, step == 2, step == 4, step in (0, 3)])
        trunc = np.array([False, step == 2, False, False])
        buf.add(task, obs, rng.uniform(-1, 1, (4, 2)).astype(np.float32),
                rng.standard_normal(4).astype(np.float32), end & ~trunc, trunc, nxt)
        obs = nxt.copy()
        obs[end] = rng.standard_normal((int(end.sum()), 3)).astype(np.float32)
    live = np.array([g for t in range(3) for g in range(t * 6, t * 6 + buf.size(t))])
    buf.update_priorities(live, rng.uniform(0.1, 3.0, live.size))
    buf.sample(5, prioritized=True)
    return buf


def test_loads_a_version_1_directory_of_the_previous_code(tmp_path):
    from pathlib import Path

    fixture = Path(__file__).parent / "data" / "replay_v1"
    meta = json.loads((fixture / "meta.json").read_text())
    assert meta["version"] == 1 and np.load(fixture / "obs.npy").shape == (18, 3)
    expected = v1_fixture_buffer()
    live = np.r_[0:5, 6:12]
    loaded = ReplayBuffer.load(fixture)
    assert loaded.sizes.tolist() == [5, 6, 0] and loaded.final_obs_in_use == 3
    assert_same_state(expected, loaded, live)
    assert_same_samples(expected, loaded)
    into = ReplayBuffer(3, 6, 3, 2, 4, alpha=0.5, seed=1)
    into.load_into(fixture)
    # Saved again, it is version 2 (11 rows) and loads to the same state; saving over a
    # version-1 directory replaces it.
    copy = tmp_path / "b"
    shutil.copytree(fixture, copy)
    into.save(copy)
    assert json.loads((copy / "meta.json").read_text())["version"] == 2
    assert np.load(copy / "obs.npy").shape == (11, 3)
    assert np.load(copy / "final_obs.npy").shape == (3, 3)  # the rows in use, not the pool
    again, expected = ReplayBuffer.load(copy), v1_fixture_buffer()
    assert_same_state(expected, again, live)
    assert_same_samples(expected, again)


def damage(path, name, fn):
    arr = np.load(path / name)
    np.save(path / name, fn(arr))


@pytest.mark.parametrize("case,match", [
    ("more_rows", r"obs.npy has shape \(26, 3\), expected \(25, 3\) \(format version 2: rows = "
                  r"the stored transitions, the sum of meta.json's `size`\)"),
    ("fewer_rows", r"reward.npy has shape \(24,\), expected \(25,\)"),
    ("size_grew", r"obs.npy has shape \(25, 3\), expected \(26, 3\)"),
    ("size_beyond_capacity", r"task 1 has an impossible size \(11\)"),
    ("truncated", r"next.npy is truncated: 192 bytes of data, its shape \(25,\) needs 200"),
    ("trailing", r"priority.npy has 208 bytes of data, but its shape \(25,\) needs 200 "
                 r"\(trailing bytes\)"),
    ("missing", r"terminated.npy is missing"),
    ("dtype", r"env.npy has dtype '<i8', expected '<i4'"),
    ("link_to_unused_slot", r"next.npy: slot 10 links to slot 16"),
    ("last_slot_unused", r"last_slot.npy: env 3 points at slot 5, which is not its pending"),
    ("labelled_version_1", r"obs.npy has shape \(25, 3\), expected \(40, 3\) \(format version 1"),
    ("version_3", r"format version 3; this mtrl reads versions 1, 2"),
    ("version_string", r"format version '2'"),
    ("final_rows", r"final_obs.npy has shape \(\d+, 3\), expected \(5, 3\)"),
])
def test_load_rejects_damaged_version_2_directories(tmp_path, case, match):
    buf, _ = mixed_fill_buffer()
    b = tmp_path / "b"
    buf.save(b)
    meta = json.loads((b / "meta.json").read_text())
    if case == "more_rows":
        damage(b, "obs.npy", lambda a: np.concatenate([a, a[:1]]))
    elif case == "fewer_rows":
        damage(b, "reward.npy", lambda a: a[:-1])
    elif case in ("size_grew", "size_beyond_capacity"):
        meta["size"][1] += 1 if case == "size_grew" else 6
        meta["position"][1] = meta["size"][1] % 10
    elif case in ("truncated", "trailing"):
        name = "next.npy" if case == "truncated" else "priority.npy"
        data = (b / name).read_bytes()
        (b / name).write_bytes(data[:-8] if case == "truncated" else data + bytes(8))
    elif case == "missing":
        (b / "terminated.npy").unlink()
    elif case == "dtype":
        damage(b, "env.npy", lambda a: a.astype(np.int64))
    elif case == "link_to_unused_slot":  # row 0: task 1's slot 0 (global 10) -> unused slot 6
        damage(b, "next.npy", lambda a: np.where(np.arange(a.size) == 0, 16, a))
    elif case == "last_slot_unused":  # env 3's episode ended last step: it has none pending
        assert np.load(b / "last_slot.npy")[3] == -1
        damage(b, "last_slot.npy", lambda a: np.where(np.arange(a.size) == 3, 5, a))
    elif case == "labelled_version_1":
        meta["version"] = 1
    elif case == "version_3":
        meta["version"] = 3
    elif case == "version_string":
        meta["version"] = "2"
    elif case == "final_rows":
        meta["final_rows"] = 5
    (b / "meta.json").write_text(json.dumps(meta))
    other = ReplayBuffer(4, 10, 3, 2, 6, alpha=0.6, seed=5)
    run_envs(other, None, 2, task_of_env=FILL_ENVS, seed=3)
    before = other.fetch(np.r_[10:12]).obs.copy()
    with pytest.raises(ValueError, match=match):
        other.load_into(b)
    assert other.sizes.tolist() == [0, 2, 6, 4]  # unchanged on failure
    assert np.array_equal(other.fetch(np.r_[10:12]).obs, before)
    with pytest.raises(ValueError, match=match):
        ReplayBuffer.load(b)


def test_save_version_argument(tmp_path):
    buf = ReplayBuffer(1, 4, 2, 1, 1)
    with pytest.raises(ValueError, match=r"`version` must be one of \(1, 2\), got 3"):
        buf.save(tmp_path / "b", version=3)
    with pytest.raises(TypeError, match="`version` must be an int"):
        buf.save(tmp_path / "b", version="2")
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- threads


def test_concurrent_insert_and_sample():
    buf = ReplayBuffer(2, 64, 3, 1, 4, seed=0)
    ref = RefBuffer(2, 64, 4)
    errors: list[BaseException] = []
    done = threading.Event()
    run_envs(buf, ref, 2, task_of_env=[0, 0, 1, 1])

    def sampler():
        try:
            out = buf.allocate_batch(128)
            while not done.is_set():
                b = buf.sample(128, prioritized=True, stratified=True, n_step=3, out=out)
                buf.update_priorities(b.index, np.abs(b.reward) + 0.1)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=sampler) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        run_envs(buf, ref, 300, task_of_env=[0, 0, 1, 1], seed=1, p_end=0.1)
    finally:
        done.set()
        for th in threads:
            th.join()
    assert not errors
    check_against_ref(buf, ref, n_step=3)


_FORK_WHILE_SAMPLING = """
import os, signal, threading
import numpy as np
from mtrl.replay import ReplayBuffer
buf = ReplayBuffer(1, 4096, 64, 2, 1, seed=0)
for i in range(64):
    buf.add([0], np.full((1, 64), i), np.zeros((1, 2)), [1.0], [False], [False],
            np.full((1, 64), i + 1))
stop = threading.Event()
def sampler():
    out = buf.allocate_batch(2**20)
    while not stop.is_set():
        buf.sample(2**20, out=out)
th = threading.Thread(target=sampler)
th.start()
statuses = []
for _ in range(10):
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)  # a deadlocked child dies of SIGALRM instead of hanging the test
        buf.sample(4)
        buf.add([0], np.zeros((1, 64)), np.zeros((1, 2)), [1.0], [False], [False],
                np.ones((1, 64)))
        os._exit(0 if len(buf) == 65 else 1)
    statuses.append(os.waitpid(pid, 0)[1])
stop.set()
th.join()
print(statuses)
"""


def test_fork_while_another_thread_samples():
    # fork() copied the buffer's mutex locked by the sampling thread, so the child's first call
    # waited forever; at-fork handlers now take every buffer's lock around fork().
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _FORK_WHILE_SAMPLING], capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == str([0] * 10)


# ----------------------------------------------------------------------------- bad input


def good_step(n=2, o=3, a=2):
    return dict(task_id=np.zeros(n, np.int64), obs=np.zeros((n, o), np.float32),
                action=np.zeros((n, a), np.float32), reward=np.zeros(n, np.float32),
                terminated=np.zeros(n, bool), truncated=np.zeros(n, bool),
                next_obs=np.zeros((n, o), np.float32))


@pytest.mark.parametrize("field,value,exc,match", [
    ("obs", np.zeros((2, 4), np.float32), ValueError, r"`obs` must have shape \(2, 3\)"),
    ("obs", np.zeros((3, 3), np.float32), ValueError, "`obs` must have shape"),
    ("next_obs", np.zeros(6, np.float32), ValueError, "`next_obs` must have shape"),
    ("action", np.zeros((2, 2), "U1"), TypeError, "`action`"),
    ("reward", np.zeros(3, np.float32), ValueError, "`reward`"),
    ("task_id", np.array([0.0, 1.0]), TypeError, "`task_id`"),
    ("task_id", np.array([0, 5]), IndexError, r"task_id\[1\] = 5"),
    ("task_id", np.array([-1, 0]), IndexError, r"task_id\[0\] = -1"),
    ("terminated", np.array([0, 2]), ValueError, "`terminated`"),
    ("truncated", np.zeros((2, 1), bool), ValueError, "`truncated`"),
    ("obs", "abc", TypeError, "`obs`"),
])
def test_add_bad_input(field, value, exc, match):
    buf = ReplayBuffer(2, 8, 3, 2, 2)
    step = good_step()
    step[field] = value
    with pytest.raises(exc, match=match):
        buf.add(**step)
    assert len(buf) == 0


def test_add_converts_friendly_dtypes():
    buf = ReplayBuffer(2, 8, 3, 2, 2)
    step = good_step()
    step.update(obs=np.ones((2, 3)), task_id=[1, 0], terminated=[0, 1],
                next_obs=np.ones((2, 3))[:, ::1].T.copy().T)
    buf.add(**step)
    assert buf.sizes.tolist() == [1, 1]


def saved_state(buf: ReplayBuffer, directory) -> dict[str, bytes]:
    """Every file ``save`` writes (all arrays, pending rows, links, priorities, scalars)."""
    buf.save(directory)
    return {f.name: f.read_bytes() for f in sorted(directory.iterdir())}


def nonfinite_step(rng, field, row, col, value, n=4, o=3, a=2):
    """A valid random step (continuing nothing) with one non-finite entry."""
    step = dict(task_id=np.array([0, 1, 1, 0][:n], np.int64),
                obs=rng.standard_normal((n, o)).astype(np.float32),
                action=rng.uniform(-1, 1, (n, a)).astype(np.float32),
                reward=rng.standard_normal(n).astype(np.float32),
                terminated=np.array([0, 1, 0, 0][:n], bool), truncated=np.zeros(n, bool),
                next_obs=rng.standard_normal((n, o)).astype(np.float32))
    if step[field].ndim == 2:
        step[field][row, col] = value
    else:
        step[field][row] = value
    return step


@pytest.mark.parametrize("field,row,col,value,match", [
    ("reward", 3, None, np.nan, r"^reward\[3\] = nan is not finite$"),
    ("reward", 0, None, -np.inf, r"^reward\[0\] = -inf is not finite$"),
    ("obs", 2, 1, np.inf, r"^obs\[2, 1\] = inf is not finite \(env 2\)$"),
    ("obs", 3, 2, -np.nan, r"^obs\[3, 2\] = nan is not finite \(env 3\)$"),
    ("action", 1, 0, np.nan, r"^action\[1, 0\] = nan is not finite \(env 1\)$"),
    ("action", 3, 1, -np.inf, r"^action\[3, 1\] = -inf is not finite \(env 3\)$"),
    ("next_obs", 3, 2, np.inf, r"^next_obs\[3, 2\] = inf is not finite \(env 3\)$"),
    ("next_obs", 0, 0, np.nan, r"^next_obs\[0, 0\] = nan is not finite \(env 0\)$"),
])
def test_add_rejects_nonfinite_and_changes_nothing(tmp_path, field, row, col, value, match):
    rng = np.random.default_rng(11)
    buf = ReplayBuffer(2, 5, 3, 2, 4, seed=1)
    run_envs(buf, None, 6, task_of_env=[0, 1, 1, 0], p_end=0.3)  # wrapped, with pending rows
    before = saved_state(buf, tmp_path / "before")
    step = nonfinite_step(rng, field, row, col, value)
    with pytest.raises(ValueError, match=match):
        buf.add(**step)
    with pytest.raises(ValueError, match=match):  # the float64 (converted) path says the same
        buf.add(**{k: v.astype(np.float64) if v.dtype == np.float32 else v
                   for k, v in step.items()})
    assert saved_state(buf, tmp_path / "after") == before  # no partial write of earlier rows
    untouched = ReplayBuffer.load(tmp_path / "before")
    got = buf.sample(16, prioritized=True, n_step=3)
    want = untouched.sample(16, prioritized=True, n_step=3)
    for k in ("index", "obs", "action", "reward", "next_obs", "mask", "discount", "weight"):
        assert np.array_equal(getattr(got, k), getattr(want, k)), k
    # The same step with the bad value replaced is accepted.
    step[field][(row, col) if col is not None else row] = 0.5
    buf.add(**step)
    assert len(buf) == 10


def test_add_reports_first_nonfinite_field_and_entry():
    buf = ReplayBuffer(1, 8, 3, 2, 2)
    step = good_step()
    step["obs"][1, 2] = np.nan
    step["obs"][1, 0] = np.inf
    step["reward"][0] = np.nan
    with pytest.raises(ValueError, match=r"^obs\[1, 0\] = inf is not finite"):
        buf.add(**step)
    assert len(buf) == 0


def test_add_casts_float64_to_float32():
    buf = ReplayBuffer(1, 8, 3, 2, 2)
    rng = np.random.default_rng(5)
    obs = rng.standard_normal((2, 3)) * 1e30  # float64, not float32-representable
    obs[0, 0] = 3.0e38  # still within float32 range
    action = rng.uniform(-1, 1, (2, 2))
    reward = np.array([0.1, -1e-50])  # underflows to -0.0: finite, accepted
    nxt = rng.standard_normal((2, 3))
    buf.add([0, 0], obs, action, reward, [False, False], [True, False], nxt)
    got = buf.fetch([0, 1])
    assert got.obs.dtype == np.float32
    assert np.array_equal(got.obs, obs.astype(np.float32))
    assert np.array_equal(got.action, action.astype(np.float32))
    assert np.array_equal(got.reward, reward.astype(np.float32))
    assert np.array_equal(got.next_obs[0], nxt[0].astype(np.float32))


@pytest.mark.parametrize("field,value,match", [
    ("obs", 1e39, r"^obs\[1, 2\] = 1e\+39 is outside the float32 range"),
    ("next_obs", -1e300, r"^next_obs\[1, 2\] = -1e\+300 is outside the float32 range"),
    ("action", 4e38, r"^action\[1, 1\] = 4e\+38 is outside the float32 range"),
    ("reward", -5e38, r"^reward\[1\] = -5e\+38 is outside the float32 range"),
])
def test_add_rejects_float64_beyond_float32_range(field, value, match):
    buf = ReplayBuffer(1, 8, 3, 2, 2)
    step = {k: v.astype(np.float64) if v.dtype == np.float32 else v
            for k, v in good_step().items()}
    if step[field].ndim == 2:
        step[field][1, -1] = value
    else:
        step[field][1] = value
    with pytest.raises(ValueError, match=match):  # and no numpy overflow warning (an error here)
        buf.add(**step)
    assert len(buf) == 0


def test_sample_bad_input():
    empty = ReplayBuffer(2, 8, 3, 2, 2)
    with pytest.raises(RuntimeError, match="empty"):
        empty.sample(4)
    with pytest.raises(RuntimeError, match="empty"):
        empty.sample(4, prioritized=True)
    empty.add(**good_step())  # only task 0 has data
    with pytest.raises(RuntimeError, match="task 1 is empty"):
        empty.sample(4, stratified=True)
    assert empty.sample(4).task_id.tolist() == [0, 0, 0, 0]
    buf = filled()
    for bad, match in ((0, "batch_size"), (-3, "batch_size"), (2**20 + 1, "batch_size")):
        with pytest.raises(ValueError, match=match):
            buf.sample(bad)
    with pytest.raises(TypeError, match="batch_size"):
        buf.sample(4.0)
    for kw, match in ((dict(n_step=0), "n_step"), (dict(n_step=1001), "n_step"),
                      (dict(gamma=1.5), "gamma"), (dict(gamma=float("nan")), "gamma"),
                      (dict(beta=-0.1), "beta")):
        with pytest.raises(ValueError, match=match):
            buf.sample(4, **kw)
    with pytest.raises(ValueError, match="`obs` must have shape"):
        buf.sample(8, out=buf.allocate_batch(4))
    with pytest.raises(TypeError, match="ReplayBatch"):
        buf.sample(8, out={})
    buf.update_priorities(np.arange(30), np.zeros(30))
    buf.update_priorities(np.arange(40, 120), np.zeros(80))
    with pytest.raises(RuntimeError, match="priorities are 0|priority is 0"):
        buf.sample(4, prioritized=True)


def test_update_priorities_bad_input():
    buf = filled()  # task 0 holds 30 of 40 slots
    before = [np.concatenate(buf.tree_levels(t)) for t in range(3)]
    cases = [
        ([0, 1], [1.0, float("nan")], ValueError, r"priority\[1\] = nan"),
        ([0, 1], [float("inf"), 1.0], ValueError, r"priority\[0\] = inf"),
        ([0, 1], [1.0, -0.5], ValueError, r"priority\[1\] = -0.5"),
        ([0, 120], [1.0, 1.0], IndexError, r"index\[1\] = 120 is out of range"),
        ([-1], [1.0], IndexError, r"index\[0\] = -1"),
        ([35], [1.0], IndexError, "holds no transition"),
        ([0, 1], [1.0], ValueError, "equal length"),
        ([0.5], [1.0], TypeError, "`index`"),
    ]
    for idx, pri, exc, match in cases:
        with pytest.raises(exc, match=match):
            buf.update_priorities(np.array(idx), np.array(pri))
    squares = filled(alpha=2.0)  # 1e200 ** 2 overflows: the tree sums must stay finite
    with pytest.raises(ValueError, match=r"priority\[1\] = .* too large"):
        squares.update_priorities(np.array([0, 1]), np.array([1.0, 1e200]))
    buf.update_priorities(np.zeros(0, np.int64), np.zeros(0))  # empty: a no-op
    for t in range(3):  # nothing changed by a rejected call
        assert np.array_equal(np.concatenate(buf.tree_levels(t)), before[t])
    with pytest.raises(IndexError, match="holds no transition"):
        buf.fetch([35])


@pytest.mark.parametrize("kw,exc,match", [
    (dict(num_tasks=0), ValueError, "num_tasks"),
    (dict(capacity_per_task=-1), ValueError, "capacity_per_task"),
    (dict(obs_dim=0), ValueError, "obs_dim"),
    (dict(num_envs=2.0), TypeError, "num_envs"),
    (dict(alpha=float("nan")), ValueError, "alpha"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(capacity_per_task=2**35, obs_dim=4096), ReplayMemoryError, "the replay buffer needs"),
])
def test_constructor_bad_input(kw, exc, match):
    args = dict(num_tasks=1, capacity_per_task=8, obs_dim=3, action_dim=2, num_envs=2)
    args.update(kw)
    with pytest.raises(exc, match=match):
        ReplayBuffer(**args)


def test_close_and_context_manager():
    with ReplayBuffer(1, 4, 2, 1, 1) as buf:
        assert "size=0" in repr(buf)
    assert "closed" in repr(buf)
    with pytest.raises(RuntimeError, match="closed"):
        buf.sample(1)
    with pytest.raises(RuntimeError, match="closed"):
        len(buf)
    buf.close()  # idempotent


def test_load_rejects_bad_priorities_and_meta(tmp_path):
    buf = ReplayBuffer(1, 8, 2, 1, 2)
    run_envs(buf, None, 3, task_of_env=[0, 0])
    buf.save(tmp_path)
    pri = np.load(tmp_path / "priority.npy")
    pri[1] = np.nan
    np.save(tmp_path / "priority.npy", pri)
    with pytest.raises(ValueError, match="priority.npy"):
        buf.load_into(tmp_path)
    buf.save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["size"] = [9]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="impossible size"):
        buf.load_into(tmp_path)
    del meta["rng_state"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="malformed"):
        buf.load_into(tmp_path)
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match="not an mtrl replay"):
        buf.load_into(tmp_path)


def test_batch_is_torch_wrappable_without_copy():
    torch = pytest.importorskip("torch")
    buf = filled()
    b = buf.sample(8)
    assert isinstance(b, ReplayBatch)
    t = torch.from_numpy(b.obs)
    buf.sample(8)  # the internal batch is overwritten in place
    assert torch.equal(t, torch.from_numpy(buf._batch.obs))
    assert t.data_ptr() == b.obs.ctypes.data


def test_sizes_beyond_int64_unaligned_arrays_and_overlapping_outputs():
    # Sizes beyond int64 reached pybind ("incompatible constructor arguments" / a TypeError
    # printing every argument) instead of the range error smaller values get.
    args = dict(num_tasks=1, capacity_per_task=8, obs_dim=3, action_dim=2, num_envs=1)
    for value in (2**63, 2**64, -2**64):
        with pytest.raises(ValueError, match=rf"`capacity_per_task` must be in \[1, \d+\], got "
                                             rf"{value}"):
            ReplayBuffer(**{**args, "capacity_per_task": value})
    buf = ReplayBuffer(**args)
    with pytest.raises(IndexError, match=rf"task {2**64} is out of range \[0, 1\)"):
        buf.size(2**64)
    with pytest.raises(ValueError, match=rf"`n_step` must be in \[1, 1000\], got {2**70}"):
        buf.sample(1, n_step=2**70)
    # A C-contiguous float32 array that is not aligned (np.frombuffer at an offset) was refused
    # with "must be a C-contiguous float32 array, got float32".
    raw = np.zeros(3 * 4 + 1, np.uint8)[1:].view(np.float32)
    raw[:] = [1.0, 2.0, 3.0]
    assert not raw.flags.aligned
    buf.add([0], raw.reshape(1, 3), [[0.0, 0.0]], [1.0], [False], [False], [[4.0, 5.0, 6.0]])
    assert buf.fetch([0]).obs.tolist() == [[1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match=r"`index` must be 1-D and non-empty, got shape \(0,\)"):
        buf.fetch([])
    # A str alpha/beta/gamma was parsed by float() ("0.6" accepted, "x" unnamed in the error).
    with pytest.raises(TypeError, match="`alpha` must be a number, got str"):
        ReplayBuffer(**args, alpha="0.6")
    with pytest.raises(TypeError, match="`beta` must be a number, got str"):
        buf.sample(1, prioritized=True, beta="x")
    with pytest.raises(TypeError, match="`gamma` must be a number, got NoneType"):
        buf.fetch([0], gamma=None)
    # Output arrays that share memory were filled silently, one field over the other.
    out = buf.allocate_batch(4)
    shared = ReplayBatch(**{**out.__dict__, "next_obs": out.obs})
    with pytest.raises(ValueError, match="`obs` and `next_obs` overlap"):
        buf.sample(4, out=shared)
    flat = np.empty(8, np.float32)
    halves = ReplayBatch(**{**out.__dict__, "reward": flat[:4], "mask": flat[2:6]})
    with pytest.raises(ValueError, match="`reward` and `mask` overlap"):
        buf.sample(4, out=halves)
    ok = ReplayBatch(**{**out.__dict__, "reward": flat[:4], "mask": flat[4:]})
    buf.sample(4, out=ok)


def test_unreadable_meta_and_priority_messages_name_the_problem(tmp_path):
    buf = ReplayBuffer(1, 8, 2, 1, 1, alpha=1.0)
    run_envs(buf, None, 2, task_of_env=[0])
    buf.save(tmp_path)
    (tmp_path / "meta.json").write_text('{"format": "mtrl-re')  # a truncated write
    with pytest.raises(ValueError, match=r"meta.json is not valid JSON"):
        ReplayBuffer.load(tmp_path)
    # The priority was printed with %f: a 310-digit number.
    with pytest.raises(ValueError, match=r"priority\[0\] = 1e\+308 is too large"):
        buf.update_priorities([0], [1e308])


# ----------------------------------------------------------------------------- atomic save


def test_save_over_a_previous_save_replaces_it(tmp_path):
    first = ReplayBuffer(1, 8, 2, 1, 2, seed=1)
    run_envs(first, None, 3, task_of_env=[0, 0])
    first.save(tmp_path / "b")
    second = ReplayBuffer(1, 8, 2, 1, 2, seed=2)
    run_envs(second, None, 5, task_of_env=[0, 0], seed=7)
    second.save(tmp_path / "b")  # the second save wins
    loaded = ReplayBuffer.load(tmp_path / "b")
    assert saved_state(loaded, tmp_path / "again") == saved_state(second, tmp_path / "ref")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "b", "ref"]  # no leftovers


def _fail_meta_write(monkeypatch):
    """Makes the meta.json write of the next save fail halfway (a full disk)."""
    def dump(obj, f, **kw):
        f.write('{"format": ')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", dump)


def test_failed_save_keeps_the_previous_save(tmp_path, monkeypatch):
    buf = ReplayBuffer(1, 8, 2, 1, 2)
    run_envs(buf, None, 3, task_of_env=[0, 0])
    before = saved_state(buf, tmp_path / "b")
    run_envs(buf, None, 4, task_of_env=[0, 0], seed=5)
    with monkeypatch.context() as m:
        _fail_meta_write(m)
        with pytest.raises(OSError, match="No space left"):
            buf.save(tmp_path / "b")
    assert {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()} == before
    ReplayBuffer.load(tmp_path / "b")
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # the partial save was removed
    # A failure while swapping the new save in puts the old one back.
    import mtrl._atomic

    real_rename = mtrl._atomic.os.rename
    calls = []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old aside, then new in: the second fails
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    with monkeypatch.context() as m:
        m.setattr(mtrl._atomic.os, "rename", rename)
        with pytest.raises(OSError, match="Input/output error"):
            buf.save(tmp_path / "b")
    assert len(calls) == 3  # the third rename put the old save back
    assert {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def _crash_between_the_renames(final):
    """The state a save over ``final`` leaves when killed between the two renames of
    ``mtrl._atomic.replace_dir``: the complete old save only under ``.<name>.old-*``."""
    aside = final.with_name(f".{final.name}.old-0123abcd")
    final.rename(aside)
    return aside


def test_load_recovers_a_save_left_aside_by_a_crash_between_the_renames(tmp_path):
    buf = ReplayBuffer(1, 8, 2, 1, 2, seed=3)
    run_envs(buf, None, 5, task_of_env=[0, 0])
    b = tmp_path / "b"
    before = saved_state(buf, b)
    aside = _crash_between_the_renames(b)
    # An empty placeholder (a kill between its mkdir and the first rename) is not a save.
    (tmp_path / ".b.old-fedcba98").mkdir()
    with pytest.warns(RuntimeWarning, match=r"\.b\.old-0123abcd.*renamed back to .*b"):
        loaded = ReplayBuffer.load(b)
    assert {f.name: f.read_bytes() for f in sorted(b.iterdir())} == before
    assert not aside.exists()
    assert saved_state(loaded, tmp_path / "again") == before
    # load_into recovers too.
    _crash_between_the_renames(b)
    other = ReplayBuffer(1, 8, 2, 1, 2, seed=3)
    with pytest.warns(RuntimeWarning, match="renamed back"):
        other.load_into(b)
    assert saved_state(other, tmp_path / "again2") == before


def test_load_refuses_to_guess_between_several_saves_left_aside(tmp_path):
    buf = ReplayBuffer(1, 8, 2, 1, 2)
    run_envs(buf, None, 3, task_of_env=[0, 0])
    b = tmp_path / "b"
    buf.save(b)
    first = _crash_between_the_renames(b)
    second = tmp_path / ".b.old-99999999"  # kills in two saves in a row (the 2nd before its cleanup)
    shutil.copytree(first, second)
    with pytest.raises(ValueError, match=r"\.b\.old-0123abcd, \.b\.old-99999999"):
        ReplayBuffer.load(b)
    assert first.is_dir() and second.is_dir() and not b.exists()  # nothing was moved
    # A copy without a valid meta.json is not complete: it is neither recovered nor counted.
    (second / "meta.json").write_text("{")
    with pytest.warns(RuntimeWarning, match="0123abcd"):
        ReplayBuffer.load(b)
    assert second.is_dir()
    # No complete copy at all: the missing directory is reported as before.
    with pytest.raises(FileNotFoundError):
        ReplayBuffer.load(tmp_path / "none")


def test_save_removes_the_leftovers_of_crashed_saves_of_the_same_path(tmp_path):
    buf = ReplayBuffer(1, 8, 2, 1, 2)
    run_envs(buf, None, 3, task_of_env=[0, 0])
    partial = tmp_path / ".b.tmp-0123abcd"  # a save killed while writing
    partial.mkdir()
    (partial / "obs.npy").write_bytes(b"x" * 1000)
    (tmp_path / ".b.old-fedcba98").mkdir()  # killed between the placeholder and the rename
    kept = [tmp_path / ".c.tmp-0123abcd", tmp_path / ".b.tmp-notmine", tmp_path / "b.tmp-01234567"]
    for p in kept:  # another path's save, and names replace_dir never makes
        p.mkdir()
    buf.save(tmp_path / "b")
    ReplayBuffer.load(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b", *(p.name for p in kept)])
    # A failed save removes nothing of the others.
    partial.mkdir()
    with pytest.MonkeyPatch.context() as m:
        _fail_meta_write(m)
        with pytest.raises(OSError, match="No space left"):
            buf.save(tmp_path / "b")
    assert partial.is_dir()


def test_save_refuses_a_directory_that_is_not_a_replay_save(tmp_path):
    buf = ReplayBuffer(1, 8, 2, 1, 2)
    run_envs(buf, None, 3, task_of_env=[0, 0])
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError,
                       match=rf"{re.escape(str(user))}: it is not an mtrl replay save.*notes.txt"):
        buf.save(user)
    assert [(p.name, p.read_text()) for p in user.iterdir()] == [("notes.txt", "mine")]
    # A replay save with a foreign file added: the file would be lost, so it is refused too.
    buf.save(tmp_path / "b")
    (tmp_path / "b" / "README").write_text("keep")
    before = {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()}
    with pytest.raises(ValueError, match=r"not an mtrl replay save .*README"):
        buf.save(tmp_path / "b")
    assert {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()} == before
    (tmp_path / "b" / "README").unlink()
    (tmp_path / "b" / "meta.json").write_text('{"format": "other"}')  # replay-like names only
    with pytest.raises(ValueError, match=r"not an mtrl replay save \(its meta.json"):
        buf.save(tmp_path / "b")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"afile: it exists and is not a directory"):
        buf.save(tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    buf.save(empty)  # an empty directory holds nothing to lose
    ReplayBuffer.load(empty)
