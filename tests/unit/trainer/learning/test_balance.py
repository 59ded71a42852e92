"""Effective-number weights, the group-balanced sampler and deferred re-weighting."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from trainer.learning.balance import (
    balanced_sampler_weights,
    class_counts,
    deferred_weights,
    effective_number_weights,
    make_balanced_sampler,
)


def test_weights_sum_to_num_classes_and_favour_rare_classes():
    w = effective_number_weights([1000, 50, 400], beta=0.999)
    assert w.sum().item() == pytest.approx(3.0, rel=1e-6)
    assert w[1] > w[2] > w[0]


def test_matches_the_formula_by_hand():
    # beta = 0.5: raw (1-b)/(1-b^n) = 0.5/0.5 = 1 for n=1, 0.5/0.75 = 2/3 for n=2.
    w = effective_number_weights({0: 1, 1: 2}, beta=0.5)
    assert w.tolist() == pytest.approx([2 * 1 / (1 + 2 / 3), 2 * (2 / 3) / (1 + 2 / 3)])


def test_beta_zero_gives_ones():
    assert effective_number_weights([5, 1, 300], beta=0.0).tolist() == [1.0, 1.0, 1.0]


def test_zero_count_class_gets_the_largest_present_weight():
    w = effective_number_weights([100, 0, 10], beta=0.99)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert w[1].item() == pytest.approx(w[2].item())
    assert w.sum().item() == pytest.approx(3.0, rel=1e-6)


def test_weights_from_the_whole_set_stay_finite_on_a_batch_missing_a_class():
    train_labels = [0] * 500 + [1] * 30 + [2] * 200
    w = effective_number_weights(class_counts(train_labels, 3), beta=0.9999)
    batch = torch.tensor([0, 0, 2, 0])  # no class 1 in this batch
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    loss = F.cross_entropy(logits, batch, weight=w)
    assert torch.isfinite(w).all() and torch.isfinite(loss)
    assert w[1] > w[2] > w[0]


def test_class_counts_and_bad_labels():
    assert class_counts([0, 2, 2, 2], 4) == [1, 0, 3, 0]
    with pytest.raises(ValueError, match="labels"):
        class_counts([0, 3], 3)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5, float("nan")])
def test_bad_beta_raises(beta):
    with pytest.raises(ValueError, match="beta"):
        effective_number_weights([3, 4], beta=beta)


def test_bad_counts_raise():
    with pytest.raises(ValueError, match="counts"):
        effective_number_weights([0, 0], beta=0.9)
    with pytest.raises(ValueError, match="counts"):
        effective_number_weights([3, -1], beta=0.9)
    with pytest.raises(ValueError, match="num_classes"):
        effective_number_weights([3, 1], beta=0.9, num_classes=3)


def test_sampler_weights_give_equal_group_mass():
    groups = [("nyt", 0)] * 70 + [("nyt", 1)] * 20 + [("movie", 0)] * 9 + [("movie", 2)]
    w = balanced_sampler_weights(groups)
    mass = Counter()
    for g, wi in zip(groups, w.tolist(), strict=True):
        mass[g] += wi
    assert all(v == pytest.approx(0.25) for v in mass.values()) and len(mass) == 4


def test_sampler_is_seeded_and_balanced():
    groups = ["a"] * 90 + ["b"] * 10
    draws = list(make_balanced_sampler(groups, 4000, seed=1))
    assert draws == list(make_balanced_sampler(groups, 4000, seed=1))
    share_b = sum(groups[i] == "b" for i in draws) / len(draws)
    assert 0.45 < share_b < 0.55


def test_deferred_weights_switch_at_the_right_epoch():
    w = torch.tensor([0.5, 2.0, 0.5])
    got = [deferred_weights(e, 5, 2, w).tolist() for e in range(5)]
    assert got[:3] == [[1.0, 1.0, 1.0]] * 3
    assert got[3:] == [w.tolist()] * 2
    assert deferred_weights(0, 3, 0, w).tolist() == [1.0, 1.0, 1.0]
    assert deferred_weights(0, 3, 3, w).tolist() == w.tolist()
    with pytest.raises(ValueError, match="defer_epochs"):
        deferred_weights(0, 3, 4, w)
    with pytest.raises(ValueError, match="epoch"):
        deferred_weights(3, 3, 1, w)
