"""Tests for mnistflow.modeling.metrics on small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from mnistflow.modeling import metrics as m

# 5 rows, 3 classes. Scores are sigmoid-like outputs of one-hot targets.
Y_TRUE = np.array([0, 1, 2, 1, 0])
SCORES = np.array(
    [
        [0.9, 0.1, 0.1],  # {0}, argmax 0: right both ways
        [0.2, 0.4, 0.1],  # {} no class, argmax 1: argmax right, exact wrong
        [0.1, 0.7, 0.6],  # {1,2} several, argmax 1: wrong both ways
        [0.1, 0.8, 0.2],  # {1}: right
        [0.3, 0.2, 0.9],  # {2}, argmax 2: wrong both ways
    ]
)

pytestmark = pytest.mark.unit
SETS = SCORES > 0.5


def test_accuracies_exact_vs_argmax() -> None:
    assert m.accuracy(Y_TRUE, np.argmax(SCORES, axis=1)) == pytest.approx(3 / 5)
    assert m.exact_match_accuracy(Y_TRUE, SETS) == pytest.approx(2 / 5)


def test_rows_with_no_and_several_classes() -> None:
    assert m.set_sizes(SETS) == (1, 1)


def test_true_classes_from_onehot_and_index() -> None:
    onehot = np.eye(3, dtype=np.float32)[Y_TRUE]
    assert np.array_equal(m.true_classes(onehot), Y_TRUE)
    assert np.array_equal(m.true_classes(Y_TRUE.astype(np.uint8)), Y_TRUE)
    with pytest.raises(ValueError, match="exactly one"):
        m.true_classes(np.zeros((2, 3)))


def test_confusion_and_per_class() -> None:
    y_pred = np.argmax(SCORES, axis=1)
    cm = m.confusion_matrix(Y_TRUE, y_pred, 3)
    assert cm.tolist() == [[1, 0, 1], [0, 2, 0], [0, 1, 0]]
    pc = m.per_class(Y_TRUE, y_pred, 3)
    assert pc["precision"] == pytest.approx([1.0, 2 / 3, 0.0])
    assert pc["recall"] == pytest.approx([0.5, 1.0, 0.0])
    assert pc["f1"] == pytest.approx([2 / 3, 0.8, 0.0])
    assert pc["support"].tolist() == [2, 2, 1]


def test_absent_classes_keep_their_row_and_zero_scores() -> None:
    y_true, y_pred = np.array([0, 0, 1]), np.array([0, 1, 1])
    cm = m.confusion_matrix(y_true, y_pred, 4)  # classes 2 and 3 never occur
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    pc = m.per_class(y_true, y_pred, 4)
    assert pc["precision"].tolist() == [1.0, 0.5, 0.0, 0.0]
    assert pc["support"].tolist() == [2, 1, 0, 0]
    assert m.accuracy(np.array([], np.int64), np.array([], np.int64)) == 0.0


def test_confused_pairs_count_both_directions() -> None:
    cm = np.zeros((10, 10), dtype=np.int64)
    cm[3, 8], cm[8, 3] = 4, 5  # 3<->8: 9 in all
    cm[4, 9] = 7  # 4->9 only
    cm[9, 4] = 1
    cm[1, 7] = 2
    pairs = m.confused_pairs(cm, top=2)
    assert [(p.a, p.b, p.total) for p in pairs] == [(3, 8, 9), (4, 9, 8)]
    assert (pairs[0].a_as_b, pairs[0].b_as_a) == (4, 5)
    # symmetric: transposing the matrix gives the same pairs and totals
    flipped = m.confused_pairs(cm.T, top=2)
    assert [(p.a, p.b, p.total) for p in flipped] == [(3, 8, 9), (4, 9, 8)]
    assert m.confused_pairs(np.eye(3, dtype=np.int64), top=5) == []


def test_evaluate_headline_and_misclassified_rows() -> None:
    ev = m.evaluate(Y_TRUE, SCORES, SETS, "argmax", top_pairs=3)
    assert ev.accuracy == pytest.approx(0.6)
    assert ev.wrong.tolist() == [False, False, True, False, True]
    exact = m.evaluate(Y_TRUE, SCORES, SETS, "exact_match", top_pairs=3)
    assert exact.accuracy == pytest.approx(0.4)
    assert exact.wrong.tolist() == [False, True, True, False, True]
    with pytest.raises(ValueError, match="headline"):
        m.evaluate(Y_TRUE, SCORES, SETS, "top5", top_pairs=3)


def test_metrics_dict_holds_the_headline_figures_headline_first() -> None:
    ev = m.evaluate(Y_TRUE, SCORES, SETS, "argmax", top_pairs=3)
    out = m.metrics_dict(ev, baseline=0.5)
    assert list(out) == [
        "test_accuracy",
        "test_accuracy_argmax",
        "test_accuracy_exact_match",
        "delta_to_baseline",
        "n_test",
        "rows_no_class",
        "rows_multi_class",
    ]
    assert out["test_accuracy"] == 0.6
    assert out["test_accuracy_argmax"] == 0.6
    assert out["test_accuracy_exact_match"] == 0.4
    assert out["delta_to_baseline"] == pytest.approx(0.1)
    assert out["n_test"] == 5
    assert out["rows_no_class"] == 1
    assert out["rows_multi_class"] == 1


def test_per_class_rows_name_each_class() -> None:
    ev = m.evaluate(Y_TRUE, SCORES, SETS, "argmax", top_pairs=3)
    rows = m.per_class_rows(ev, ["zero", "one", "two"])
    assert [r[0] for r in rows] == ["zero", "one", "two"]
    assert len(m.PER_CLASS_COLUMNS) == len(rows[0])
    by_name = {r[0]: dict(zip(m.PER_CLASS_COLUMNS, r, strict=True)) for r in rows}
    assert by_name["one"]["recall"] == 1.0
    # supports count the true labels; the oracle is the label array itself
    assert [r[4] for r in rows] == [list(Y_TRUE).count(k) for k in range(3)]


def test_dvc_and_mlflow_metrics_share_their_names() -> None:
    ev = m.evaluate(Y_TRUE, SCORES, SETS, "exact_match", top_pairs=3)
    dvc, logged = m.metrics_dict(ev, 0.5), m.mlflow_metrics(ev, 0.5)
    assert set(dvc) <= set(m.summary(ev, 0.5)) <= set(logged)
    assert {m.HEADLINE, "test_accuracy_argmax", "test_accuracy_exact_match"} <= set(dvc)
    assert logged[m.HEADLINE] == pytest.approx(0.4)  # the headline follows evaluate.headline
    f1 = {r[0]: r[3] for r in m.per_class_rows(ev, ["0", "1", "2"])}
    assert logged["f1_class_0"] == pytest.approx(f1["0"], abs=1e-6)
    assert m.headline_key(ev.headline) == "test_accuracy_exact_match"


def test_check_test_labels_names_the_mismatch() -> None:
    m.check_test_labels(Y_TRUE, Y_TRUE.astype(np.uint8), 3, 3, "a and b")
    with pytest.raises(ValueError, match="a and b disagree on the test labels"):
        m.check_test_labels(Y_TRUE, np.roll(Y_TRUE, 1), 3, 3, "a and b")
    with pytest.raises(ValueError, match="3 encoded classes, but 10 class names"):
        m.check_test_labels(Y_TRUE, Y_TRUE, 3, 10, "a and b")


def test_describe_is_one_line_of_the_headline_and_the_set_sizes() -> None:
    y = np.array([0, 1, 1, 0])
    scores = np.array([[0.9, 0.1], [0.6, 0.7], [0.2, 0.8], [0.3, 0.4]])
    ev = m.evaluate(y, scores, scores > 0.5, "exact_match", top_pairs=1)
    # argmax 0, 1, 1, 1 (3 of 4 right); sets {0}, {0,1}, {1}, {} (2 exactly right)
    assert m.describe(ev) == (
        "test_accuracy 0.5000 (exact_match); argmax 0.7500, exact match 0.5000; "
        "rows with no class 1, several 1"
    )
