"""Fit the MLPClassifier with a progress bar and a timer (no MLflow, no paths)."""

from __future__ import annotations

import logging
import pickle
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mnistflow.config import TrainConfig
from mnistflow.data.online import EpochFeed, OnlineData
from mnistflow.internals import (
    in_place_adam,
    optimizer_gives_up,
    optimizer_state,
    reset_stalled_epochs,
    set_step_size,
    stalled_epochs,
)
from mnistflow.modeling.metrics import HOLDOUT_ACCURACY
from mnistflow.modeling.model import (
    EpochCallback,
    build_members,
    decode_argmax,
    fit_with_progress,
    loss_history,
    merge_members,
    predict_scores,
    with_views,
)

log = logging.getLogger(__name__)
PICKLE_PROTOCOL = 5  # fixed, so the model's bytes do not depend on the Python default


@dataclass(frozen=True)
class Holdout:
    """Held-out training rows scored after every epoch (a tuning trial's objective).

    ``on_score(epoch, accuracy)`` returning True stops the fit after that epoch (pruning).
    """

    X: np.ndarray
    labels: np.ndarray  # class indices
    n_classes: int
    on_score: Callable[[int, float], bool] | None = None


def score_holdout(model: MLPClassifier, holdout: Holdout) -> float:
    """Argmax accuracy (the pipeline's headline decoding) on the hold-out rows."""
    predicted = decode_argmax(predict_scores(model, holdout.X, holdout.n_classes))
    return float(np.mean(predicted == holdout.labels))


@dataclass(frozen=True)
class FitResult:
    """A fitted model and what the fit measured."""

    model: MLPClassifier
    fit_time_s: float  # wall clock: per run by nature, never in a DVC output
    losses: list[float]
    early_stop_scores: list[float] | None
    # seconds from the start of the fit to the end of each epoch (online mode; per run)
    epoch_times: list[float] = field(default_factory=list)
    holdout_accuracy: list[float] | None = None  # per epoch, with a Holdout only

    @property
    def n_iter(self) -> int:
        """Epochs run."""
        return int(self.model.n_iter_)

    @property
    def final_loss(self) -> float:
        """Training loss after the last epoch."""
        return float(self.model.loss_)

    def describe(self) -> str:
        """The fit in one line (the train stage's log): time, epochs, final loss."""
        return (
            f"fitted in {self.fit_time_s:.1f} s, {self.n_iter} epochs, "
            f"final loss {self.final_loss:.5f}"
        )

    def summary(self) -> dict[str, Any]:
        """The DVC metrics of the fit: deterministic numbers only (no timing); with
        hold-out rows also the last epoch's ``holdout_accuracy``."""
        out: dict[str, Any] = {"n_iter": self.n_iter, "final_loss": round(self.final_loss, 8)}
        if self.holdout_accuracy:
            out[HOLDOUT_ACCURACY] = round(self.holdout_accuracy[-1], 8)
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
    online: OnlineData | None = None,
    holdout: Holdout | None = None,
) -> FitResult:
    """Build and fit a classifier from ``cfg`` with ``cfg.threads`` BLAS threads; with
    ``cfg.members`` > 1, a committee trained side by side and merged into one classifier
    (:func:`~mnistflow.modeling.model.merge_members`); with ``cfg.views``, the fitted net
    merged with its copies that read moved images
    (:func:`~mnistflow.modeling.model.with_views`; the per-epoch hold-out scores are the
    nets' before that).

    Args:
        cfg: the ``train:`` section.
        X: features (n, d).
        y: targets, one-hot (n, k) or class indices (n,).
        on_epoch: called with the 1-based epoch, the training loss and the early-stopping score
            (None unless early stopping), e.g. to log them.
        file: where the progress bar goes (stderr by default; silent unless a terminal).
        online: what ``cfg.online_augment`` needs (encoding, image shape, distortions);
            required then, unused otherwise.
        holdout: rows to score after every epoch; its ``on_score`` sees each epoch's
            accuracy and may stop the fit.

    Returns:
        The fitted model with its fit time and loss history.
    """
    if cfg.online_augment and online is None:
        raise ValueError("train.online_augment needs the encoding and encode.augment (online)")
    members = build_members(cfg)
    model = members[0]  # the model (one member) or what is merged into it
    holdout_accuracy: list[float] = []
    epoch_times: list[float] = []
    with threadpool_limits(limits=cfg.threads), progress_bar(cfg.max_iter, "train", file) as bar:

        def each_epoch(epoch: int, loss: float, early_stop_score: float | None) -> bool:
            stop = False
            postfix = {"loss": f"{loss:.4f}"}
            if holdout is not None:
                holdout_accuracy.append(score_holdout(merge_members(members), holdout))
                postfix["holdout_accuracy"] = f"{holdout_accuracy[-1]:.4f}"
                stop = bool(holdout.on_score and holdout.on_score(epoch, holdout_accuracy[-1]))
            if on_epoch is not None:
                on_epoch(epoch, loss, early_stop_score)
            if early_stop_score is not None:
                postfix["early_stop_score"] = f"{early_stop_score:.4f}"
            if bar.disable:  # no terminal (CI, dvc queue logs): one plain line per epoch
                log.info("epoch %d/%d %s", epoch, cfg.max_iter, _pairs(postfix))
            bar.set_postfix(postfix, refresh=False)
            bar.update(epoch - bar.n)
            return stop

        start = time.perf_counter()
        if cfg.online_augment:
            assert online is not None
            fit_online(members, cfg, X, y, online, each_epoch, epoch_times)
        else:
            fit_with_progress(model, X, y, each_epoch)
        fit_time = time.perf_counter() - start
    model = merge_members(members)
    if cfg.views != "none":
        assert online is not None  # TrainConfig: views need online_augment
        h, w = online.image_shape
        model = with_views(model, cfg.views, (h, w), online.encoding.blank(h * w))
    losses, early_stop_scores = loss_history(model)
    return FitResult(
        model, fit_time, losses, early_stop_scores, epoch_times, holdout_accuracy or None
    )


