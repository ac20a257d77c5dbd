"""Tests for mnistflow.data.online: each epoch's features and the feed that prepares them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient

from mnistflow.config import AugmentConfig
from mnistflow.data import augment as aug
from mnistflow.data.encode import Encoding, flatten, pixel_stats
from mnistflow.data.online import EpochFeed, OnlineData, epoch_features
from mnistflow.tracking.record import ELAPSED
from mnistflow.util.fileio import read_json
from tests.helpers import (
    copy_repo,
    run,
    stage_env,
    synthetic_digits,
    use_tiny_dataset,
    workspace_env,
    write_encoded,
)


def online_data(encoding: Encoding, background: bool = False, **augment: float) -> OnlineData:
    raw = {
        "copies": 0,
        "max_shift": 2,
        "max_rotation": 10.0,
        "elastic_alpha": 34.0,
        "elastic_sigma": 4.0,
        "seed": 0,
    } | augment
    cfg = AugmentConfig.from_section(raw, "encode.augment")
    return OnlineData(encoding, (28, 28), cfg, background)


def base(n: int = 130) -> np.ndarray:
    images, _ = synthetic_digits(n, seed=4)
    return flatten(images).astype(np.float32)


def encodings() -> list[Encoding]:
    mean, std = pixel_stats(base())
    return [Encoding("divide255"), Encoding("none"), Encoding("standardize", False, mean, std)]


@pytest.mark.unit
@pytest.mark.parametrize("encoding", encodings(), ids=lambda e: e.scaling)
def test_epoch_features_are_the_scaled_epoch_batch_of_the_unscaled_rows(
    encoding: Encoding,
) -> None:
    X = encoding.scale(base())
    data = online_data(encoding)
    images = encoding.unscale(X).reshape(-1, 28, 28)
    for epoch in (1, 2):
        batch, _ = aug.epoch_batch(images, np.zeros(len(X)), epoch, data.augment)
        expected = encoding.scale(flatten(batch))
        got = epoch_features(X, data, epoch)
        assert got.dtype == np.float32
        assert got.shape == X.shape
        assert np.array_equal(got, expected)
    assert not np.array_equal(epoch_features(X, data, 1), epoch_features(X, data, 2))


@pytest.mark.unit
def test_epoch_features_check_their_shapes() -> None:
    data = online_data(Encoding("divide255"))
    with pytest.raises(ValueError, match="not images of 28x28"):
        epoch_features(np.zeros((3, 10), np.float32), data, 1)
    with pytest.raises(ValueError, match="out is float64"):
        epoch_features(np.zeros((3, 784), np.float32), data, 1, out=np.zeros((3, 784)))


@pytest.mark.unit
def test_feed_in_this_process_gives_each_epoch() -> None:
    X = base() / np.float32(255)
    data = online_data(Encoding("divide255"))
    with EpochFeed(X, data, epochs=2) as feed:
        for epoch in (1, 2):
            assert np.array_equal(feed.get(epoch), epoch_features(X, data, epoch))


def children() -> list[psutil.Process]:
    return psutil.Process(os.getpid()).children(recursive=True)


@pytest.mark.e2e
def test_feed_on_a_second_process_gives_the_same_epochs_and_stops_its_child() -> None:
    X = base(2 * aug.CHUNK + 3) / np.float32(255)
    data = online_data(Encoding("divide255"), background=True)
    before = set(children())
    with EpochFeed(X, data, epochs=3) as feed:
        assert len(set(children()) - before) == 1
        for epoch in (1, 2, 3):
            assert np.array_equal(feed.get(epoch), epoch_features(X, data, epoch))
        with pytest.raises(ValueError, match="expected epoch 4"):
            feed.get(3)  # asked again: refused, instead of waiting for ever
    assert set(children()) == before


@pytest.mark.e2e
def test_the_caller_distorts_the_chunks_a_slow_child_has_not_taken() -> None:
    X = base(3 * aug.CHUNK) / np.float32(255)
    data = online_data(Encoding("divide255"), background=True)
    before = set(children())
    with EpochFeed(X, data, epochs=1) as feed:
        (child,) = set(children()) - before
        os.kill(child.pid, signal.SIGSTOP)  # at most its first chunk taken
        resume = threading.Timer(1.0, os.kill, (child.pid, signal.SIGCONT))
        resume.start()
        try:
            features = feed.get(1).copy()
        finally:
            resume.join()
        assert feed.helped >= 2
    assert np.array_equal(features, epoch_features(X, data, 1))


@pytest.mark.e2e
def test_feed_stops_a_busy_child_when_the_block_is_left_by_an_exception() -> None:
    X = base(3 * aug.CHUNK) / np.float32(255)
    data = online_data(Encoding("divide255"), background=True)
    before = set(children())
    with pytest.raises(KeyboardInterrupt), EpochFeed(X, data, epochs=5):
        raise KeyboardInterrupt  # the child is busy with epoch 1
    assert set(children()) == before


@pytest.mark.e2e
def test_a_dead_child_is_a_clear_error() -> None:
    X = base(3 * aug.CHUNK) / np.float32(255)
    data = online_data(Encoding("divide255"), background=True)
    before = set(children())
    with EpochFeed(X, data, epochs=2) as feed:
        (child,) = set(children()) - before
        os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(Exception, match=r"died preparing epoch 1 \(exit code -9"):
            feed.get(1)


# ---------------------------------------------------------------- the train stage, online


def online_params(max_iter: int) -> Callable[[dict], None]:
    def edit(p: dict) -> None:
        p["encode"]["augment"].update(elastic_alpha=34.0)
        p["train"].update(
            online_augment=True,
            lr_decay=0.9,
            hidden_layer_sizes=[16],
            max_iter=max_iter,
            early_stopping=True,
            n_iter_no_change=100000,
            tol=0.0,
        )

    return edit


@pytest.mark.e2e
def test_train_stage_online_twice_gives_the_same_model_and_metrics(tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        ws = copy_repo(tmp_path / name, online_params(max_iter=4))
        write_encoded(ws, n_train=300, n_test=50)
        proc = run([sys.executable, "stages/train.py"], ws, stage_env())
        assert "online augmentation: epochs prepared on process" in proc.stderr
        run_id = read_json(ws / "outputs/train/run.json")["run_id"]
        client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
        history = {
            key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            for key in ("train_loss", "early_stop_score", ELAPSED)
        }
        assert [step for step, _ in history[ELAPSED]] == [1, 2, 3, 4]
        assert len(history["early_stop_score"]) == 4
        del history[ELAPSED]  # wall clock: per run by nature
        outputs.append(
            (
                (ws / "models/model.pkl").read_bytes(),
                (ws / "outputs/train/metrics.json").read_text(),
                (ws / "outputs/train/loss.csv").read_text(),
                history,
            )
        )
    assert outputs[0] == outputs[1]


def start_online_train(tmp_path: Path, err: IO[str]) -> tuple[Path, subprocess.Popen, int]:
    """The train stage with online augmentation, once its epochs are under way: the
    workspace, the process and its augmentation child's pid."""
    ws = copy_repo(tmp_path / "ws", online_params(max_iter=100000))
    write_encoded(ws, n_train=2000, n_test=50)
    proc = subprocess.Popen(
        [sys.executable, "stages/train.py"], cwd=ws, env=stage_env(), stderr=err
    )
    deadline = time.monotonic() + 120
    while "loss=" not in Path(err.name).read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, Path(err.name).read_text()[-3000:]
        time.sleep(0.1)
    (child,) = psutil.Process(proc.pid).children()
    return ws, proc, child.pid


