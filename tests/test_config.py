"""params.yaml validation (mnistflow.config): the shipped file is valid, the schema is strict
and every bad value is one line naming its key."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from mnistflow.config import (
    SECTIONS,
    DownloadConfig,
    EncodeConfig,
    ParamsError,
    RegistryConfig,
    TrainConfig,
    baseline_accuracy,
    config,
    dataset_spec,
    load_config,
    load_params,
    section,
    validate,
)
from tests.helpers import BASELINE_AUGMENT_COPIES, BASELINE_ENCODE, BASELINE_TRAIN, REPO_ROOT

pytestmark = pytest.mark.unit


@pytest.fixture
def params() -> dict:
    return copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))


@pytest.mark.parametrize(("name", "cls"), SECTIONS.items())
def test_shipped_params_validate_to_exactly_what_the_file_says(name: str, cls: type) -> None:
    """Each validated section holds the values of params.yaml as YAML reads them: nothing
    dropped, defaulted, renamed or coerced on the way."""
    written = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert config(written, name, cls).as_dict() == written[name]


def test_shipped_params_are_the_original_baseline(params: dict) -> None:
    train = config(params, "train", TrainConfig).as_dict()
    encode = config(params, "encode", EncodeConfig).as_dict()
    assert {key: train[key] for key in BASELINE_TRAIN} == BASELINE_TRAIN
    assert {key: encode[key] for key in BASELINE_ENCODE} == BASELINE_ENCODE
    assert encode["augment"]["copies"] == BASELINE_AUGMENT_COPIES


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
        config(params, path[0], SECTIONS[path[0]])


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"lr_decay": 0.9}, "'train' lr_decay=0.9 needs online_augment: true"),
        ({"online_augment": True, "solver": "lbfgs"}, "online_augment needs solver sgd or adam"),
        (
            {
                "online_augment": True,
                "lr_decay": 0.9,
                "solver": "sgd",
                "learning_rate": "invscaling",
            },
            "with solver sgd needs learning_rate: constant",
        ),
        ({"members": 2}, "'train' members=2 needs online_augment: true"),
        (
            {"members": 2, "online_augment": True, "early_stopping": True},
            "members=2 needs early_stopping: false",
        ),
        (
            {"members": 3, "online_augment": True, "random_state": 2**32 - 2},
            "random_state=4294967294 + members - 1 is past 2**32 - 1",
        ),
        ({"members": 0}, "'train.members'"),
        ({"views": "shift4"}, "'train' views=shift4 needs online_augment: true"),
        ({"views": "shift5", "online_augment": True}, "'train.views'"),
        ({"lr_decay": 0.0}, "'train.lr_decay'"),
        ({"lr_decay": 1.5}, "'train.lr_decay'"),
    ],
)
def test_online_settings_that_would_be_ignored_are_refused(
    params: dict, train: dict, message: str
) -> None:
    params["train"].update(train)
    with pytest.raises(ParamsError, match=re.escape(message)):
        validate(params)


def test_online_augmentation_refuses_materialised_copies(params: dict) -> None:
    params["train"]["online_augment"] = True
    params["encode"]["augment"]["copies"] = 2
    with pytest.raises(ParamsError, match=r"'train\.online_augment'.*copies to 0 \(it is 2\)"):
        validate(params)
    params["encode"]["augment"]["copies"] = 0
    params["train"]["lr_decay"] = 0.9
    assert validate(params).train.online_augment


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


def test_shipped_file_validates_whole() -> None:
    params = load_config(REPO_ROOT / "params.yaml")
    assert params.dataset_name == "mnist"
    assert params.paths.path("model").name == "model.pkl"
    assert set(SECTIONS) <= set(vars(params))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("train", "max_iter"), "20", "'train.max_iter' must be an integer; got '20'"),
        (("train", "max_iter"), True, "'train.max_iter' must be an integer; got True"),
        (("train", "max_iter"), 20.0, "'train.max_iter' must be an integer; got 20.0"),
        (("train", "alpha"), "0.1", "'train.alpha' must be a number; got '0.1'"),
        (("train", "alpha"), False, "'train.alpha' must be a number; got False"),
        (("train", "shuffle"), 1, "'train.shuffle' must be true or false; got 1"),
        (("train", "batch_size"), "200", "'train.batch_size' must be one of 'auto', or must"),
        (("train", "hidden_layer_sizes"), [100, "50"], "must be an integer; got '50'"),
        (("train", "hidden_layer_sizes"), 100, "'train.hidden_layer_sizes' must be a list"),
        (("paths", "model"), 3, "'paths.model' must be a string; got 3"),
        (("encode", "augment"), 5, "'encode.augment' must be a mapping; got 5"),
        (("mlflow", "experiment_name"), " ", "'mlflow.experiment_name' must not be empty"),
    ],
)
def test_strict_no_silent_coercion(params: dict, path: tuple, value: object, message: str) -> None:
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParamsError, match=re.escape(message)) as caught:
        validate(params)
    assert "\n" not in str(caught.value)  # one line, never a pydantic dump


def test_an_int_widens_to_float(params: dict) -> None:
    params["download"]["backoff"] = 2
    cfg = config(params, "download", DownloadConfig)
    assert cfg.backoff == 2.0
    assert isinstance(cfg.backoff, float)


def test_configs_are_frozen_and_as_dict_keeps_field_order(params: dict) -> None:
    cfg = config(params, "train", TrainConfig)
    with pytest.raises(ValueError, match="frozen"):
        cfg.alpha = 1.0  # type: ignore[misc]
    settings = cfg.as_dict()
    assert list(settings) == list(TrainConfig.model_fields)
    assert settings["hidden_layer_sizes"] == BASELINE_TRAIN["hidden_layer_sizes"]  # a list


def test_a_typo_is_reported_before_the_missing_key(params: dict) -> None:
    params["train"]["alpah"] = params["train"].pop("alpha")
    with pytest.raises(ParamsError, match=r"^params\.yaml: unknown key 'train\.alpah' \(known"):
        validate(params)


def test_unknown_section_is_rejected(params: dict) -> None:
    params["trian"] = {}
    with pytest.raises(ParamsError, match=r"unknown section 'trian'"):
        validate(params)


def test_models_hold_no_defaults() -> None:
    for cls in SECTIONS.values():
        assert all(f.is_required() for f in cls.model_fields.values()), cls.__name__


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_the_baseline_is_the_selected_datasets(params: dict, dataset: str) -> None:
    params["data"]["dataset"] = dataset
    shipped = params["evaluate"]["baseline_accuracy"]
    assert validate(params).baseline_accuracy == shipped[dataset]
    assert baseline_accuracy(params) == shipped[dataset]
    assert validate(params).evaluate.baseline_for("mnist") == 0.97  # the MNIST result's delta


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (  # a dataset without a baseline, even an unselected one: fails in check_params
            lambda p: p["evaluate"]["baseline_accuracy"].pop("fashion-mnist"),
            "^params\\.yaml: missing key 'evaluate\\.baseline_accuracy\\.fashion-mnist' ",
        ),
        (
            lambda p: p["evaluate"]["baseline_accuracy"].update({"kmnist": 0.9}),
            "unknown key 'evaluate\\.baseline_accuracy\\.kmnist' \\(not a key of 'datasets'",
        ),
        (
            lambda p: p["evaluate"]["baseline_accuracy"].update({"mnist": 1.5}),
            "'evaluate\\.baseline_accuracy\\.mnist' must be <= 1\\.0; got 1\\.5",
        ),
        (
            lambda p: p["evaluate"]["baseline_accuracy"].update({"mnist": "0.97"}),
            "'evaluate\\.baseline_accuracy\\.mnist' must be a number; got '0.97'",
        ),
        (  # the format before per-dataset baselines
            lambda p: p["evaluate"].update({"baseline_accuracy": 0.97}),
            "'evaluate\\.baseline_accuracy' must be a mapping of dataset name to accuracy "
            "\\(e\\.g\\. \\{mnist: 0\\.97\\}\\); got 0\\.97",
        ),
    ],
)
def test_a_bad_baseline_is_one_line_naming_the_key(params: dict, edit, message: str) -> None:
    edit(params)
    with pytest.raises(ParamsError, match=message) as caught:
        validate(params)
    assert "\n" not in str(caught.value)


def test_a_new_dataset_without_a_baseline_fails_when_selected(params: dict) -> None:
    params["datasets"]["kmnist"] = copy.deepcopy(params["datasets"]["mnist"])
    params["data"]["dataset"] = "kmnist"
    with pytest.raises(ParamsError, match="missing key 'evaluate\\.baseline_accuracy\\.kmnist'"):
        baseline_accuracy(params)


@pytest.mark.parametrize("name", ["mnist-mlp", "{dataset}-{dataset}", "{dataset}-{other}"])
def test_a_registered_model_name_must_name_the_dataset_once(params: dict, name: str) -> None:
    params["registry"]["model_name"] = name
    with pytest.raises(ParamsError, match=r"'registry\.model_name' must hold \{dataset\} once"):
        validate(params)


def test_each_dataset_has_its_registered_model(params: dict) -> None:
    cfg = config(params, "registry", RegistryConfig)
    assert cfg.model_for("mnist") == "mnist-mlp"  # the name of every earlier MNIST champion
    assert cfg.model_for("fashion-mnist") == "fashion-mnist-mlp"
