"""Leaderboard: the pure table shaping, and a real sqlite MLflow store with several runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mnistflow.modeling.metrics import HEADLINE
from mnistflow.reporting.leaderboard import (
    of_dataset,
    plot,
    shape_table,
    to_markdown,
    write_leaderboard,
)
from mnistflow.tracking.query import (
    ExperimentRunError,
    LeaderboardError,
    experiment_run,
    fetch_runs,
    fetch_top_runs,
)
from tests.mlflow_fixtures import EXPERIMENT, Store, copy_store, shared_store

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return shared_store(tmp_path_factory)


def _runs(rows: list[dict]) -> pd.DataFrame:
    """Rows shaped like fetch_runs' output."""
    base = pd.Timestamp("2026-01-01", tz="UTC")
    frame = pd.DataFrame(rows)
    frame["start_time"] = [base + pd.Timedelta(minutes=i) for i in range(len(rows))]
    return frame


def test_shape_table_ranks_by_accuracy_then_fit_time_and_computes_deltas() -> None:
    runs = _runs(
        [
            {"run_id": "a", "run_name": "slow-tie", "status": "FINISHED",
             "metrics.test_accuracy": 0.98, "metrics.fit_time_s": 50.0,
             "metrics.delta_to_baseline": 0.01, "params.train.alpha": "0.001"},
            {"run_id": "b", "run_name": "fast-tie", "status": "FINISHED",
             "metrics.test_accuracy": 0.98, "metrics.fit_time_s": 10.0,
             "params.evaluate.baseline_accuracy": "0.9", "params.train.alpha": "0.01"},
            {"run_id": "c", "run_name": "low", "status": "FINISHED",
             "metrics.test_accuracy": 0.95, "metrics.fit_time_s": 5.0,
             "params.train.alpha": "0.1"},
            {"run_id": "d", "run_name": "dead", "status": "KILLED",
             "metrics.fit_time_s": 3.0, "params.train.alpha": "0.1"},
        ]
    )  # fmt: skip
    board = shape_table(runs, baseline_accuracy=0.97)

    assert list(board.ranked["run"]) == ["fast-tie", "slow-tie", "low"]
    assert list(board.ranked["rank"]) == [1, 2, 3]
    deltas = dict(zip(board.ranked["run"], board.ranked["delta"], strict=True))
    assert deltas["slow-tie"] == pytest.approx(0.01)  # the logged metric
    assert deltas["fast-tie"] == pytest.approx(0.08)  # against the run's own baseline param
    assert deltas["low"] == pytest.approx(-0.02)  # against the configured baseline
    assert list(board.incomplete["run"]) == ["dead"]
    assert list(board.incomplete["status"]) == ["KILLED"]
    assert HEADLINE not in board.incomplete.columns
    assert "train.alpha" in board.ranked.columns  # varies, so it is a column


def test_a_runs_own_baseline_is_the_one_of_its_dataset() -> None:
    runs = _runs(
        [
            {"run_id": "f", "run_name": "fashion", "status": "FINISHED",
             "metrics.test_accuracy": 0.89, "params.data.dataset": "fashion-mnist",
             "params.evaluate.baseline_accuracy.fashion-mnist": "0.88"},
            {"run_id": "m", "run_name": "mnist", "status": "FINISHED",
             "metrics.test_accuracy": 0.98, "params.data.dataset": "mnist",
             "params.evaluate.baseline_accuracy.mnist": "0.97"},
            {"run_id": "o", "run_name": "older", "status": "FINISHED",
             "metrics.test_accuracy": 0.95, "params.data.dataset": "fashion-mnist"},
        ]
    )  # fmt: skip
    board = shape_table(runs, baseline_accuracy=0.97, dataset="mnist")
    deltas = dict(zip(board.ranked["run"], board.ranked["delta"], strict=True))
    assert deltas["fashion"] == pytest.approx(0.01)
    assert deltas["mnist"] == pytest.approx(0.01)
    assert deltas["older"] == pytest.approx(-0.02)  # logged none: the configured dataset's
    assert "mnist: 0.9700" in to_markdown(board, "exp", None)


