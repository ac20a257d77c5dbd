"""params.yaml validation: the shipped file is valid and every bad value names its key."""

from __future__ import annotations

import copy
import re

import pytest

from mnistflow.config import (
    DownloadConfig,
    EncodeConfig,
    EvaluateConfig,
    MlflowConfig,
    ParamsError,
    Paths,
    TrainConfig,
    UnpackConfig,
    config,
    dataset_spec,
    load_params,
    section,
)
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.unit

SECTIONS = [
    ("paths", Paths),
    ("download", DownloadConfig),
    ("unpack", UnpackConfig),
    ("encode", EncodeConfig),
    ("train", TrainConfig),
    ("evaluate", EvaluateConfig),
    ("mlflow", MlflowConfig),
]


@pytest.fixture
def params() -> dict:
    return copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))


@pytest.mark.parametrize(("name", "cls"), SECTIONS)
def test_shipped_params_are_valid(params: dict, name: str, cls: type) -> None:
    assert isinstance(config(params, name, cls), cls)


def test_defaults_are_the_original_baseline(params: dict) -> None:
    train = config(params, "train", TrainConfig)
    encode = config(params, "encode", EncodeConfig)
    assert train.hidden_layer_sizes == (100, 50, 25)
    assert (train.activation, train.learning_rate, train.max_iter) == ("relu", "adaptive", 20)
    assert (encode.scaling, encode.labels, encode.deskew) == ("divide255", "onehot", False)
    assert encode.augment.copies == 0


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_every_shipped_dataset_is_valid(params: dict, dataset: str) -> None:
    params["data"]["dataset"] = dataset
    name, spec = dataset_spec(params)
    assert name == dataset
    assert [role for role, _ in spec.files.items()] == [
        "train_images",
        "train_labels",
        "test_images",
        "test_labels",
    ]
    assert len(spec.classes) == 10
    assert spec.mirrors


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("train", "hidden_layer_sizes"), [100, -5], "'train.hidden_layer_sizes' must be >= 1"),
        (("train", "hidden_layer_sizes"), [], "needs at least one layer"),
        (("train", "activation"), "softmax", "'train.activation' must be one of"),
        (("train", "max_iter"), 2.5, "'train.max_iter' must be an integer"),
        (("train", "alpha"), "big", "'train.alpha' must be a number"),
        (("train", "shuffle"), "yes", "'train.shuffle' must be true or false"),
        (("train", "batch_size"), 0, "'train.batch_size'"),
        (("train", "validation_fraction"), 1.0, "'train.validation_fraction' must be <="),
        (("encode", "scaling"), "minmax", "'encode.scaling' must be one of"),
        (("encode", "augment", "copies"), -1, "'encode.augment.copies' must be >= 0"),
        (("download", "retries"), 0, "'download.retries' must be >= 1"),
        (("evaluate", "headline"), "top5", "'evaluate.headline' must be one of"),
    ],
)
def test_bad_values_name_the_key(params: dict, path: tuple, value: object, message: str) -> None:
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError, match=re.escape(message)):
        config(params, path[0], dict(SECTIONS)[path[0]])


def test_unknown_key_is_rejected(params: dict) -> None:
    params["train"]["alpah"] = 0.1
    with pytest.raises(ParamsError, match=r"unknown key 'train\.alpah'"):
        config(params, "train", TrainConfig)


def test_nested_unknown_key_is_rejected(params: dict) -> None:
    params["encode"]["augment"]["shear"] = 3
    with pytest.raises(ParamsError, match=r"unknown key 'encode\.augment\.shear'"):
        config(params, "encode", EncodeConfig)


def test_missing_key_is_named(params: dict) -> None:
    del params["train"]["max_iter"]
    with pytest.raises(ParamsError, match=r"missing key 'train\.max_iter'"):
        config(params, "train", TrainConfig)
    with pytest.raises(ParamsError, match=r"missing key 'evaluate\.nope'"):
        section(params, "evaluate.nope")


def test_unknown_dataset_lists_the_choices(params: dict) -> None:
    params["data"]["dataset"] = "kmnist"
    with pytest.raises(ParamsError, match=r"'data\.dataset' is 'kmnist'; choose one of mnist"):
        dataset_spec(params)


def test_bad_checksum_is_named(params: dict) -> None:
    params["datasets"]["mnist"]["files"]["test_labels"]["sha256"] = "abc"
    with pytest.raises(ParamsError, match=r"datasets\.mnist\.files\.test_labels\.sha256"):
        dataset_spec(params)


def test_missing_or_broken_file(tmp_path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