def early_stop_rows(n: int, cfg: TrainConfig) -> int:
    """Rows held out for early stopping in online mode: the last ``validation_fraction`` of the
    base rows when ``early_stopping`` (0 otherwise), never distorted nor trained on."""
    if not cfg.early_stopping:
        return 0
    n_val = round(cfg.validation_fraction * n)
    if n_val < 2 or n_val >= n:
        raise ValueError(
            f"train.validation_fraction={cfg.validation_fraction} holds out {n_val} of {n} "
            "rows; need at least 2 and fewer than all"
        )
    return n_val


def fit_online(
    members: list[MLPClassifier],
    cfg: TrainConfig,
    X: np.ndarray,
    y: np.ndarray,
    online: OnlineData,
    on_epoch: EpochCallback,
    epoch_times: list[float],
) -> list[MLPClassifier]:
    """Fit ``members`` (one net or a committee) on fresh distortions of the base rows every
    epoch (online augmentation).

    The last :func:`early_stop_rows` rows are held out; the others feed an
    :class:`EpochFeed` (the next epoch prepared on a second process). ``epoch_times`` gets
    the seconds since the start at the end of each epoch. See :func:`train_epochs`.
    """
    n_val = early_stop_rows(len(X), cfg)
    n_fit = len(X) - n_val
    start = time.perf_counter()

    def timed(epoch: int, loss: float, early_stop_score: float | None) -> bool | None:
        epoch_times.append(time.perf_counter() - start)
        return on_epoch(epoch, loss, early_stop_score)

    waited: list[float] = []

    with EpochFeed(X[:n_fit], online, cfg.max_iter) as feed:

        def rows(epoch: int) -> np.ndarray:
            before = time.perf_counter()
            features = feed.get(epoch)
            waited.append(time.perf_counter() - before)
            log.debug("epoch %d: %.1f s on its distortions", epoch, waited[-1])
            return features

        train_epochs(members, cfg, rows, y[:n_fit], X[n_fit:], y[n_fit:], timed)
    # How much of the fit the second process did not hide (the first epoch always waits):
    # time this process spent distorting the chunks the child had not reached, or waiting.
    log.info(
        "online augmentation: %.1f s between epochs on distortions over %d epochs (first "
        "%.1f s; %d chunks distorted here)",
        sum(waited),
        len(waited),
        waited[0],
        feed.helped,
    )
    return members


def flush_subnormals(arrays: list[np.ndarray]) -> int:
    """Set the subnormal entries of each float array to 0, in place; how many there were.

    Subnormals (nonzero, below ``np.finfo(dtype).tiny``: ~1.2e-38 in float32) are where
    weights and optimizer moments go when they decay towards zero, e.g. those of pixels that
    are blank in nearly every image, under the L2 penalty and adam's decaying moments. The
    CPU computes with them many times slower than with normal numbers.
    """
    flushed = 0
    for a in arrays:
        tiny = np.finfo(a.dtype).tiny
        small = np.abs(a) < tiny
        small &= a != 0
        count = int(np.count_nonzero(small))
        if count:
            a[small] = 0
            flushed += count
    return flushed


