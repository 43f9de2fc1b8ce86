"""Evaluation protocol: shot groups at their exact boundaries, hand-computed group accuracies."""

import math

import numpy as np
import pytest
import torch

from system.method.metrics import SHOT_GROUPS, per_class_accuracy, shot_accuracy, shot_group, topk_accuracy


def test_shot_group_boundaries():
    assert SHOT_GROUPS == ("many", "medium", "few")
    assert [shot_group(n) for n in (0, 19, 20, 21, 99, 100, 101, 5000)] == [
        "few",
        "few",
        "medium",
        "medium",
        "medium",
        "medium",
        "many",
        "many",
    ]
    # custom thresholds keep the semantics: many > many_threshold, few < few_threshold
    assert [shot_group(n, many_threshold=50, few_threshold=5) for n in (4, 5, 50, 51)] == [
        "few",
        "medium",
        "medium",
        "many",
    ]


def test_per_class_accuracy_with_nan():
    acc = per_class_accuracy([0, 1, 1, 2], [0, 1, 2, 2], num_classes=4)
    assert acc[:3].tolist() == [1.0, 1.0, 0.5]
    assert math.isnan(acc[3])


# train counts: classes 0, 1 many; 2, 3 medium (20 is medium); 4, 5 few (19 is few)
COUNTS = [200, 150, 50, 20, 19, 5]
# class 0: 3 of 4 right; class 1: 0 of 1; class 2: 2 of 2; class 3: 1 of 2; class 4: 1 of 1; class 5: no sample
LABELS = [0, 0, 0, 0, 1, 2, 2, 3, 3, 4]
PREDS = [0, 0, 0, 1, 0, 2, 2, 3, 0, 4]


def test_shot_accuracy_hand_computed():
    out = shot_accuracy(PREDS, LABELS, COUNTS)
    assert out["overall"] == pytest.approx(70.0)  # 7 of 10 samples
    assert out["many"] == pytest.approx(37.5)  # mean of classes (75, 0), not 3 of 5 samples (60)
    assert out["medium"] == pytest.approx(75.0)  # (100 + 50) / 2
    assert out["few"] == pytest.approx(100.0)  # class 5 has no eval sample: left out, not counted as 0
    assert out["per_class"] == [75.0, 0.0, 100.0, 50.0, 100.0, None]
    assert out["group_sizes"] == {"many": 2, "medium": 2, "few": 2}


def test_shot_accuracy_accepts_tensors_and_is_order_invariant():
    ref = shot_accuracy(PREDS, LABELS, COUNTS)
    as_torch = shot_accuracy(torch.tensor(PREDS), torch.tensor(LABELS), torch.tensor(COUNTS))
    perm = np.random.default_rng(0).permutation(len(LABELS))
    shuffled = shot_accuracy(np.array(PREDS)[perm], np.array(LABELS)[perm], np.array(COUNTS))
    assert as_torch == ref and shuffled == ref


def test_empty_group_is_none_never_zero():
    out = shot_accuracy([0, 1, 1], [0, 1, 1], [500, 300])
    assert out["many"] == pytest.approx(100.0)
    assert out["medium"] is None and out["few"] is None
    assert out["group_sizes"] == {"many": 2, "medium": 0, "few": 0}
    # a group with classes but no eval samples is None too
    out = shot_accuracy([0], [0], [500, 3])
    assert out["few"] is None and out["group_sizes"]["few"] == 1


def test_shot_accuracy_custom_thresholds_and_bad_labels():
    out = shot_accuracy(PREDS, LABELS, COUNTS, many_threshold=40, few_threshold=10)
    assert out["group_sizes"] == {"many": 3, "medium": 2, "few": 1}
    assert out["many"] == pytest.approx((75.0 + 0.0 + 100.0) / 3)
    assert out["medium"] == pytest.approx(75.0)  # classes 3 (50) and 4 (100)
    assert out["few"] is None  # class 5
    with pytest.raises(ValueError):
        shot_accuracy([0], [6], COUNTS)


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.06], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 1])
    assert topk_accuracy(logits, labels, k=1) == pytest.approx(100.0 / 3.0)
    assert topk_accuracy(logits, labels, k=2) == pytest.approx(100.0)
    assert topk_accuracy(logits.numpy(), labels.numpy(), k=10) == pytest.approx(100.0)  # k > K: every class
