"""A real MLflow sqlite store with a few runs, for the leaderboard/registry/predict/UI tests.

Runs are made through mnistflow.tracking.runs (the same calls as the train and evaluate stages),
the params, metrics and tags of the CONTEXT conventions and a tiny MLPClassifier as the model
(logged as train logs it: raw images in, x/255 inside).
The store is built once per test process (``shared_store``) and copied where a test writes to
it, because creating an sqlite store and logging the first model costs ~15 s here.
"""

from __future__ import annotations

import functools
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from mnistflow.data.encode import Encoding
from mnistflow.serving import logged_model
from mnistflow.tracking import runs, store

EXPERIMENT = "mnist-mlp"


def mnist_like_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits that look like MNIST: ink only inside the central 16x16 box,
    a black border, uint8. Class templates are fixed; each image adds noise to the ink."""
    templates = np.zeros((10, 28, 28), dtype=np.int64)
    box = np.random.default_rng(99).random((10, 16, 16)) < 0.35
    templates[:, 6:22, 6:22] = np.where(box, 255, 0)
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    noise = rng.integers(-60, 1, size=(n, 28, 28))
    images = np.where(templates[labels] > 0, templates[labels] + noise, 0)
    return np.clip(images, 0, 255).astype(np.uint8), labels


@functools.cache
def tiny_model(hidden: tuple[int, ...], seed: int = 0) -> MLPClassifier:
    """A small MLP fitted on mnist_like_digits scaled by /255 (the default encode); cached."""
    images, labels = mnist_like_digits(300, seed=1)
    X = images.reshape(len(images), -1).astype(np.float32) / 255
    model = MLPClassifier(
        hidden_layer_sizes=hidden, learning_rate_init=0.01, max_iter=40, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a tiny model, on purpose
        return model.fit(X, labels)


def params_for(hidden: list[int], alpha: float, **extra: object) -> dict[str, object]:
    """Flat params as the stages log them (defaults of params.yaml, a few overridden)."""
    params: dict[str, object] = {
        "data.dataset": "mnist",
        "train.hidden_layer_sizes": hidden,
        "train.activation": "relu",
        "train.solver": "adam",
        "train.alpha": alpha,
        "train.batch_size": "auto",
        "train.learning_rate_init": 0.001,
        "train.max_iter": 20,
        "encode.scaling": "divide255",
        "encode.labels": "index",
        "encode.deskew": False,
        "encode.augment.copies": 0,
        "evaluate.baseline_accuracy": 0.97,
    }
    params.update(extra)
    return {k: str(v) for k, v in params.items()}


@dataclass(frozen=True)
class LoggedRun:
    """One run of the test store and what was logged."""

    name: str
    run_id: str
    status: str
    accuracy: float | None
    hidden: tuple[int, ...]


@dataclass(frozen=True)
class Store:
    """A tmp MLflow store: its URI, folder, experiment id and runs by name."""

    uri: str
    root: Path
    experiment_id: str
    runs: dict[str, LoggedRun]


# name, hidden sizes, alpha, accuracy (None = failed before evaluate), fit time, baseline, dvc name
RUN_SPECS = [
    ("baseline", (6,), 0.0001, 0.9712, 17.5, "true", None),
    ("wide-alpha", (12,), 0.001, 0.9811, 41.0, "false", "wide-alpha"),
    ("small", (4,), 0.01, 0.9405, 6.25, "false", "small-net"),
    ("crashed", (8,), 0.1, None, None, "false", "crashed-exp"),
]


def log_run(
    uri: str,
    experiment_id: str,
    name: str,
    hidden: tuple[int, ...],
    alpha: float,
    accuracy: float | None,
    fit_time: float | None,
    baseline: str,
    dvc_name: str | None,
) -> LoggedRun:
    """Log one run like train + evaluate do; ``accuracy=None`` makes it fail in "training"."""
    model = tiny_model(hidden)
    run_id = ""
    try:
        with runs.mlflow_run(uri, experiment_id, run_name=name) as run:
            run_id = run.run_id
            run.log_params(params_for(list(hidden), alpha))
            tags = {"is_baseline": baseline, "dataset": "mnist", "headline_metric": "argmax"}
            if dvc_name:
                tags["dvc_exp_name"] = dvc_name
            run.set_tags(tags)
            for epoch, loss in enumerate([2.0, 1.0, 0.5]):
                run.log_metric("train_loss", loss, step=epoch)
            if accuracy is None:
                raise RuntimeError("simulated crash during fit")
            logged_model.log_model(
                model, Encoding("divide255"), mnist_like_digits(2, seed=5)[0], 10
            )
            run.log_metrics(
                {
                    "fit_time_s": float(fit_time or 0.0),
                    "test_accuracy": accuracy,
                    "delta_to_baseline": accuracy - 0.97,
                }
            )
    except RuntimeError as exc:
        if "simulated crash" not in str(exc):
            raise
    status = "FINISHED" if accuracy is not None else "FAILED"
    return LoggedRun(name, run_id, status, accuracy, hidden)


def build_store(root: Path) -> Store:
    """Create an sqlite store in ``root`` with the runs of RUN_SPECS."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".dvc").mkdir(exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment_id = store.ensure_experiment(uri, EXPERIMENT, root)
    runs = {spec[0]: log_run(uri, experiment_id, *spec) for spec in RUN_SPECS}
    return Store(uri, root, experiment_id, runs)


_SHARED: dict[str, Store] = {}


def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The store of RUN_SPECS, built once per test process; treat it as read-only."""
    if "store" not in _SHARED:
        _SHARED["store"] = build_store(tmp_path_factory.mktemp("mlflow-store"))
    return _SHARED["store"]


def copy_store(store: Store, dest: Path) -> Store:
    """A writable copy of ``store``'s database (artifacts stay where they are)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(store.root / "mlflow.db", dest / "mlflow.db")
    return Store(f"sqlite:///{dest / 'mlflow.db'}", dest, store.experiment_id, dict(store.runs))
