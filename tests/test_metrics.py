"""Confusion matrix and per-class accuracy against a plain-loop reference."""
import numpy as np
import pytest

from xnornet.metrics import confusion_matrix, format_per_class, per_class_accuracy, per_class_report


def _reference(labels, preds, n):
    m = np.zeros((n, n), np.int64)
    for t, p in zip(labels, preds):
        m[t, p] += 1
    return m


@pytest.mark.parametrize("n_classes,size", [(2, 1), (3, 7), (10, 1000), (13, 250)])
def test_confusion_matrix_matches_a_loop(n_classes, size):
    rng = np.random.default_rng(size)
    labels = rng.integers(0, n_classes, size)
    preds = np.where(rng.random(size) < 0.6, labels, rng.integers(0, n_classes, size))
    m = confusion_matrix(labels, preds, n_classes)
    np.testing.assert_array_equal(m, _reference(labels, preds, n_classes))
    assert m.sum() == size and np.trace(m) == (labels == preds).sum()
    acc = per_class_accuracy(m)
    for c in range(n_classes):
        mine = labels == c
        if mine.any():
            assert acc[c] == pytest.approx((preds[mine] == c).mean())
        else:
            assert np.isnan(acc[c])


def test_report_names_classes_and_the_largest_mistake():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = np.array([0, 1, 1, 1, 1, 2, 0, 2, 2])
    report = per_class_report(confusion_matrix(labels, preds, 4), ["a", "b", "c", "d"])
    assert report["per_class_accuracy"] == {"a": pytest.approx(1 / 3), "b": 1.0, "c": 0.75, "d": None}
    assert report["top_confusion"] == {"true": "a", "predicted": "b", "count": 2}
    line = format_per_class(report)
    assert "a 33.3" in line and "b 100.0" in line and "d -" in line and "a taken for b (2x)" in line


def test_a_perfect_result_has_no_top_confusion():
    report = per_class_report(confusion_matrix([0, 1, 1], [0, 1, 1], 2), ["x", "y"])
    assert "top_confusion" not in report and "mistake" not in format_per_class(report)


@pytest.mark.parametrize("labels,preds,match", [([0, 1], [0], "equal 1-D shapes"),
                                                ([0, 3], [0, 1], "label lies outside 0..2"),
                                                ([0, 1], [0, -1], "prediction lies outside")])
def test_bad_inputs_are_named(labels, preds, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(labels, preds, 3)


def test_eval_refuses_predictions_beyond_the_data_sets_classes():
    from xnornet import cli
    with pytest.raises(ValueError, match="predicts class 2 but the data set has 2 classes"):
        cli._per_class(("a", "b"), np.array([0, 1]), np.array([0, 2]))
