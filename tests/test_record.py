"""Tests for mnistflow.tracking.record: what a pipeline run logs, against a fake run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistflow.config import load_config
from mnistflow.data.encode import Encoding
from mnistflow.modeling import metrics as m
from mnistflow.tracking import record
from mnistflow.tracking.artifacts import ENCODING_ARTIFACT
from mnistflow.util.fileio import load_npz
from tests.helpers import BASELINE_TRAIN, REPO_ROOT


class FakeRun:
    """Records calls the way :class:`mnistflow.tracking.runs.Run` would receive them."""

    run_id, experiment_id, uri = "r1", "7", "sqlite:////somewhere/mlflow.db"

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.metrics, self.tags, self.artifacts = tmp, {}, {}, {}
        self.steps: list[tuple[str, float, int | None]] = []

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.steps.append((key, value, step))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.metrics |= metrics

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags |= tags

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        kept = self.tmp / artifact_path / Path(path).name
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_bytes(Path(path).read_bytes())  # the temporary file is gone afterwards
        self.artifacts[f"{artifact_path}/{Path(path).name}"] = kept


@pytest.fixture
def fake(tmp_path: Path) -> Any:
    return FakeRun(tmp_path)


@pytest.mark.unit
def test_encoding_is_logged_under_its_fixed_name(fake: Any) -> None:
    enc = Encoding("standardize", True, np.arange(4, dtype=np.float32), np.ones(4, np.float32))
    record.log_encoding(fake, enc)
    assert list(fake.artifacts) == [ENCODING_ARTIFACT]
    assert Encoding.from_arrays(load_npz(fake.artifacts[ENCODING_ARTIFACT]), "a") == enc


@pytest.mark.unit
def test_epochs_evaluation_and_run_info(fake: Any) -> None:
    record.log_epoch(fake, 1, 0.5, None)
    record.log_epoch(fake, 2, 0.4, 0.9)
    assert fake.steps == [
        ("train_loss", 0.5, 1),
        ("train_loss", 0.4, 2),
        ("early_stop_score", 0.9, 2),
    ]
    y = np.array([0, 1, 1])
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    ev = m.evaluate(y, scores, scores > 0.5, "argmax", top_pairs=1)
    record.log_evaluation(fake, ev, baseline=0.5)
    assert fake.tags == {"headline_metric": "test_accuracy_argmax"}
    # by hand: argmax predicts 0, 0, 1 (row 1 wrong); over 0.5 the sets are {0}, {0}, {1}
    assert fake.metrics == pytest.approx(
        {
            "test_accuracy": 2 / 3,
            "test_accuracy_argmax": 2 / 3,
            "test_accuracy_exact_match": 2 / 3,
            "baseline": 0.5,
            "delta_to_baseline": 2 / 3 - 0.5,
            "rows_no_class": 0,
            "rows_multi_class": 0,
            "n_test": 3,
            "precision_class_0": 1 / 2,  # rows 0 and 1 predicted 0, only row 0 is a 0
            "recall_class_0": 1.0,
            "f1_class_0": 2 / 3,
            "precision_class_1": 1.0,  # row 2 predicted 1, and it is
            "recall_class_1": 1 / 2,  # of rows 1 and 2
            "f1_class_1": 2 / 3,
        }
    )
    info = record.run_info(fake, "mnist-mlp", ["w"], {"pinned": "true", "fingerprint": "f"})
    assert info == {
        "run_id": "r1",
        "experiment_id": "7",
        "experiment_name": "mnist-mlp",
        "ignored_settings": ["w"],
        "numerics": {"pinned": "true", "fingerprint": "f"},
    }  # no tracking URI: nothing machine-specific


@pytest.mark.unit
def test_train_params_are_flat_and_cover_encode_and_train() -> None:
    flat = record.train_params(load_config(REPO_ROOT / "params.yaml"))
    assert flat["data.dataset"] == "mnist"
    assert flat["encode.scaling"] == "divide255"
    assert flat["train.hidden_layer_sizes"] == BASELINE_TRAIN["hidden_layer_sizes"]
    assert flat["mlflow.experiment_name"] == "mnist-mlp"
    assert "mlflow.tracking_uri" not in flat
