"""Tests for mnistflow.data.sets: what the train and evaluate stages read, and its checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mnistflow.config import Paths, load_config
from mnistflow.data.sets import load_test_set, load_train_set
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.unit

X_TEST = np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28)
Y_TEST = np.array([2, 0, 1, 2], dtype=np.uint8)


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """The shipped paths, in an empty folder holding small encode and unpack outputs."""
    monkeypatch.chdir(tmp_path)
    paths = load_config(REPO_ROOT / "params.yaml").paths
    for name in ("arrays", "test_features", "train_features", "encode_info", "encode_stats"):
        paths.path(name).parent.mkdir(parents=True, exist_ok=True)
    np.savez(paths.arrays, x_train=X_TEST, y_train=Y_TEST, x_test=X_TEST, y_test=Y_TEST)
    info = {"labels": "onehot", "n_classes": 3, "dataset": "tiny", "dataset_sha256": "0" * 64}
    paths.path("encode_info").write_text(json.dumps(info))
    return paths


def write_features(path: str, y: np.ndarray) -> None:
    np.savez(path, X=np.ones((len(y), 5), dtype=np.float32), y=y)


def test_the_test_set_holds_class_indices_and_the_raw_images(paths: Paths) -> None:
    write_features(paths.test_features, np.eye(3, dtype=np.uint8)[[2, 0, 1, 2]])
    test = load_test_set(paths, n_names=3)
    assert test.y_true.tolist() == [2, 0, 1, 2]
    assert np.array_equal(test.images, X_TEST)
    assert test.X.shape == (4, 5)
    assert test.multilabel is True


def test_test_labels_that_are_not_unpacks_name_both_files(paths: Paths) -> None:
    write_features(paths.test_features, np.eye(3, dtype=np.uint8)[[2, 0, 1, 1]])
    with pytest.raises(ValueError, match="disagree on the test labels") as e:
        load_test_set(paths, n_names=3)
    assert paths.test_features in str(e.value)
    assert paths.arrays in str(e.value)
    write_features(paths.test_features, np.eye(3, dtype=np.uint8)[[2, 0, 1, 2]])
    with pytest.raises(ValueError, match="3 encoded classes, but 10 class names"):
        load_test_set(paths, n_names=10)


def test_the_train_set_carries_two_test_images_as_the_models_example(paths: Paths) -> None:
    write_features(paths.train_features, np.array([0, 1, 2]))
    np.savez(paths.encode_stats, scaling=np.array("divide255"), deskew=np.array(False))
    train = load_train_set(paths)
    assert np.array_equal(train.examples, X_TEST[:2])
    assert train.n_classes == 3
    assert (train.encoding.scaling, train.encoding.deskew) == ("divide255", False)
    assert train.describe(1) == "training on 3 rows x 5 features (onehot targets), 1 BLAS thread"
    assert train.describe(2).endswith("2 BLAS threads")