def gone(pid: int, timeout: float = 10) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.mark.e2e
def test_sigterm_during_online_train_leaves_no_child_and_the_run_killed(tmp_path: Path) -> None:
    with (tmp_path / "stderr.txt").open("w") as err:
        ws, proc, child = start_online_train(tmp_path, err)
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert not psutil.pid_exists(child) or gone(child, timeout=0)
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
    assert not (ws / "outputs/train/run.json").exists()


@pytest.mark.e2e
def test_the_child_dies_with_a_sigkilled_train_stage(tmp_path: Path) -> None:
    with (tmp_path / "stderr.txt").open("w") as err:
        _, proc, child = start_online_train(tmp_path, err)
        proc.kill()
        proc.wait(timeout=60)
    assert gone(child), "the augmentation process outlived its SIGKILLed parent"


@pytest.mark.e2e
def test_dvc_repro_online_reports_accuracy_against_time(
    tiny_mirror: tuple[Path, dict], tmp_path: Path
) -> None:
    mirror, files = tiny_mirror

    def edit(params: dict) -> None:
        use_tiny_dataset(files)(params)
        online_params(max_iter=3)(params)

    repo = copy_repo(tmp_path / "repo", edit)
    run(["dvc", "repro"], repo, workspace_env(mirror))
    run_id = read_json(repo / "outputs/train/run.json")["run_id"]
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "FINISHED"
    folder = Path(client.download_artifacts(run_id, "report", str(tmp_path / "artifacts")))
    assert (folder / "accuracy_time.png").stat().st_size > 0
    assert (
        "![Accuracy against training time](accuracy_time.png)" in (folder / "report.md").read_text()
    )
    # the committed report has no time axis (it is the same on every run)
    assert not (repo / "reports/latest/accuracy_time.png").exists()
