"""A stage reads only the params its dvc.yaml entry declares."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import yaml

from mnistflow.config import ParamsError
from mnistflow.stage_config import UndeclaredParamError, stage_config
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.unit


def workspace(tmp_path: Path, params: list[str]) -> Path:
    """The real params.yaml beside a dvc.yaml whose stage ``s`` declares ``params``."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    stages = {"s": {"cmd": "true", "params": params}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return tmp_path


def load(ws: Path):
    return stage_config("s", ws / "params.yaml", ws / "dvc.yaml")


REAL = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())  # the oracle for values


def test_declared_keys_read_as_in_the_file(tmp_path: Path) -> None:
    params = load(workspace(tmp_path, ["train", "paths.model", "data.dataset"]))
    assert params.train.alpha == REAL["train"]["alpha"]
    assert list(params.train.hidden_layer_sizes) == REAL["train"]["hidden_layer_sizes"]
    assert params.train.as_dict()["max_iter"] == REAL["train"]["max_iter"]  # a whole section
    assert params.paths.model == REAL["paths"]["model"]
    assert params.paths.path("model") == Path(REAL["paths"]["model"])
    assert params.dataset_name == REAL["data"]["dataset"]
    assert params.raw["train"]["alpha"] == REAL["train"]["alpha"]


@pytest.mark.parametrize(
    ("read", "key"),
    [
        (lambda p: p.encode.scaling, "encode"),
        (lambda p: p.paths.metrics, "paths.metrics"),
        (lambda p: p.paths.path("metrics"), "paths.metrics"),
        (lambda p: p.paths.as_dict(), "paths"),
        (lambda p: p.raw["encode"]["scaling"], "encode"),
        (lambda p: dict(p.raw), "<the whole params file>"),
        (lambda p: p.dataset.files, "datasets.mnist.files"),
        (lambda p: p.baseline_accuracy, "evaluate.baseline_accuracy.mnist"),
    ],
)
def test_an_undeclared_read_fails_naming_stage_and_key(tmp_path: Path, read, key: str) -> None:
    declared = ["train", "paths.model", "data.dataset", "datasets.${data.dataset}.classes"]
    params = load(workspace(tmp_path, declared))
    with pytest.raises(UndeclaredParamError, match=re.escape(f"stage s reads params key '{key}'")):
        read(params)
    assert not isinstance(UndeclaredParamError("x"), ParamsError)  # nothing tolerates it


def test_templates_expand_to_the_selected_dataset(tmp_path: Path) -> None:
    params = load(workspace(tmp_path, ["data.dataset", "datasets.${data.dataset}.classes"]))
    assert list(params.dataset.classes) == REAL["datasets"][REAL["data"]["dataset"]]["classes"]


def test_reading_data_dataset_is_needed_to_pick_the_dataset(tmp_path: Path) -> None:
    params = load(workspace(tmp_path, ["datasets"]))
    with pytest.raises(UndeclaredParamError, match=re.escape("'data.dataset'")):
        params.dataset  # noqa: B018


def test_the_whole_file_is_still_validated(tmp_path: Path) -> None:
    ws = workspace(tmp_path, ["train"])
    text = (ws / "params.yaml").read_text().replace("gallery_size:", "gallery_sise:", 1)
    (ws / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match="gallery_si"):
        load(ws)


def test_an_unknown_stage_is_one_line(tmp_path: Path) -> None:
    ws = workspace(tmp_path, ["train"])
    with pytest.raises(ParamsError, match="no stage 'nope'"):
        stage_config("nope", ws / "params.yaml", ws / "dvc.yaml")


@pytest.mark.parametrize(
    "script",
    sorted(p for p in (REPO_ROOT / "stages").glob("*.py") if p.stem != "check_params"),
    ids=lambda p: p.name,
)
def test_every_stage_loads_its_params_through_its_own_declaration(script: Path) -> None:
    """Read from the code: each stage calls ``stage_config("<its name>")`` and never the
    unrestricted ``load_config``."""
    calls = [
        node
        for node in ast.walk(ast.parse(script.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    names = [c.func.id for c in calls]  # type: ignore[attr-defined]
    assert "load_config" not in names
    loads = [c for c in calls if c.func.id == "stage_config"]  # type: ignore[attr-defined]
    assert [ast.literal_eval(c.args[0]) for c in loads] == [script.stem]
