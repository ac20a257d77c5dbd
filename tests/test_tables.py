"""Tests for mnistflow.reporting.tables and .misclassified: CSV text and captions."""

from __future__ import annotations

import numpy as np
import pytest

from mnistflow.reporting import misclassified, tables

Y_TRUE = np.array([0, 1, 2, 1, 0])
SCORES = np.array(
    [[0.9, 0.1, 0.1], [0.2, 0.4, 0.1], [0.1, 0.7, 0.6], [0.1, 0.8, 0.2], [0.3, 0.2, 0.9]]
)
SETS = SCORES > 0.5
WRONG = np.argmax(SCORES, axis=1) != Y_TRUE


@pytest.mark.unit
def test_loss_csv_with_and_without_validation() -> None:
    assert tables.loss_csv([0.5, 0.25], None) == "epoch,loss\n1,0.50000000\n2,0.25000000\n"
    assert tables.loss_csv([0.5], [0.9]) == "epoch,loss,early_stop_score\n1,0.50000000,0.90000000\n"


@pytest.mark.unit
def test_confusion_csv_names_classes() -> None:
    text = tables.confusion_csv(np.array([0, 2]), np.array([1, 2]), ["zero", "one", "two"])
    assert text == "actual,predicted\nzero,one\ntwo,two\n"


@pytest.mark.unit
def test_misclassified_rows_and_csv() -> None:
    rows = misclassified.rows(Y_TRUE, SCORES, SETS, WRONG, "data/images")
    assert [r.index for r in rows] == [2, 4]
    assert rows[0] == misclassified.Misclassified(
        index=2,
        true=2,
        predicted=1,
        confidence=0.7,
        predicted_set=(1, 2),
        png="data/images/test/2/00002.png",
    )
    lines = misclassified.to_csv(rows).splitlines()
    assert lines[0] == "index,true,predicted,confidence,predicted_set,png"
    assert lines[1] == "2,2,1,0.7,1 2,data/images/test/2/00002.png"
    assert lines[2] == "4,0,2,0.9,2,data/images/test/0/00004.png"


@pytest.mark.unit
def test_captions_show_the_set_only_when_it_differs() -> None:
    names = ["zero", "one", "two"]
    rows = misclassified.rows(Y_TRUE, SCORES, SETS, np.ones(5, bool), "d")
    assert (
        misclassified.caption(rows[2], names, multilabel=True) == "#2 two→one (0.70)\nset: one+two"
    )
    assert misclassified.caption(rows[1], names, multilabel=True) == "#1 one→one (0.40)\nset: none"
    assert misclassified.caption(rows[4], names, multilabel=True) == "#4 zero→two (0.90)"
    assert misclassified.caption(rows[2], names, multilabel=False) == "#2 two→one (0.70)"