def test_a_leaderboard_ranks_one_datasets_runs() -> None:
    runs = _runs(
        [
            {"run_id": "f", "run_name": "fashion", "status": "FINISHED",
             "metrics.test_accuracy": 0.99, "tags.dataset": "fashion-mnist"},
            {"run_id": "m", "run_name": "mnist", "status": "FINISHED",
             "metrics.test_accuracy": 0.98, "tags.dataset": "mnist"},
            {"run_id": "o", "run_name": "untagged", "status": "FINISHED",
             "metrics.test_accuracy": 0.97, "params.data.dataset": "mnist"},
        ]
    )  # fmt: skip
    assert list(of_dataset(runs, "mnist")["run_id"]) == ["m", "o"]
    assert list(of_dataset(runs, "fashion-mnist")["run_id"]) == ["f"]
    board = shape_table(of_dataset(runs, "mnist"), 0.97, "mnist")
    assert list(board.ranked["run"]) == ["mnist", "untagged"]
    assert to_markdown(board, "e", None).startswith(
        "# Leaderboard: MLflow experiment `e`, dataset `mnist`"
    )


def test_shape_table_moves_constant_params_out_of_the_table() -> None:
    runs = _runs(
        [
            {"run_id": i, "run_name": f"r{i}", "status": "FINISHED",
             "metrics.test_accuracy": acc, "params.train.solver": "adam",
             "params.train.hidden_layer_sizes": hidden}
            for i, (acc, hidden) in enumerate([(0.97, "[100, 50, 25]"), (0.98, "[256, 128]")])
        ]
    )  # fmt: skip
    board = shape_table(runs, baseline_accuracy=0.97)
    assert board.common == {"train.solver": "adam"}
    assert "train.solver" not in board.ranked.columns
    assert list(board.ranked["train.hidden_layer_sizes"]) == ["[256, 128]", "[100, 50, 25]"]
    assert math.isnan(board.ranked["fit_time_s"].iloc[0])  # no fit time logged: missing


def test_the_table_shows_what_differs_and_spells_booleans_one_way() -> None:
    def row(name: str, accuracy: float, deskew: str, commit: str, dirty: str, pinned: str) -> dict:
        """A run as the pipeline logs it (MLflow spells a Python bool True/False)."""
        return {
            "run_id": name, "run_name": name, "status": "FINISHED",
            "metrics.test_accuracy": accuracy, "metrics.fit_time_s": 10.0,
            "params.encode.deskew": deskew, "params.train.tol": "0.0001",
            "params.data.dataset": "mnist", "params.evaluate.baseline_accuracy.mnist": "0.97",
            "tags.is_baseline": str(deskew == "False").lower(),
            "tags.git_commit": commit + "0" * 33, "tags.git_dirty": dirty, "tags.dataset": "mnist",
            "tags.numerics.fingerprint": "16d5b34641d6", "tags.numerics.pinned": pinned,
        }  # fmt: skip

    runs = _runs(
        [
            row("baseline@1234567", 0.97, "False", "1234567", "false", "false"),
            row("deskewed", 0.98, "True", "abcdef0", "true", "true"),
        ]
    )
    board = shape_table(runs, baseline_accuracy=0.97, dataset="mnist")
    assert board.varying == ("encode.deskew",)  # tol is the same; dataset has its column
    assert list(board.ranked["encode.deskew"]) == ["true", "false"]  # as params.yaml says
    assert list(board.ranked["commit"]) == ["abcdef0-dirty", "1234567"]
    # the numerics fingerprint, marked where the run ran on the CPU's own kernels
    assert list(board.ranked["numerics"]) == ["16d5b34641d6", "16d5b34641d6 unpinned"]
    text = to_markdown(board, "e", None)
    header = next(line for line in text.splitlines() if line.startswith("| rank"))
    assert header == (
        "| rank | run | test_accuracy | delta | encode.deskew | dataset | commit | numerics "
        "| status |"
    )
    full = to_markdown(board, "e", None, all_columns=True)
    assert "| fit_time_s | is_baseline | dvc_exp_name | started | run_id |" in full
    assert "False" not in full
    assert "True" not in full


def test_the_figure_stops_at_one_and_shows_only_what_it_draws() -> None:
    runs = _runs(
        [
            {"run_id": str(i), "run_name": f"r{i}", "status": "FINISHED",
             "metrics.test_accuracy": acc, "metrics.fit_time_s": 5.0 + i,
             "tags.is_baseline": "false"}
            for i, acc in enumerate([0.999, 0.995, 0.99])
        ]
    )  # fmt: skip
    fig = plot(shape_table(runs, baseline_accuracy=0.97, dataset="mnist"), "e")
    (ax,) = fig.axes
    assert ax.get_ylim()[1] <= 1.0
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["run", "mnist baseline accuracy 0.97"]  # no baseline-config star


