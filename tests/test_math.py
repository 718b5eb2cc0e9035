"""mtrl.math against hand-computed examples (brc-spec §2.3, §3.2)."""

import math

import numpy as np
import pytest
import torch

from mtrl import math as M
from mtrl.ops.reference import categorical_projection


def _logits(*probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def test_td_target_hand_example():
    # Support {-1, 0, 1}; ensemble-mean probabilities [0.3, 0.35, 0.35].
    logits = torch.stack([_logits([0.2, 0.3, 0.5]), _logits([0.4, 0.4, 0.2])])  # (E=2, B=1, K=3)
    # r = 0.5, gamma = 0.5, m = 1: atoms move to {0, 0.5, 1}; 0 and 1 are exact hits.
    target, value = M.categorical_td_target(
        logits, torch.tensor([0.5]), torch.tensor([1.0]), 0.5, None, -1.0, 1.0)
    torch.testing.assert_close(target, torch.tensor([[0.0, 0.475, 0.525]]))
    torch.testing.assert_close(value, torch.tensor([0.525]))


def test_td_target_entropy_clip_and_mask():
    logits = torch.stack([_logits([0.2, 0.3, 0.5]), _logits([0.4, 0.4, 0.2])])
    logits = logits.expand(2, 3, 3).clone()
    reward = torch.tensor([0.2, -0.25, 3.0])
    mask = torch.tensor([1.0, 0.0, 1.0])
    entropy = torch.tensor([0.4, 0.0, 0.0])  # alpha * log pi
    target, _ = M.categorical_td_target(logits, reward, mask, torch.ones(3), entropy, -1.0, 1.0)
    p = [0.3, 0.35, 0.35]
    # row 0: atoms 0.2 + (z - 0.4) = {-1.2 -> -1 (clip, exact), -0.2, 0.8}
    row0 = [p[0] + 0.2 * p[1], 0.8 * p[1] + 0.2 * p[2], 0.8 * p[2]]
    # row 1: mask 0 -> all mass at r = -0.25 (b = 0.75)
    row1 = [0.25, 0.75, 0.0]
    # row 2: r = 3 clipped to the top atom
    row2 = [0.0, 0.0, 1.0]
    torch.testing.assert_close(target, torch.tensor([row0, row1, row2]))
    torch.testing.assert_close(target.sum(-1), torch.ones(3))


def test_projection_exact_hits_everywhere_is_identity():
    probs = torch.softmax(torch.randn(4, 101), -1)
    atoms = M.atoms_support(-10, 10, 101).expand(4, 101)
    torch.testing.assert_close(categorical_projection(atoms, probs, -10, 10), probs)


def test_cross_entropy_hand_example():
    online = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, 0.0, 0.0]]])  # (E=2, B=1, K=3)
    target = torch.tensor([[0.0, 0.475, 0.525]])
    lse = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    ce0 = -(0.475 * (2 - lse) + 0.525 * (3 - lse))
    ce1 = math.log(3.0)
    loss = M.categorical_cross_entropy(online, target)
    assert loss.item() == pytest.approx(ce0 + ce1, rel=1e-6)


def test_expected_q_mean_of_member_probs():
    logits = torch.stack([_logits([0.2, 0.3, 0.5]), _logits([0.4, 0.4, 0.2])])
    q = M.expected_q(logits, torch.tensor([-1.0, 0.0, 1.0]))
    assert q.item() == pytest.approx(0.05, abs=1e-6)


def test_squash_log_std_range():
    raw = torch.tensor([-1e3, 0.0, 1e3])
    out = M.squash_log_std(raw)
    torch.testing.assert_close(out, torch.tensor([-10.0, -4.0, 2.0]))


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64) * 0.3
    x = mean + log_std.exp() * torch.randn(5, 3, dtype=torch.float64)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(x) - torch.log(1 - torch.tanh(x) ** 2)
    torch.testing.assert_close(M.tanh_gaussian_log_prob(x, mean, log_std), ref.sum(-1))
    # stable for large pre-tanh values where 1 - tanh^2 underflows
    big = torch.tensor([[30.0]])
    assert torch.isfinite(M.tanh_gaussian_log_prob(big, big, torch.zeros(1, 1))).all()


def test_polyak():
    target, online = [torch.zeros(3)], [torch.ones(3)]
    M.polyak_update(target, online, 0.005)
    np.testing.assert_allclose(target[0].numpy(), 0.005)
    M.polyak_update(target, online, 0.005)
    np.testing.assert_allclose(target[0].numpy(), 0.005 + 0.995 * 0.005, rtol=1e-6)
