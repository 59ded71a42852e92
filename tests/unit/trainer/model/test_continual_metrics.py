"""Continual-learning metrics on hand-computed accuracy matrices, and F1."""

import numpy as np
import pytest

from trainer.model.continual_metrics import (
    accuracy,
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    macro_f1,
    per_class_f1,
    summary,
    worst_drop,
)


def test_two_steps_by_hand():
    R = [[0.8, 0.5], [0.7, 0.9]]
    # Final row mean (0.7+0.9)/2; AIA ((0.8) + (0.7+0.9)/2)/2; domain 0 fell 0.8 -> 0.7.
    assert summary(R) == pytest.approx({
        "average_accuracy": 0.8,
        "average_incremental_accuracy": 0.8,
        "forgetting": 0.1,
        "backward_transfer": -0.1,
        "worst_drop": 0.1,
    })


def test_three_steps_worst_drop_exceeds_final_forgetting():
    R = np.array([[0.9, 0.1, 0.2],
                  [0.5, 0.8, 0.3],
                  [0.85, 0.75, 0.9]])
    # Domain 0 fell to 0.5 after step 1, then recovered to 0.85.
    assert worst_drop(R) == pytest.approx(0.4)
    # forgetting: d0 max(0.9, 0.5) - 0.85 = 0.05; d1 0.8 - 0.75 = 0.05.
    assert forgetting(R) == pytest.approx(0.05)
    # BWT: ((0.85 - 0.9) + (0.75 - 0.8)) / 2.
    assert backward_transfer(R) == pytest.approx(-0.05)
    assert average_accuracy(R) == pytest.approx(2.5 / 3)
    # AIA: (0.9 + (0.5+0.8)/2 + 2.5/3) / 3.
    assert average_incremental_accuracy(R) == pytest.approx((0.9 + 0.65 + 2.5 / 3) / 3)


def test_forgetting_uses_best_earlier_step_not_just_the_diagonal():
    R = [[0.6, 0.0, 0.0], [0.9, 0.7, 0.0], [0.8, 0.7, 0.9]]
    assert forgetting(R) == pytest.approx(((0.9 - 0.8) + 0.0) / 2)
    assert backward_transfer(R) == pytest.approx(((0.8 - 0.6) + 0.0) / 2)
    assert worst_drop(R) == pytest.approx(0.1)


def test_no_drop_is_zero_and_improvement_gives_negative_forgetting():
    R = [[0.5, 0.0], [0.7, 0.9]]
    assert worst_drop(R) == 0.0
    assert forgetting(R) == pytest.approx(-0.2)


def test_single_step():
    assert summary([[0.75]]) == {
        "average_accuracy": 0.75, "average_incremental_accuracy": 0.75,
        "forgetting": 0.0, "backward_transfer": 0.0, "worst_drop": 0.0,
    }


@pytest.mark.parametrize("R", [[[0.8, 0.5], [0.7]], [[0.8, 0.5]], [], [[0.1, float("nan")], [0, 0]]])
def test_bad_matrices_raise(R):
    with pytest.raises(ValueError, match="R must"):
        summary(R)


def test_f1_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    # class 0: TP2 FP0 FN1 -> 4/5; class 1: TP1 FP1 FN1 -> 2/4; class 2: TP1 FP1 FN0 -> 2/3.
    assert per_class_f1(y_true, y_pred, 3) == pytest.approx([0.8, 0.5, 2 / 3])
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_absent_class_is_excluded_but_only_predicted_class_counts_zero():
    # Class 2 never appears: F1 0.0 listed, left out of the macro mean.
    assert per_class_f1([0, 1], [0, 1], 3) == [1.0, 1.0, 0.0]
    assert macro_f1([0, 1], [0, 1], 3) == 1.0
    # Class 1 is predicted but never true: F1 0 and it counts.
    assert macro_f1([0, 0], [0, 1], 2) == pytest.approx((2 / 3 + 0.0) / 2)


def test_label_errors():
    with pytest.raises(ValueError, match="y_true"):
        macro_f1([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        per_class_f1([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="y_true"):
        accuracy([], [])


def test_accuracy_before_a_domain_is_trained_is_ignored():
    # R[0][1] = 0.95 is zero-shot accuracy on domain 1 before step 1 trained on it.
    R = [[0.75, 0.95, 0.1], [0.7, 0.9, 0.2], [0.7, 0.85, 0.9]]
    assert forgetting(R) == pytest.approx(((0.75 - 0.7) + (0.9 - 0.85)) / 2)
    assert worst_drop(R) == pytest.approx(0.05)
    assert average_incremental_accuracy(R) == pytest.approx((0.75 + 0.8 + 2.45 / 3) / 3)