def test_markdown_without_runs_says_so() -> None:
    board = shape_table(pd.DataFrame(columns=["run_id", "status", "start_time"]), 0.97)
    text = to_markdown(board, "exp", figure=None)
    assert "No run has a headline accuracy yet." in text
    assert text.startswith("# Leaderboard: MLflow experiment `exp`")


def test_fetch_runs_reads_every_run_through_mlflow(store: Store) -> None:
    runs = fetch_runs(store.uri, EXPERIMENT)
    assert sorted(runs["run_name"]) == sorted(store.runs)
    by_name = runs.set_index("run_name")
    assert by_name.loc["crashed", "status"] == "FAILED"
    assert by_name.loc["wide-alpha", "metrics.test_accuracy"] == pytest.approx(0.9811)
    assert by_name.loc["wide-alpha", "tags.dvc_exp_name"] == "wide-alpha"
    assert by_name.loc["baseline", "params.train.hidden_layer_sizes"] == "[6]"


def test_fetch_runs_unknown_experiment_is_a_clear_error(store: Store) -> None:
    with pytest.raises(LeaderboardError, match="no MLflow experiment 'nope'"):
        fetch_runs(store.uri, "nope")


def test_experiment_run_finds_the_run_of_a_dvc_experiment_name(store: Store) -> None:
    assert experiment_run(store.uri, EXPERIMENT, "wide-alpha") == store.runs["wide-alpha"].run_id
    assert experiment_run(store.uri, EXPERIMENT, "small-net") == store.runs["small"].run_id
    with pytest.raises(ExperimentRunError, match=r"crashed-exp.*FAILED"):
        experiment_run(store.uri, EXPERIMENT, "crashed-exp")  # no FINISHED run
    with pytest.raises(ExperimentRunError, match="no run"):
        experiment_run(store.uri, EXPERIMENT, "never-ran")
    with pytest.raises(ExperimentRunError, match="no run"):
        experiment_run(store.uri, "nope", "wide-alpha")


def test_leaderboard_from_a_real_store(store: Store, tmp_path: Path) -> None:
    board = shape_table(fetch_runs(store.uri, EXPERIMENT), baseline_accuracy=0.97)
    assert list(board.ranked["run"]) == ["wide-alpha", "baseline", "small"]
    np.testing.assert_allclose(board.ranked["delta"], [0.0111, 0.0012, -0.0295], atol=1e-9)
    assert list(board.ranked["is_baseline"]) == ["false", "true", "false"]
    assert list(board.incomplete["run"]) == ["crashed"]
    assert board.incomplete["run_id"].iloc[0] == store.runs["crashed"].run_id

    markdown, figure = tmp_path / "reports" / "leaderboard.md", tmp_path / "reports" / "lb.png"
    write_leaderboard(board, EXPERIMENT, markdown, figure)
    text = markdown.read_text()
    table_rows = [line for line in text.splitlines() if line.startswith("| ")]
    # header, then the three ranked runs in order, then the incomplete table
    assert [r.split(" | ")[1] for r in table_rows[1:4]] == ["wide-alpha", "baseline", "small"]
    # default columns: headline, delta, the params that differ (the fixture varies hidden
    # sizes and alpha), dataset, commit (none logged here), status
    assert table_rows[0] == (
        "| rank | run | test_accuracy | delta | train.hidden_layer_sizes | train.alpha "
        "| dataset | commit | numerics | status |"
    )
    assert "| 1 | wide-alpha | 0.9811 | +0.0111 | [12] | 0.001 | mnist | — | — | FINISHED |" in text
    assert "## Runs without a headline accuracy" in text
    assert "crashed" in text.split("## Runs without a headline accuracy")[1]
    assert "![accuracy against fit time](lb.png)" in text
    assert store.runs["wide-alpha"].run_id in text
    with Image.open(figure) as img:
        assert img.format == "PNG"
        assert img.size == (800, 500)
    assert not list(markdown.parent.glob(".*.tmp"))  # atomic writes left nothing behind


