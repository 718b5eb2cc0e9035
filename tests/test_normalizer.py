"""Reward normaliser against a float64 reference on synthetic episodes (brc-spec §4.2)."""

import math

import numpy as np
import pytest
import torch

from mtrl.normalizer import RewardNormalizer, discounted_returns, reward_denominator


def reference_returns(rewards, gamma, truncated):
    """Closed form G_t = sum_k gamma^(k-t) r_k + gamma^(L-t) * tail, float64."""
    r = np.asarray(rewards, dtype=np.float64)
    n = r.size
    tail = r.mean() / (1 - gamma) if truncated else 0.0
    powers = gamma ** np.arange(n + 1, dtype=np.float64)
    return np.array([(powers[: n - t] * r[t:]).sum() + powers[n - t] * tail for t in range(n)])


@pytest.mark.parametrize("truncated", [False, True])
def test_discounted_returns(truncated):
    rng = np.random.default_rng(0)
    r = rng.normal(size=57)
    np.testing.assert_allclose(discounted_returns(r, 0.99, truncated), reference_returns(r, 0.99, truncated), rtol=1e-12)


def _run(norm, streams):
    """Feed per-env episode lists [(rewards, 'term'|'trunc'), ...] in lock step."""
    flat = []
    for eps in streams:
        steps = []
        for rewards, end in eps:
            for i, r in enumerate(rewards):
                last = i == len(rewards) - 1
                steps.append((r, last and end == "term", last and end == "trunc"))
        flat.append(steps)
    n = min(len(s) for s in flat)
    for t in range(n):
        norm.update(np.array([s[t][0] for s in flat]), np.array([s[t][1] for s in flat]),
                    np.array([s[t][2] for s in flat]))


def test_statistics_match_reference():
    rng = np.random.default_rng(1)
    gamma = 0.99
    # two tasks, env 0 -> task 0, env 1 -> task 1; equal total lengths so lock-step covers all.
    ep = {k: rng.normal(loc=k - 0.5, size=n) for k, n in [(0, 40), (1, 60), (2, 30), (3, 70)]}
    streams = [[(ep[0], "term"), (ep[1], "trunc")], [(ep[2], "trunc"), (ep[3], "term")]]
    norm = RewardNormalizer(np.array([0, 1]), 2, gamma)
    _run(norm, streams)
    g0 = np.concatenate([reference_returns(ep[0], gamma, False), reference_returns(ep[1], gamma, True)])
    g1 = np.concatenate([reference_returns(ep[2], gamma, True), reference_returns(ep[3], gamma, False)])
    np.testing.assert_allclose(norm.g_min, [g0.min(), g1.min()], rtol=1e-12)
    np.testing.assert_allclose(norm.g_max, [g0.max(), g1.max()], rtol=1e-12)
    expect = [max(g.max(), abs(g.min())) if g.max() <= abs(g.min()) else g.max() for g in (g0, g1)]
    np.testing.assert_allclose(norm.return_scale(), expect, rtol=1e-12)
    alpha, act_dim = 0.05, 6
    d = norm.denominator(alpha, act_dim, v_max=10.0)
    # D = (G_bar + alpha * |A|/4 / (1 - gamma)) / V_max
    np.testing.assert_allclose(d, (np.array(expect) + alpha * act_dim / 4 / (1 - gamma)) / 10, rtol=1e-12)
    assert norm.ready.all()


def test_terminated_and_truncated_counts_as_truncated():
    norm = RewardNormalizer(np.array([0]), 1, 0.9)
    norm.update(np.array([1.0]), np.array([True]), np.array([True]))
    assert norm.g_max[0] == pytest.approx(1.0 + 0.9 * 1.0 / 0.1)


def test_unfinished_task_rule_is_finite_and_provisional():
    gamma = 0.99
    norm = RewardNormalizer(np.array([0, 1]), 2, gamma)
    d = norm.denominator(0.1, 4)
    assert np.isfinite(d).all() and (d > 0).all()  # no reward yet: entropy correction only
    np.testing.assert_allclose(d, 0.1 * 4 / 4 / (1 - gamma) / 10)
    r = [2.0, -1.0, 3.0]
    for x in r:
        norm.update(np.array([x, 0.5]), np.array([False, False]), np.array([False, False]))
    assert not norm.ready.any()
    g = reference_returns(r, gamma, True)  # as if truncated now
    assert norm.return_scale()[0] == pytest.approx(max(g.max(), abs(g.min())), rel=1e-12)
    assert np.isinf(norm.g_max).all()  # the real statistics are untouched until an episode ends
    norm.update(np.array([1.0, 0.5]), np.array([True, False]), np.array([False, False]))
    g = reference_returns(r + [1.0], gamma, False)
    assert norm.ready.tolist() == [True, False]
    assert norm.return_scale()[0] == pytest.approx(max(g.max(), abs(g.min())), rel=1e-12)


