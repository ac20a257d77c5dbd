"""The served champion: a real `dvc repro` on tiny data, `mnistflow register`, `mnistflow
serve` (MLflow's scoring server) on a free 127.0.0.1 port, raw images over real HTTP; and the
logged model's answers on the test set against evaluate's headline accuracy."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mnistflow.serving.inputs import PIXEL_COLUMNS
from mnistflow.serving.logged_model import load_model, predict_images
from mnistflow.util.fileio import load_npz, read_json
from tests.helpers import (
    REPO_ROOT,
    copy_repo,
    run,
    use_tiny_dataset,
    workspace_env,
    write_idx_dataset,
)
from tests.mlflow_fixtures import copy_store, mnist_like_digits, shared_store, tiny_model

pytestmark = pytest.mark.e2e

ENCODINGS = {
    "divide255": {},
    "standardize": {"scaling": "standardize"},
    "deskew": {"deskew": True},
}


@pytest.fixture(scope="module", params=list(ENCODINGS))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A tiny repo copy after `dvc repro` with one encoding, its champion registered."""
    base = tmp_path_factory.mktemp(f"serve-{request.param}")
    files = write_idx_dataset(base / "mirror")
    edit = use_tiny_dataset(
        files,
        encode=ENCODINGS[request.param],
        train={"hidden_layer_sizes": [16], "max_iter": 5},
    )
    repo = copy_repo(base / "repo", edit)
    env = workspace_env(base / "mirror")
    run(["dvc", "repro"], repo, env)
    run(["mnistflow", "register"], repo, env)
    return repo, env


def _store(repo: Path) -> str:
    return f"sqlite:///{repo / 'mlflow.db'}"


def test_logged_model_on_the_test_set_scores_evaluates_headline(trained) -> None:
    repo, _ = trained
    run_id = read_json(repo / "outputs/train/run.json")["run_id"]
    arrays = load_npz(repo / "data/unpacked/arrays.npz", ["x_test", "y_test"])
    model = load_model(_store(repo), f"runs:/{run_id}/model")
    answer = predict_images(model, arrays["x_test"])
    accuracy = float(np.mean(answer["digit"].to_numpy() == arrays["y_test"]))
    assert accuracy == read_json(repo / "outputs/evaluate/metrics.json")["test_accuracy"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _served(cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """`mnistflow serve` in ``cwd`` on a free port; its base URL once /ping answers."""
    port = _free_port()
    proc = subprocess.Popen(
        ["mnistflow", "serve", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not answer"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # mnistflow serve stops the scoring server
        assert proc.wait(timeout=60) == 0
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert "Traceback" not in out, out[-3000:]


@pytest.fixture
def server(trained) -> Iterator[str]:
    """`mnistflow serve` of the tiny repo's champion."""
    repo, env = trained
    with _served(repo, env) as url:
        yield url


def _post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_served_champion_answers_digits_and_refuses_bad_requests(trained, server: str) -> None:
    repo, _ = trained
    images = load_npz(repo / "data/unpacked/arrays.npz", ["x_test"])["x_test"][:20]
    rows = images.reshape(len(images), -1).tolist()
    status, body = _post(server, {"dataframe_split": {"columns": PIXEL_COLUMNS, "data": rows}})
    assert status == 200
    served = body["predictions"]
    assert list(served[0]) == ["digit"] + [f"p{i}" for i in range(10)]

    champion = "models:/tiny-mlp@champion"  # registry.model_name of data.dataset tiny
    local = predict_images(load_model(_store(repo), champion), images)
    assert [r["digit"] for r in served] == list(local["digit"])
    probabilities = [[r[f"p{i}"] for i in range(10)] for r in served]
    np.testing.assert_allclose(probabilities, local.iloc[:, 1:].to_numpy(), rtol=1e-12)

    bad = {
        "too few pixels": {
            "dataframe_split": {"columns": PIXEL_COLUMNS[:-1], "data": [r[:-1] for r in rows[:1]]}
        },
        "value 300": {"dataframe_split": {"columns": PIXEL_COLUMNS, "data": [[300] * 784]}},
        "value 0.5": {"dataframe_split": {"columns": PIXEL_COLUMNS, "data": [[0.5] * 784]}},
        "not numbers": {"dataframe_split": {"columns": PIXEL_COLUMNS, "data": [["x"] * 784]}},
        "an image 27x28": {"inputs": images[:1, 1:].tolist()},
    }
    for name, request in bad.items():
        status, body = _post(server, request)
        assert status == 400, (name, status, body)
        assert "stack_trace" not in body, name
    assert "0..255" in _post(server, bad["value 300"])[1]["message"]


def _predictions(status: int, body: dict) -> list[int]:
    assert status == 200, body
    return [row["digit"] for row in body["predictions"]]


def test_served_model_takes_pixel_columns_images_and_rows(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The champion of a store logged as train logs it, served by `mnistflow serve`: each
    request form answers what the fitted estimator answers on x/255, computed here."""
    own = copy_store(shared_store(tmp_path_factory), tmp_path)
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")  # mnist, store in ./mlflow.db
    (tmp_path / ".dvc").mkdir()  # the workspace root: where the store's default place is
    env = workspace_env()
    run(["mnistflow", "register"], tmp_path, env)  # the best run: wide-alpha
    images, _ = mnist_like_digits(12, seed=7)
    rows = images.reshape(len(images), -1)
    champion = own.runs["wide-alpha"]
    oracle = tiny_model(champion.hidden).predict(rows.astype(np.float32) / 255).tolist()
    assert len(set(oracle)) > 1  # the images are not all one digit to this model

    with _served(tmp_path, env) as url:
        columns = {"dataframe_split": {"columns": PIXEL_COLUMNS, "data": rows.tolist()}}
        assert _predictions(*_post(url, columns)) == oracle
        assert _predictions(*_post(url, {"inputs": images.tolist()})) == oracle
        assert _predictions(*_post(url, {"inputs": rows.tolist()})) == oracle

        bad = {
            "an image 27x28": ({"inputs": images[:1, 1:].tolist()}, r"got shape \(1, 27, 28\)"),
            "rows of 783": ({"inputs": rows[:2, 1:].tolist()}, r"got shape \(2, 783\)"),
            "value 300": (
                {"inputs": np.where(images[:1] > 0, 300, 0).tolist()},
                r"0\.\.255; image 0 pixel \[6\]\[\d+\] is 300",
            ),
            "negative": ({"inputs": [[-1] * 784]}, r"0\.\.255; row 0 pixel 0 is -1 "),
            "a fraction": ({"inputs": [[0.5] * 784]}, r"row 0 pixel 0 is 0\.5"),
            "text": ({"inputs": [["x"] * 784]}, "must be numbers"),
            "ragged": ({"inputs": [[0] * 784, [0] * 10]}, "inhomogeneous"),
            "no image": ({"inputs": []}, r"got shape \(0,\)"),
        }
        for name, (request, message) in bad.items():
            status, body = _post(url, request)
            assert status == 400, (name, status, body)
            assert "stack_trace" not in body, name
            assert re.search(message, body["message"]), (name, body["message"])