def train_epochs(
    members: list[MLPClassifier],
    cfg: TrainConfig,
    epoch_rows: Callable[[int], np.ndarray],
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    on_epoch: EpochCallback,
) -> list[MLPClassifier]:
    """Up to ``cfg.max_iter`` epochs of ``partial_fit``, epoch ``e`` on ``epoch_rows(e)``,
    for each net of ``members`` (a committee: one thread each, all on the same rows).

    It follows sklearn's ``fit``: one random stream per net for its initial weights and every
    epoch's shuffle, the same stop on ``tol`` and ``n_iter_no_change`` (a committee stops
    when every member has stalled); its first epoch is ``fit``'s bit for bit (the tests
    check it). Later epochs differ from ``fit`` on the same rows only in that each
    shuffles ``0..n-1`` afresh where ``fit`` reshuffles the previous order (the same draws,
    another permutation). On top of it:

    - the learning rate is ``learning_rate_init * lr_decay ** (e - 1)`` in epoch ``e``;
    - with ``early_stopping`` (one net only) the score on ``X_val``/``y_val`` (sklearn's
      ``score``, as its early stopping uses) decides when to stop, and the best epoch's
      weights are kept, as sklearn does; partial_fit itself refuses early stopping, so it
      is done here;
    - after each epoch the subnormal weights and optimizer moments become 0
      (:func:`flush_subnormals`): left alone they pile up over the epochs and slow every
      later epoch (measured: 5.0 s per epoch growing to 6.4 s by epoch 8 for a one-layer
      1200-unit net);
    - adam updates the weights and its moments in place from the second epoch on
      (:func:`~mnistflow.internals.in_place_adam`: the same numbers, without sklearn's
      per-batch temporaries).

    ``on_epoch`` gets the members' mean training loss. Each net's numbers are those it
    would have trained to alone: the members share only the (read-only) rows.

    Returns:
        ``members``, fitted, with ``n_iter_``, ``loss_curve_`` and ``validation_scores_``
        as a plain fit leaves them and their own ``random_state`` and ``early_stopping``
        params.
    """
    early = cfg.early_stopping  # one net only (TrainConfig refuses it with members > 1)
    model = members[0]
    classes = np.arange(y.shape[1]) if y.ndim == 2 else np.unique(y)
    seeds = [int(m.random_state) for m in members]
    # One RandomState for each net's whole run: partial_fit re-seeds an int random_state on
    # every call, which would shuffle every epoch in the same order.
    for member, seed in zip(members, seeds, strict=True):
        member.set_params(random_state=np.random.RandomState(seed), early_stopping=False)
    early_stop_scores: list[float] = []
    best_score, no_improvement = -np.inf, 0
    best: tuple[list[np.ndarray], list[np.ndarray]] | None = None

    def one_epoch(member: MLPClassifier, rows: np.ndarray, epoch: int) -> None:
        with in_place_adam(member):
            member.partial_fit(rows, y, classes=classes)
        member.n_iter_ = epoch  # partial_fit counts its one epoch only
        flushed = flush_subnormals([*member.coefs_, *member.intercepts_, *optimizer_state(member)])
        if flushed:
            log.debug("epoch %d: %d subnormal weights and moments set to 0", epoch, flushed)

    pool = ThreadPoolExecutor(len(members), "member") if len(members) > 1 else None
    try:
        for epoch in range(1, cfg.max_iter + 1):
            rows = epoch_rows(epoch)
            if epoch > 1 and cfg.lr_decay != 1.0:
                for member in members:
                    set_step_size(member, cfg.learning_rate_init * cfg.lr_decay ** (epoch - 1))
            if early and epoch > 1:
                # the early-stopping score, not partial_fit's training loss, drives the optimizer
                reset_stalled_epochs(model)
            if pool is None:
                one_epoch(model, rows, epoch)
            else:  # NumPy and BLAS release the GIL: the members run on separate cores
                list(pool.map(one_epoch, members, [rows] * len(members), [epoch] * len(members)))
            score = None
            if early:
                score = float(model.score(X_val, y_val))
                early_stop_scores.append(score)
                no_improvement = no_improvement + 1 if score < best_score + cfg.tol else 0
                if score > best_score:
                    best_score = score
                    best = (
                        [c.copy() for c in model.coefs_],
                        [i.copy() for i in model.intercepts_],
                    )
            loss = float(np.mean([member.loss_ for member in members]))
            if on_epoch(epoch, loss, score):
                log.info("fit stopped after epoch %d of %d", epoch, cfg.max_iter)
                break
            # As sklearn's fit: after n_iter_no_change epochs without improvement the
            # optimizer stops (sgd 'adaptive' divides its rate by 5 instead, until < 1e-6).
            # Without early stopping partial_fit has already asked it and kept the count.
            if early and no_improvement > cfg.n_iter_no_change:
                if optimizer_gives_up(model, "early-stopping score stalled"):
                    log.info("early-stopping score stalled: stopping after epoch %d", epoch)
                    break
                no_improvement = 0
            if not early and all(stalled_epochs(m) > cfg.n_iter_no_change for m in members):
                log.info("training loss stalled: stopping after epoch %d", epoch)
                break
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        for member, seed in zip(members, seeds, strict=True):
            member.set_params(random_state=seed, early_stopping=early)
    if early:
        assert best is not None
        model.coefs_, model.intercepts_ = best
        model.validation_scores_ = early_stop_scores
        model.best_validation_score_ = best_score
        model.best_loss_ = None
    return members


def model_bytes(model: MLPClassifier) -> bytes:
    """The model pickled with a fixed protocol (same model, same bytes)."""
    return pickle.dumps(model, protocol=PICKLE_PROTOCOL)


def model_from_bytes(data: bytes, source: str) -> MLPClassifier:
    """Unpickle a model this pipeline wrote (trusted); ``source`` names it in errors."""
    model = pickle.loads(data)
    if not isinstance(model, MLPClassifier):
        raise TypeError(f"{source}: expected an MLPClassifier, found {type(model).__name__}")
    return model
