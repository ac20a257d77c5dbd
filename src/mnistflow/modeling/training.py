"""Fit the MLPClassifier with a progress bar and a timer (no MLflow, no paths)."""

from __future__ import annotations

import logging
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mnistflow.config import TrainConfig
from mnistflow.modeling.metrics import VAL_ACCURACY
from mnistflow.modeling.model import (
    EpochCallback,
    build_classifier,
    decode_argmax,
    fit_with_progress,
    loss_history,
    predict_scores,
)

log = logging.getLogger(__name__)
PICKLE_PROTOCOL = 5  # fixed, so the model's bytes do not depend on the Python default


@dataclass(frozen=True)
class Validation:
    """Held-out training rows scored after every epoch (a tuning trial's objective).

    ``on_score(epoch, accuracy)`` returning True stops the fit after that epoch (pruning).
    """

    X: np.ndarray
    labels: np.ndarray  # class indices
    n_classes: int
    on_score: Callable[[int, float], bool] | None = None


def validation_accuracy(model: MLPClassifier, validation: Validation) -> float:
    """Argmax accuracy (the pipeline's headline decoding) on the validation rows."""
    predicted = decode_argmax(predict_scores(model, validation.X, validation.n_classes))
    return float(np.mean(predicted == validation.labels))


@dataclass(frozen=True)
class FitResult:
    """A fitted model and what the fit measured."""

    model: MLPClassifier
    fit_time_s: float  # wall clock: per run by nature, never in a DVC output
    losses: list[float]
    val_scores: list[float] | None
    val_accuracy: list[float] | None = None  # per epoch, with a Validation only

    @property
    def n_iter(self) -> int:
        """Epochs run."""
        return int(self.model.n_iter_)

    @property
    def final_loss(self) -> float:
        """Training loss after the last epoch."""
        return float(self.model.loss_)

    def summary(self) -> dict[str, Any]:
        """The DVC metrics of the fit: deterministic numbers only (no timing); with
        validation rows also the last epoch's ``val_accuracy``."""
        out: dict[str, Any] = {"n_iter": self.n_iter, "final_loss": round(self.final_loss, 8)}
        if self.val_accuracy:
            out[VAL_ACCURACY] = round(self.val_accuracy[-1], 8)
        return out


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
    validation: Validation | None = None,
) -> FitResult:
    """Build and fit a classifier from ``cfg`` with ``cfg.threads`` BLAS threads.

    Args:
        cfg: the ``train:`` section.
        X: features (n, d).
        y: targets, one-hot (n, k) or class indices (n,).
        on_epoch: called with the 1-based epoch, the training loss and the validation score
            (None unless early stopping), e.g. to log them.
        file: where the progress bar goes (stderr by default; silent unless a terminal).
        validation: rows to score after every epoch; its ``on_score`` sees each epoch's
            accuracy and may stop the fit.

    Returns:
        The fitted model with its fit time and loss history.
    """
    model = build_classifier(cfg)
    val_accuracy: list[float] = []
    with threadpool_limits(limits=cfg.threads), progress_bar(cfg.max_iter, "train", file) as bar:

        def each_epoch(epoch: int, loss: float, val_score: float | None) -> bool:
            stop = False
            postfix = {"loss": f"{loss:.4f}"}
            if validation is not None:
                val_accuracy.append(validation_accuracy(model, validation))
                postfix["val_accuracy"] = f"{val_accuracy[-1]:.4f}"
                stop = bool(validation.on_score and validation.on_score(epoch, val_accuracy[-1]))
            if on_epoch is not None:
                on_epoch(epoch, loss, val_score)
            if val_score is not None:
                postfix["val"] = f"{val_score:.4f}"
            if bar.disable:  # no terminal (CI, dvc queue logs): one plain line per epoch
                log.info("epoch %d/%d %s", epoch, cfg.max_iter, _pairs(postfix))
            bar.set_postfix(postfix, refresh=False)
            bar.update(epoch - bar.n)
            return stop

        start = time.perf_counter()
        fit_with_progress(model, X, y, each_epoch)
        fit_time = time.perf_counter() - start
    losses, val_scores = loss_history(model)
    return FitResult(model, fit_time, losses, val_scores, val_accuracy or None)


def model_bytes(model: MLPClassifier) -> bytes:
    """The model pickled with a fixed protocol (same model, same bytes)."""
    return pickle.dumps(model, protocol=PICKLE_PROTOCOL)


def model_from_bytes(data: bytes, source: str) -> MLPClassifier:
    """Unpickle a model this pipeline wrote (trusted); ``source`` names it in errors."""
    model = pickle.loads(data)
    if not isinstance(model, MLPClassifier):
        raise TypeError(f"{source}: expected an MLPClassifier, found {type(model).__name__}")
    return model
