"""Tests for mnistflow.reporting.report: the markdown says what a reader needs."""

from __future__ import annotations

import numpy as np
import pytest

from mnistflow.modeling import metrics as m
from mnistflow.reporting import report

LINKS = report.RunLinks(
    run_id="abc123",
    commit="0123456789abcdef0123456789abcdef01234567",
    experiment_id="1",
    experiment_name="mnist-mlp",
    tracking_uri="sqlite:////repo/mlflow.db",
    ui_command="mlflow ui --backend-store-uri 'sqlite:////repo/mlflow.db'",
    run_url="http://127.0.0.1:5000/#/experiments/1/runs/abc123",
)

pytestmark = pytest.mark.unit


def evaluation(headline: str) -> m.Evaluation:
    y = np.array([0, 1, 2, 1])
    scores = np.array([[0.9, 0.1, 0.1], [0.2, 0.4, 0.1], [0.1, 0.7, 0.6], [0.1, 0.8, 0.2]])
    return m.evaluate(y, scores, scores > 0.5, headline, top_pairs=2)


def render(
    headline: str,
    labels: str = "onehot",
    ignored: list[str] | None = None,
    classes: tuple[str, ...] = ("zero", "one", "two"),
    dataset: str = "mnist",
) -> str:
    return report.render(
        report.ReportInput(
            ev=evaluation(headline),
            class_names=list(classes),
            baseline=0.7,
            labels=labels,
            dataset=dataset,
            model=report.architecture((100, 50, 25), "relu", "adam"),
            n_iter=20,
            ignored=ignored or [],
            figures={"Confusion matrix": "confusion.png"},
            misclassified_csv="outputs/evaluate/misclassified.csv",
            run_info="outputs/train/run.json",
            experiment_name="mnist-mlp",
            numerics="pinned to x86-64-v3, fingerprint `abc`",
        )
    )


def test_report_headline_delta_counts_pairs_and_links() -> None:
    text = render("argmax", ignored=["train.learning_rate='adaptive' has no effect"])
    assert text.startswith("# mnist: test accuracy 75.00% (argmax)")
    assert "+5.00 points against the 70.00% baseline" in text
    assert "exact-match accuracy: 50.00%" in text
    assert "no predicted class: 1; with several: 1" in text
    assert "highest output" in text  # why argmax is the headline
    assert "| one ↔ two | 1 | 0 | 1 |" in text
    assert "| two | 0.0000 | 0.0000 | 0.0000 | 1 |" in text
    assert "train.learning_rate='adaptive' has no effect" in text
    assert "![Confusion matrix](confusion.png)" in text
    assert "`outputs/train/run.json`" in text  # where the run id is
    assert "- Model: MLP 100-50-25 (relu, adam); training: 20 epochs; targets: onehot." in text
    assert "captioned `#<test index> <true class>→<predicted class>" in text


@pytest.mark.parametrize(
    ("sizes", "members", "views", "expected"),
    [
        ((100, 50, 25), 1, 1, "MLP 100-50-25 (relu, adam)"),
        (
            (6000, 1500),
            1,
            5,
            "MLP 1200-300 (relu, adam) with 5 test-time views, merged into one MLP 6000-1500",
        ),
        ((2400,), 2, 1, "2 x MLP 1200 (relu, adam), merged into one MLP 2400"),
        (
            (18000,),
            2,
            9,
            "2 x MLP 1000 (relu, adam) with 9 test-time views each, merged into one MLP 18000",
        ),
        ((1001,), 2, 1, "MLP 1001 (relu, adam)"),  # not a merge of 2: shown as it is
    ],
)
def test_architecture_names_one_net_and_how_it_was_merged(
    sizes: tuple[int, ...], members: int, views: int, expected: str
) -> None:
    assert report.architecture(sizes, "relu", "adam", members, views) == expected


def test_committed_report_has_nothing_per_run_and_the_run_section_has_it() -> None:
    text = render("argmax")
    assert text == render("argmax")
    for per_run in ("abc123", "/repo", "sqlite", "12.3", " s;"):
        assert per_run not in text
    section = report.run_section(LINKS, fit_time_s=12.34)
    assert "Run `abc123` in experiment `mnist-mlp` (id 1), store `sqlite:////repo/mlflow.db`" in (
        section
    )
    assert "Fit time: 12.3 s" in section
    assert f"commit `{LINKS.commit}`" in section
    assert LINKS.run_url in section
    assert "Accuracy against training time" not in section
    with_figure = report.run_section(LINKS, fit_time_s=12.34, time_figure="accuracy_time.png")
    assert "![Accuracy against training time](accuracy_time.png)" in with_figure


def test_report_exact_match_headline_and_index_targets() -> None:
    assert "(exact_match)" in render("exact_match").splitlines()[0]
    assert "-20.00 points" in render("exact_match")
    assert "are the same" in render("argmax", labels="index")
    assert "Settings that had no effect" not in render("argmax")


@pytest.mark.parametrize("headline", ["argmax", "exact_match"])
def test_report_words_are_the_datasets_not_mnists(headline: str) -> None:
    """Another dataset's report names it, its classes and its baseline key; no digits, no
    hard-coded class count."""
    text = render(headline, classes=("Shirt", "Bag", "Coat"), dataset="fashion-mnist")
    assert text.startswith("# fashion-mnist: test accuracy")
    assert "70.00% baseline of fashion-mnist (`evaluate.baseline_accuracy.fashion-mnist`)" in text
    assert "| Bag ↔ Coat |" in text
    assert "3 independent" in text  # the number of classes, not "ten"
    for word in ("digit", "MNIST", " ten "):
        assert word not in text