def test_denominator_torch_and_state_roundtrip():
    norm = RewardNormalizer(np.array([0, 0, 1]), 2, 0.99)
    for t in range(5):
        norm.update(np.array([t, -t, 2.0 * t]), np.array([t == 3, False, False]), np.array([False, t == 4, False]))
    scale = norm.return_scale()
    d_t = reward_denominator(torch.tensor(scale), torch.tensor(0.2, dtype=torch.float64), 3, 0.99, 10.0)
    np.testing.assert_allclose(d_t.numpy(), norm.denominator(0.2, 3), rtol=1e-12)
    other = RewardNormalizer(np.array([0, 0, 1]), 2, 0.99)
    other.load_state_dict(norm.state_dict())
    np.testing.assert_array_equal(other.return_scale(), scale)
    with pytest.raises(ValueError, match="task_ids"):
        RewardNormalizer(np.array([0, 1, 1]), 2, 0.99).load_state_dict(norm.state_dict())


def test_bad_inputs():
    with pytest.raises(ValueError, match="task_ids"):
        RewardNormalizer(np.array([0, 3]), 2)
    with pytest.raises(ValueError, match="gamma"):
        RewardNormalizer(np.array([0]), 1, gamma=1.0)
    assert math.isfinite(discounted_returns(np.zeros(0), 0.99, True).sum())


def test_update_and_load_refuse_mismatched_or_non_finite_input():
    # A reward shorter than num_envs (or 2-D) was accepted and fed to the wrong envs; a NaN or
    # inf reward silently zeroed the task's scale.
    norm = RewardNormalizer(np.array([0, 1]), 2)
    flags = np.zeros(2, bool)
    one = np.ones(1, bool)
    for reward, term, trunc, shape in ((np.zeros(1), flags, flags, r"reward.*\(1,\)"),
                                       (np.zeros((2, 2)), flags, flags, r"reward.*\(2, 2\)"),
                                       (np.zeros(2), one, flags, r"terminated.*\(1,\)"),
                                       (np.zeros(3), np.zeros(3), np.zeros(3), r"reward.*\(3,\)")):
        name, got = shape.split(".*")
        with pytest.raises(ValueError, match=rf"{name} must have shape \(2,\) \(one entry per "
                                             rf"env\), got {got}"):
            norm.update(reward, term, trunc)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match=r"reward\[1\] = (nan|inf) is not finite"):
            norm.update(np.array([0.0, bad]), np.ones(2, bool), flags)
    assert norm.episodes_done.tolist() == [0, 0] and norm._episode == [[], []]
    # The error names the env's task (by name when the normaliser has them).
    named = RewardNormalizer(np.array([0, 1, 1]), 2, task_names=["dmc:a", "dmc:b"])
    with pytest.raises(ValueError, match=r"reward\[2\] = nan is not finite \(env 2, task "
                                         r"'dmc:b'\)"):
        named.update(np.array([0.0, 1.0, np.nan]), np.zeros(3, bool), np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"task_names must hold 2 names, got 1"):
        RewardNormalizer(np.array([0, 1]), 2, task_names=["dmc:a"])
    state = norm.state_dict()
    for key, value, message in (("g_min", np.zeros(5), r"g_min must have shape \(2,\)"),
                                ("episode", [[1.0]], r"episode must hold 2 lists"),
                                ("g_max", None, "lacks g_max")):
        bad = dict(state)
        if value is None:
            del bad[key]
        else:
            bad[key] = value
        with pytest.raises(ValueError, match=message):
            norm.load_state_dict(bad)


def test_overflowing_returns_and_damaged_checkpoints_are_refused():
    # Finite rewards whose discounted returns overflow float64 gave a scale of 0 (as if no data);
    # a checkpoint with a NaN statistic or reward loaded silently. Nothing is recorded either way.
    norm = RewardNormalizer(np.array([0, 1]), 2, 0.99, task_names=["a", "b"])
    norm.update(np.array([1.0, 1.5e308]), np.array([False, False]), np.array([False, False]))
    before = norm.state_dict()
    with pytest.raises(ValueError, match=r"env 1 \(task 'b'\) overflow float64"):
        norm.update(np.array([1.0, 1.5e308]), np.array([True, True]), np.array([False, False]))
    assert norm.state_dict()["episode"] == before["episode"] and not norm.ready.any()
    good = RewardNormalizer(np.array([0, 1]), 2, 0.99)
    for key, value, match in (("g_max", np.array([np.nan, -np.inf]), "g_min/g_max hold NaN"),
                              ("episode", [[1.0, np.nan], []], "non-finite reward"),
                              ("episode", [["x"], []], "non-number")):
        with pytest.raises(ValueError, match=match):
            good.load_state_dict({**good.state_dict(), key: value})
