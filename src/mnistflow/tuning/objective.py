"""The tuning objective: accuracy on a validation split held out of the *training* set.

:func:`load_training_images` is the only way a trial gets data, and it returns the training
split alone: no trial can see the test set. The last ``validation_size`` training rows are held
out; the encoding (deskew, augmentation, scaling statistics) is fitted on the rest, exactly as
the encode stage fits it on the training set, and applied to the held-out rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from mnistflow.config import EncodeConfig, ParamsError, TrainConfig
from mnistflow.data.encode import encode_splits
from mnistflow.data.online import OnlineData
from mnistflow.modeling.model import (
    build_classifier,
    decode_argmax,
    fit_with_progress,
    predict_scores,
)
from mnistflow.modeling.training import fit_online
from mnistflow.util.errors import UserError
from mnistflow.util.fileio import load_npz

# called after each epoch with (epoch, training loss, validation accuracy)
EpochScore = Callable[[int, float, float], None]


class TuneDataError(UserError):
    """The unpacked training arrays are missing or too small for the validation split."""

    exit_code = 3


@dataclass(frozen=True)
class TrainingImages:
    """The training split's images (n, 28, 28) uint8 and labels (n,): nothing of the test set."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Split:
    """Encoded features for one trial: fit rows and the held-out validation rows."""

    X_fit: np.ndarray
    y_fit: np.ndarray
    X_val: np.ndarray
    labels_val: np.ndarray  # class indices of the validation rows
    n_classes: int
    online: OnlineData  # what train.online_augment needs to distort the fit rows each epoch


def load_training_images(arrays_path: str | Path) -> TrainingImages:
    """The training images and labels from unpack's arrays file (the test arrays are dropped)."""
    path = Path(arrays_path)
    if not path.exists():
        raise TuneDataError(f"{path}: not found; run `dvc repro unpack` (or `dvc pull`) first")
    arrays = load_npz(path)
    return TrainingImages(x=arrays["x_train"], y=arrays["y_train"])


def validation_cut(n_rows: int, validation_size: int) -> int:
    """The first validation row: ``n_rows - validation_size``.

    Raises:
        ParamsError: the split would hold out more than half of the training rows.
    """
    if validation_size > n_rows // 2:
        raise ParamsError(
            f"params.yaml: 'tune.validation_size' is {validation_size} but the training set has "
            f"{n_rows} rows; hold out at most half of them"
        )
    return n_rows - validation_size


def split_and_encode(
    images: TrainingImages, validation_size: int, cfg: EncodeConfig, n_classes: int
) -> Split:
    """Hold out the last ``validation_size`` rows, encode both parts with ``cfg`` fitted on
    the fit rows only.

    Raises:
        ParamsError: the validation split would leave fewer than ``validation_size`` rows to fit.
    """
    cut = validation_cut(len(images.y), validation_size)
    encoded = encode_splits(
        {
            "x_train": images.x[:cut],
            "y_train": images.y[:cut],
            "x_test": images.x[cut:],  # encode's "test" side: here the validation rows
            "y_test": images.y[cut:],
        },
        cfg,
        n_classes,
    )
    online = OnlineData(encoded.encoding, images.x.shape[1:], cfg.augment)
    return Split(
        encoded.X_train,
        encoded.y_train,
        encoded.X_test,
        np.asarray(images.y[cut:]),
        n_classes,
        online,
    )


def accuracy(model: object, X: np.ndarray, labels: np.ndarray, n_classes: int) -> float:
    """Argmax accuracy (the pipeline's headline decoding) of a fitted model."""
    predicted = decode_argmax(predict_scores(model, X, n_classes))  # type: ignore[arg-type]
    return float(np.mean(predicted == labels))


def fit_and_score(cfg: TrainConfig, split: Split, on_epoch: EpochScore | None = None) -> float:
    """Fit a classifier from ``cfg`` on the fit rows; return its final validation accuracy.

    ``on_epoch`` sees each epoch's validation accuracy and may raise to stop the fit (pruning).
    """
    model = build_classifier(cfg)

    def each_epoch(epoch: int, loss: float, _sk_val: float | None) -> None:
        if on_epoch is not None:
            on_epoch(epoch, loss, accuracy(model, split.X_val, split.labels_val, split.n_classes))

    with threadpool_limits(limits=cfg.threads):
        if cfg.online_augment:  # fresh distortions of the fit rows every epoch, as in train
            fit_online(model, cfg, split.X_fit, split.y_fit, split.online, each_epoch, [])
        else:
            fit_with_progress(model, split.X_fit, split.y_fit, each_epoch)
        return accuracy(model, split.X_val, split.labels_val, split.n_classes)


def trial_configs(
    params: Mapping[str, object], overrides: Mapping[str, object]
) -> tuple[TrainConfig, EncodeConfig]:
    """The ``train`` and ``encode`` sections with a trial's overrides, validated."""
    from mnistflow.config import config, with_overrides

    edited = with_overrides(params, overrides)
    return config(edited, "train", TrainConfig), config(edited, "encode", EncodeConfig)