def test_shape_table_keeps_the_best_and_the_newest_incomplete() -> None:
    runs = _runs(
        [
            {"run_id": "a", "run_name": "a", "status": "FINISHED", "metrics.test_accuracy": 0.95,
             "params.train.alpha": "1"},
            {"run_id": "b", "run_name": "b", "status": "FINISHED", "metrics.test_accuracy": 0.99,
             "params.train.alpha": "2"},
            {"run_id": "c", "run_name": "c", "status": "FAILED", "params.train.alpha": "3"},
            {"run_id": "d", "run_name": "d", "status": "FINISHED", "metrics.test_accuracy": 0.97,
             "metrics.fit_time_s": 9.0, "params.train.alpha": "4"},
            {"run_id": "e", "run_name": "e", "status": "FINISHED", "metrics.test_accuracy": 0.97,
             "metrics.fit_time_s": 3.0, "params.train.alpha": "5"},
            {"run_id": "f", "run_name": "f", "status": "KILLED", "params.train.alpha": "2"},
        ]
    )  # fmt: skip
    board = shape_table(runs, 0.97, "mnist", top=2)
    assert list(board.ranked["run"]) == ["b", "e"]  # the 0.97 tie: the shorter fit
    assert list(board.incomplete["run"]) == ["f", "c"]  # newest first
    assert board.varying == ("train.alpha",)
    text = to_markdown(board, "exp", None)
    assert (
        "The best 2 runs by headline accuracy (`test_accuracy`; at most `leaderboard.top` = 2"
        in text
    )
    assert (
        "## Runs without a headline accuracy (failed, killed or running) (the newest 2 at most)"
        in text
    )
    assert list(shape_table(runs, 0.97, "mnist", top=1).ranked["run"]) == ["b"]
    assert len(shape_table(runs, 0.97, "mnist").ranked) == 4  # no top: every run


def test_fetch_top_runs_asks_the_store_for_the_best_and_the_newest_unfinished(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixture's accuracies: wide-alpha 0.9811, baseline 0.9712, small 0.9405; crashed
    FAILED. A run of another dataset, or without the dataset tag, never comes back."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from mnistflow.tracking import query

    own = copy_store(store, tmp_path)
    client = MlflowClient(own.uri)
    for name, accuracy, tags, params in (
        ("other-dataset", 0.999, [RunTag("dataset", "fashion-mnist")], []),
        ("untagged", 0.975, [], [Param("data.dataset", "mnist")]),
    ):
        run = client.create_run(own.experiment_id, run_name=name)
        metric = Metric("test_accuracy", accuracy, 0, 0)
        client.log_batch(run.info.run_id, metrics=[metric], params=params, tags=tags)
        client.set_terminated(run.info.run_id, "FINISHED")

    def names(top: int) -> set[str]:
        return set(fetch_top_runs(own.uri, EXPERIMENT, "mnist", top)["run_name"])

    # the oracle: the store ranking every run (RANKING, no threshold)
    ranked = client.search_runs(
        [own.experiment_id], "tags.dataset = 'mnist'", order_by=query.RANKING, max_results=10
    )
    assert [r.info.run_name for r in ranked][:3] == ["wide-alpha", "baseline", "small"]
    for sample in (query.SAMPLE, 1):  # every run read; a threshold from the newest run or two
        monkeypatch.setattr(query, "SAMPLE", sample)
        assert names(1) == {"wide-alpha", "crashed"}  # the best; the unfinished
        assert names(2) == {"wide-alpha", "baseline", "crashed"}
        assert names(10) == {"wide-alpha", "baseline", "small", "crashed"}
        for top in (1, 2, 3):
            best = query.best_runs(client, own.experiment_id, "tags.dataset = 'mnist'", top)
            assert [r.info.run_id for r in best] == [r.info.run_id for r in ranked[:top]]
    runs = fetch_top_runs(own.uri, EXPERIMENT, "mnist", 2)
    board = shape_table(of_dataset(runs, "mnist"), 0.97, "mnist", top=2)
    assert list(board.ranked["run"]) == ["wide-alpha", "baseline"]
    assert list(board.incomplete["run"]) == ["crashed"]
    with pytest.raises(LeaderboardError, match="no MLflow experiment 'nope'"):
        fetch_top_runs(own.uri, "nope", "mnist", 1)
