"""A trial in-process: the training rows, loaded once per worker, encoded once per distinct
``encode:`` setting, fitted and scored on the held-out rows by the library functions the
encode and train stages call (:func:`encode_splits`, :func:`training.fit`).

:func:`load_training_rows` is the only way a worker gets data and it reads the training
arrays alone: no trial can encode, fit or score the test set. The last
``tune.holdout_size`` training rows are held out (:func:`split_holdout`); the encoding
(deskew, augmentation, scaling statistics) is fitted on the other rows, as the encode stage
fits it on the whole training set, and applied to the held-out rows.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistflow.config import EncodeConfig, Params, validate, with_overrides
from mnistflow.data.encode import Encoded, encode_splits, split_holdout
from mnistflow.data.online import OnlineData
from mnistflow.modeling.metrics import true_classes
from mnistflow.modeling.model import EpochCallback
from mnistflow.modeling.training import FitResult, Holdout, fit
from mnistflow.util.errors import UserError
from mnistflow.util.fileio import load_npz

log = logging.getLogger(__name__)

CACHE_SIZE = 4  # encoded splits kept per worker (50,000 x 784 float32 rows are 157 MB each)


class TuneDataError(UserError):
    """The unpacked training arrays are missing."""

    exit_code = 3


@dataclass(frozen=True)
class TrainingRows:
    """The training split's images (n, h, w) uint8 and labels (n,): nothing of the test set."""

    x: np.ndarray
    y: np.ndarray
    source: str  # the arrays file they came from


def load_training_rows(arrays_path: str | Path) -> TrainingRows:
    """The training images and labels of unpack's arrays file (the test arrays are not read).

    Raises:
        TuneDataError: the file is missing.
    """
    path = Path(arrays_path)
    if not path.exists():
        raise TuneDataError(f"{path}: not found; run `dvc repro unpack` (or `dvc pull`) first")
    arrays = load_npz(path, ["x_train", "y_train"])
    return TrainingRows(arrays["x_train"], arrays["y_train"], str(path))


def trial_params(params: Params, overrides: Mapping[str, Any]) -> Params:
    """The whole params file with a trial's overrides, validated as ``dvc exp run -S`` would."""
    return validate(with_overrides(params.raw, overrides))


class EncodedSplits:
    """A worker's encoded fit/hold-out splits, one per distinct ``encode:`` section; the
    :data:`CACHE_SIZE` most recently used are kept."""

    def __init__(self, rows: TrainingRows, holdout_size: int, n_classes: int) -> None:
        # checks the size before any trial (at most half of the rows)
        self._arrays = split_holdout({"x_train": rows.x, "y_train": rows.y}, holdout_size)
        self.n_classes, self.source = n_classes, rows.source
        self._cache: OrderedDict[str, Encoded] = OrderedDict()

    def get(self, cfg: EncodeConfig) -> Encoded:
        """The splits encoded with ``cfg`` (the hold-out rows on the ``test`` side)."""
        key = json.dumps(cfg.as_dict(), sort_keys=True)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        encoded = encode_splits(self._arrays, cfg, self.n_classes)
        self._cache[key] = encoded
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        log.info("encoded %d fit, %d hold-out rows (%s)", len(encoded.X_train),
                 len(encoded.X_test), encoded.encoding.describe())  # fmt: skip
        return encoded

    @property
    def image_shape(self) -> tuple[int, int]:
        """The images' (height, width)."""
        shape = self._arrays["x_train"].shape
        return int(shape[1]), int(shape[2])


def fit_trial(
    params: Params,
    splits: EncodedSplits,
    on_epoch: EpochCallback | None = None,
    on_score: Callable[[int, float], bool] | None = None,
) -> FitResult:
    """Encode (cached), fit as the train stage does (``train.online_augment`` included) and
    score the hold-out rows after every epoch (``result.holdout_accuracy``); ``on_score``
    returning True stops the fit after that epoch (pruning)."""
    encoded = splits.get(params.encode)
    holdout = Holdout(encoded.X_test, true_classes(encoded.y_test), splits.n_classes,
                            on_score)  # fmt: skip
    online = OnlineData(encoded.encoding, splits.image_shape, params.encode.augment)
    return fit(params.train, encoded.X_train, encoded.y_train, on_epoch,
               online=online, holdout=holdout)  # fmt: skip
