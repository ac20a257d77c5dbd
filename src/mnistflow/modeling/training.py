"""Fit the MLPClassifier with a progress bar and a timer (no MLflow, no paths)."""

from __future__ import annotations

import logging
import pickle
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mnistflow.config import TrainConfig
from mnistflow.modeling.model import (
    EpochCallback,
    build_classifier,
    fit_with_progress,
    loss_history,
)

log = logging.getLogger(__name__)
PICKLE_PROTOCOL = 5  # fixed, so the model's bytes do not depend on the Python default


@dataclass(frozen=True)
class FitResult:
    """A fitted model and what the fit measured."""

    model: MLPClassifier
    fit_time_s: float  # wall clock: per run by nature, never in a DVC output
    losses: list[float]
    val_scores: list[float] | None

    @property
    def n_iter(self) -> int:
        """Epochs run."""
        return int(self.model.n_iter_)

    @property
    def final_loss(self) -> float:
        """Training loss after the last epoch."""
        return float(self.model.loss_)

    def summary(self) -> dict[str, Any]:
        """The DVC metrics of the fit: deterministic numbers only (no timing)."""
        return {"n_iter": self.n_iter, "final_loss": round(self.final_loss, 8)}


def progress_bar(total: int, desc: str, file: IO[str] | None = None) -> tqdm:
    """A tqdm bar on stderr that stays silent when the stream is not a terminal (CI logs,
    ``dvc queue logs``), instead of filling the log with carriage returns."""
    stream = file if file is not None else sys.stderr
    return tqdm(total=total, desc=desc, unit="epoch", file=stream, disable=not stream.isatty())


def _pairs(values: dict[str, str]) -> str:
    """``loss=0.1234 val=0.98``, as the progress bar shows them."""
    return " ".join(f"{k}={v}" for k, v in values.items())


def fit(
    cfg: TrainConfig,
    X: np.ndarray,
    y: np.ndarray,
    on_epoch: EpochCallback | None = None,
    file: IO[str] | None = None,
) -> FitResult:
    """Build and fit a classifier from ``cfg`` with ``cfg.threads`` BLAS threads.

    Args:
        cfg: the ``train:`` section.
        X: features (n, d).
        y: targets, one-hot (n, k) or class indices (n,).
        on_epoch: called with the 1-based epoch, the training loss and the validation score
            (None unless early stopping), e.g. to log them.
        file: where the progress bar goes (stderr by default; silent unless a terminal).

    Returns:
        The fitted model with its fit time and loss history.
    """
    model = build_classifier(cfg)
    with threadpool_limits(limits=cfg.threads), progress_bar(cfg.max_iter, "train", file) as bar:

        def each_epoch(epoch: int, loss: float, val_score: float | None) -> None:
            if on_epoch is not None:
                on_epoch(epoch, loss, val_score)
            postfix = {"loss": f"{loss:.4f}"}
            if val_score is not None:
                postfix["val"] = f"{val_score:.4f}"
            if bar.disable:  # no terminal (CI, dvc queue logs): one plain line per epoch
                log.info("epoch %d/%d %s", epoch, cfg.max_iter, _pairs(postfix))
            bar.set_postfix(postfix, refresh=False)
            bar.update(epoch - bar.n)

        start = time.perf_counter()
        fit_with_progress(model, X, y, each_epoch)
        fit_time = time.perf_counter() - start
    losses, val_scores = loss_history(model)
    return FitResult(model, fit_time, losses, val_scores)


def model_bytes(model: MLPClassifier) -> bytes:
    """The model pickled with a fixed protocol (same model, same bytes)."""
    return pickle.dumps(model, protocol=PICKLE_PROTOCOL)


def model_from_bytes(data: bytes, source: str) -> MLPClassifier:
    """Unpickle a model this pipeline wrote (trusted); ``source`` names it in errors."""
    model = pickle.loads(data)
    if not isinstance(model, MLPClassifier):
        raise TypeError(f"{source}: expected an MLPClassifier, found {type(model).__name__}")
    return model
