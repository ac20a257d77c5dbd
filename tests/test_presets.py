"""Presets: the shipped best configuration is valid and becomes `dvc exp run -S` flags."""

from __future__ import annotations

import re

import pytest

from mnistflow.config import EncodeConfig, ParamsError, TrainConfig, config, load_params
from mnistflow.experiments.presets import apply_preset, load_preset, set_flags
from tests.helpers import BASELINE_TRAIN, REPO_ROOT

pytestmark = pytest.mark.unit

BEST = REPO_ROOT / "presets" / "best.yaml"


def test_best_preset_applies_and_validates() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    best = apply_preset(params, load_preset(BEST))
    train = config(best, "train", TrainConfig)
    assert train.online_augment is True
    assert train.lr_decay < 1
    assert train.hidden_layer_sizes == (1200, 300)
    assert train.views == "shift4"
    # every training row is fitted: the configuration was chosen on a validation split before
    assert train.early_stopping is False
    encode = config(best, "encode", EncodeConfig)
    assert encode.deskew is True
    assert encode.augment.copies == 0
    # the defaults stay the original baseline
    train = config(params, "train", TrainConfig).as_dict()
    assert train["hidden_layer_sizes"] == BASELINE_TRAIN["hidden_layer_sizes"]
    assert train["online_augment"] is BASELINE_TRAIN["online_augment"]
    assert train["views"] == "none"
    assert params["encode"]["deskew"] is False


def test_fixed_copies_preset_applies_and_validates() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    copies = apply_preset(params, load_preset(REPO_ROOT / "presets" / "copies.yaml"))
    assert config(copies, "encode", EncodeConfig).augment.copies == 5
    assert config(copies, "train", TrainConfig).online_augment is False


def test_flags_round_trip_through_yaml() -> None:
    flags = set_flags({"train.hidden_layer_sizes": [800], "encode.deskew": True, "x.y": 1e-05})
    assert flags == [
        "-S",
        "train.hidden_layer_sizes=[800]",
        "-S",
        "encode.deskew=true",
        "-S",
        "x.y=1.0e-05",
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.alpah": 0.1}, "preset sets unknown key 'train.alpah'"),
        ({"encode.augment.copies": -1}, "'encode.augment.copies' must be >= 0"),
    ],
)
def test_bad_overrides_name_the_key(overrides: dict, message: str) -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    with pytest.raises(ParamsError, match=re.escape(message)):
        apply_preset(params, overrides)


def test_preset_outside_encode_and_train_is_rejected(tmp_path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("mlflow.experiment_name: other\n")
    with pytest.raises(ParamsError, match="not in encode, train"):
        load_preset(path)
