"""The AnglE loss terms on hand-made tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bellm_search.training.loss import (
    LossWeights,
    angle_loss,
    angle_objective,
    angle_similarity,
    contrastive_loss,
    cosent_loss,
    ranking_loss,
    triple_pairs,
)

E = torch.eye(4)  # four orthogonal unit vectors


def test_contrastive_matches_hand_computed_softmax():
    a = torch.stack([E[0], E[1]])
    p = torch.stack([E[0], E[2]])  # row 0 matches its positive, row 1 matches nothing
    loss = contrastive_loss(a, p, scale=20.0)
    row0 = -math.log(math.exp(20) / (math.exp(20) + 1))
    row1 = -math.log(1 / 2)  # cos 0 with both columns
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_contrastive_prefers_the_right_positive():
    a = torch.stack([E[0], E[1]])
    good = contrastive_loss(a, torch.stack([E[0], E[1]]))
    swapped = contrastive_loss(a, torch.stack([E[1], E[0]]))
    assert good.item() < 1e-6 < 10 < swapped.item()


def test_hard_negative_column_counts_and_mask_removes_it():
    a, p = torch.stack([E[0], E[1]]), torch.stack([E[0], E[1]])
    n = torch.stack([E[0], E[2]])  # row 0's "negative" equals its anchor: a maximal hard negative
    with_neg = contrastive_loss(a, p, n)
    assert with_neg.item() == pytest.approx(math.log(2) / 2, rel=1e-4)  # row 0: a tie of two
    valid = torch.ones(2, 4, dtype=torch.bool)
    valid[0, 2] = False  # mask that column for row 0
    assert contrastive_loss(a, p, n, valid).item() < 1e-6


def test_mask_for_false_negatives_matters():
    # rows 0 and 1 share an anchor: row 1's positive is also a right answer for row 0
    a = torch.stack([E[0], E[0]])
    p = F.normalize(torch.stack([E[0] + 0.1 * E[1], E[0] + 0.1 * E[2]]), dim=-1)
    unmasked = contrastive_loss(a, p)
    valid = torch.eye(2, dtype=torch.bool)
    assert contrastive_loss(a, p, valid=valid).item() == pytest.approx(0.0, abs=1e-6)
    assert unmasked.item() > 0.6


def test_ranking_loss_sign():
    gold = torch.tensor([3.0, 2.0, 1.0])
    right = ranking_loss(torch.tensor([0.9, 0.5, 0.1]), gold)
    wrong = ranking_loss(torch.tensor([0.1, 0.5, 0.9]), gold)
    assert right.item() < 1e-3 and wrong.item() > 15
    # one inverted pair (0.5 vs 0.4, 20 * 0.1 = 2): log(1 + e^2 + tiny)
    one = ranking_loss(torch.tensor([0.4, 0.5, -1.0]), gold)
    assert one.item() == pytest.approx(math.log(1 + math.exp(2)), rel=1e-3)


def test_ranking_ignores_ties_in_gold():
    assert ranking_loss(torch.tensor([0.1, 0.9]), torch.tensor([1.0, 1.0])).item() == 0.0


def test_cosent_on_vectors():
    u = torch.stack([E[0], E[0]])
    v_good = torch.stack([E[0], E[1]])  # pair 0 (gold 1) identical, pair 1 (gold 0) orthogonal
    gold = torch.tensor([1.0, 0.0])
    assert cosent_loss(u, v_good, gold).item() < 1e-6
    assert cosent_loss(u, v_good.flip(0), gold).item() > 19


def test_angle_similarity_real_part_is_cosine():
    u = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    assert angle_similarity(u, u).item() == pytest.approx(1.0)
    v = torch.tensor([[2.0, 1.0, 0.0, 0.0]])  # no imaginary part: the cosine
    assert angle_similarity(u, v).item() == pytest.approx(4 / 5)
    w = torch.tensor([[0.0, 0.0, 1.0, 2.0]])  # u times i: the real part vanishes
    assert angle_similarity(u, w).item() == pytest.approx(1.0)  # |0 + (-1)|


def test_angle_loss_ranks_by_angle():
    u = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    v = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    gold = torch.tensor([1.0, 0.0])
    assert angle_loss(u, v, gold).item() < angle_loss(u, v, gold.flip(0)).item()


def test_triple_pairs_skips_missing_negatives():
    a, p, n = E[:3], E[:3], E[1:4]
    u, v, y = triple_pairs(a, p, n, torch.tensor([True, False, True]))
    assert u.shape[0] == 5 and y.tolist() == [1, 1, 1, 0, 0]
    assert torch.equal(v[3], n[0]) and torch.equal(v[4], n[2])


def test_objective_weights_and_scored_pairs():
    a, p, n = E[:2], E[:2], E[2:4]
    total, parts = angle_objective(a, p, n, None, LossWeights(1.0, 0.5, 2.0))
    assert set(parts) == {"contrastive", "angle", "cosent"}
    assert total.item() == pytest.approx(sum(parts.values()), rel=1e-5)
    _, parts = angle_objective(a, p, None, None, LossWeights(1.0, 0.0, 1.0), gold=torch.tensor([1.0, 0.0]))
    assert set(parts) == {"cosent"}  # no contrastive term on scored pairs
    with pytest.raises(ValueError):
        angle_objective(a, p, None, None, LossWeights(0.0, 0.0, 0.0))
