"""Build, fit and query scikit-learn's MLPClassifier from validated params (no MLflow here)."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import block_diag
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from mnistflow.config import EvaluateConfig, TrainConfig, ViewName
from mnistflow.internals import each_epoch, forget_optimizer
from mnistflow.modeling import metrics as m

log = logging.getLogger(__name__)
# (epoch, loss, sklearn's early-stopping score or None) -> True to stop after this epoch
EpochCallback = Callable[[int, float, float | None], bool | None]


class _StopFitError(Exception):
    """Raised from sklearn's per-epoch hook when the callback asks to stop (pruning)."""


def build_classifier(cfg: TrainConfig) -> MLPClassifier:
    """A new, unfitted MLPClassifier with every ``train:`` setting but ``threads`` (sklearn
    has no such argument; the train stage limits BLAS with it), ``online_augment``,
    ``lr_decay``, ``members`` and ``views`` (the online fit applies those)."""
    return MLPClassifier(
        hidden_layer_sizes=tuple(cfg.hidden_layer_sizes),
        activation=cfg.activation,
        solver=cfg.solver,
        alpha=cfg.alpha,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        learning_rate_init=cfg.learning_rate_init,
        momentum=cfg.momentum,
        max_iter=cfg.max_iter,
        shuffle=cfg.shuffle,
        tol=cfg.tol,
        early_stopping=cfg.early_stopping,
        validation_fraction=cfg.validation_fraction,
        n_iter_no_change=cfg.n_iter_no_change,
        random_state=cfg.random_state,
        verbose=False,
    )


def build_members(cfg: TrainConfig) -> list[MLPClassifier]:
    """The ``cfg.members`` unfitted nets of a committee, member ``k`` seeded
    ``random_state + k`` (one member: :func:`build_classifier`'s net)."""
    first = build_classifier(cfg)
    return [first] + [
        build_classifier(cfg).set_params(random_state=cfg.random_state + k)
        for k in range(1, cfg.members)
    ]


def merge_members(members: list[MLPClassifier]) -> MLPClassifier:
    """One MLP whose outputs are the activation (softmax or logistic) of the members' mean
    logits: their hidden layers side by side, no connection between members (the first
    weight matrices concatenated, the ones between hidden layers block-diagonal), the
    output weights divided by the number of members and the output biases averaged.

    The members must have the same shape (:func:`build_members`). The merged net's loss
    curve is the members' mean; it has no optimizer (``partial_fit`` starts a new one).
    One member is returned as it is.
    """
    if len(members) == 1:
        return members[0]
    first, k = members[0], len(members)
    layers = len(first.coefs_)
    coefs, intercepts = [], []
    for i in range(layers):
        weights = [m.coefs_[i] for m in members]
        if i == 0:
            coef = np.hstack(weights)
        elif i == layers - 1:
            coef = np.vstack(weights) / first.coefs_[i].dtype.type(k)
        else:
            coef = block_diag(*weights)
        biases = [m.intercepts_[i] for m in members]
        bias = (
            np.mean(biases, axis=0, dtype=biases[0].dtype) if i == layers - 1 else np.hstack(biases)
        )
        coefs.append(coef)
        intercepts.append(bias)
    merged = copy.copy(first)
    forget_optimizer(merged)  # before the deep copy: the moments are not copied
    merged = copy.deepcopy(merged)
    merged.set_params(hidden_layer_sizes=tuple(k * s for s in first.hidden_layer_sizes))
    merged.coefs_, merged.intercepts_ = coefs, intercepts
    merged.loss_curve_ = [float(v) for v in np.mean([m.loss_curve_ for m in members], axis=0)]
    merged.loss_ = merged.loss_curve_[-1]
    return merged


# Test-time views: the image itself and its one-pixel shifts (rows down, columns right).
VIEWS: dict[ViewName, tuple[tuple[int, int], ...]] = {
    "none": ((0, 0),),
    "shift4": ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)),
    "shift8": tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)),
}


def shifted_input(
    model: MLPClassifier, shape: tuple[int, int], blank: np.ndarray, dr: int, dc: int
) -> MLPClassifier:
    """A copy of ``model`` that reads each image as ``model`` reads it moved ``dr`` rows down
    and ``dc`` columns right, the pixels moved in filled with ``blank`` (the features of an
    empty image, (h*w,)).

    Only the first layer changes: the weight of each pixel moves to the pixel the shift
    brings there, and the blank pixels' part of every first hidden unit's input goes into
    its bias.
    """
    h, w = shape
    # the pixels of the moved image that come from the image, and where they come from
    covered = np.s_[max(dr, 0) : h + min(dr, 0), max(dc, 0) : w + min(dc, 0)]
    source = np.s_[max(-dr, 0) : h + min(-dr, 0), max(-dc, 0) : w + min(-dc, 0)]
    weights = model.coefs_[0].reshape(h, w, -1)
    moved = np.zeros_like(weights)
    moved[source] = weights[covered]
    filled = np.ones((h, w), dtype=bool)  # pixels of the moved image that are blank
    filled[covered] = False
    fill = np.where(filled.ravel(), blank.astype(np.float64), 0.0)
    copied = copy.copy(model)
    copied.coefs_ = [moved.reshape(h * w, -1), *model.coefs_[1:]]
    bias = model.intercepts_[0] + fill @ model.coefs_[0].astype(np.float64)
    copied.intercepts_ = [bias.astype(model.intercepts_[0].dtype), *model.intercepts_[1:]]
    return copied


def with_views(
    model: MLPClassifier, views: ViewName, shape: tuple[int, int], blank: np.ndarray
) -> MLPClassifier:
    """One MLP that averages ``model``'s logits over the :data:`VIEWS` ``views`` of each
    image (:func:`shifted_input` copies merged by :func:`merge_members`); ``none``:
    ``model`` itself."""
    if views == "none":
        return model
    return merge_members([shifted_input(model, shape, blank, *v) for v in VIEWS[views]])


# Settings each solver ignores (sklearn's MLPClassifier documentation).
_SGD_ONLY = ("learning_rate", "momentum")
_STOCHASTIC_ONLY = (
    "batch_size",
    "shuffle",
    "learning_rate_init",
    "early_stopping",
    "validation_fraction",
    "n_iter_no_change",
)


def ignored_settings(cfg: TrainConfig) -> list[str]:
    """Human-readable warnings for ``train:`` settings that have no effect with the solver.

    A setting is reported when the solver ignores it *and* it differs from sklearn's own
    default, i.e. when someone set it on purpose and could believe it mattered (the
    baseline's ``learning_rate: adaptive`` with adam is the classic case).
    """
    ignored = list(_SGD_ONLY) if cfg.solver != "sgd" else []
    if cfg.solver == "lbfgs":
        ignored += _STOCHASTIC_ONLY
    if not cfg.early_stopping and cfg.solver != "lbfgs":
        ignored.append("validation_fraction")
    sk_defaults = MLPClassifier().get_params()
    out = []
    for key in ignored:
        value = getattr(cfg, key)
        if value == sk_defaults[key]:
            continue
        why = (
            "used by early stopping only"
            if key == "validation_fraction" and cfg.solver != "lbfgs"
            else f"not used by solver {cfg.solver!r}"
        )
        out.append(f"train.{key}={value!r} has no effect ({why})")
    return out


def fit_with_progress(
    model: MLPClassifier, X: np.ndarray, y: np.ndarray, on_epoch: EpochCallback
) -> MLPClassifier:
    """Fit ``model`` in place, calling ``on_epoch(epoch, loss, early_stop_score)`` after each epoch.

    sklearn has no public per-epoch callback: :func:`mnistflow.internals.each_epoch` hooks
    the end of each epoch. ``lbfgs`` has no epochs: one call with the final loss.

    Args:
        model: an unfitted classifier from build_classifier.
        X: features (n, d).
        y: targets, one-hot (n, k) or class indices (n,).
        on_epoch: called with the 1-based epoch, the training loss and the validation
            score (None unless early stopping); returning True stops the fit after that
            epoch (a pruned tuning trial): the model keeps that epoch's weights.

    Returns:
        The same, fitted model.
    """

    def per_epoch() -> None:
        scores = model.validation_scores_
        if on_epoch(int(model.n_iter_), float(model.loss_), float(scores[-1]) if scores else None):
            raise _StopFitError

    with warnings.catch_warnings(record=True) as caught, each_epoch(model, per_epoch):
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            model.fit(X, y)
        except _StopFitError:
            log.info("fit stopped after epoch %d of %d", model.n_iter_, model.max_iter)
    for w in caught:
        # max_iter reached before tol: said once, as the warning it is, in the log instead
        # of printed through the progress bar
        if issubclass(w.category, ConvergenceWarning):
            log.warning("%s", w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if model.solver == "lbfgs":
        on_epoch(int(model.n_iter_), float(model.loss_), None)
    return model


def loss_history(model: MLPClassifier) -> tuple[list[float], list[float] | None]:
    """Per-epoch training loss and validation scores (None without early stopping)."""
    losses = list(getattr(model, "loss_curve_", None) or [model.loss_])
    scores = getattr(model, "validation_scores_", None)
    return [float(v) for v in losses], [float(v) for v in scores] if scores else None


def predict_scores(model: MLPClassifier, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class scores (n, n_classes): sigmoid outputs (one-hot targets) or softmax.

    Columns follow the class index even when training saw only some classes.
    """
    raw = model.predict_proba(X)
    classes = np.asarray(model.classes_)
    if raw.shape[1] == n_classes and np.array_equal(classes, np.arange(n_classes)):
        return np.asarray(raw, dtype=np.float64)
    if classes.max(initial=-1) >= n_classes:
        raise ValueError(f"model knows class {classes.max()} but the data has {n_classes}")
    scores = np.zeros((raw.shape[0], n_classes), dtype=np.float64)
    scores[:, classes.astype(int)] = raw
    return scores


def decode_argmax(scores: np.ndarray) -> np.ndarray:
    """The class with the highest score per row (int64, (n,))."""
    return np.argmax(scores, axis=1).astype(np.int64)


def decode_sets(scores: np.ndarray, multilabel: bool) -> np.ndarray:
    """The predicted class set per row as a bool indicator (n, k).

    With one-hot targets sklearn predicts each output independently (score > 0.5, as
    ``MLPClassifier.predict`` does), so a row can hold no class or several; with class
    indices it is exactly the argmax class.
    """
    if multilabel:
        return scores > 0.5
    sets = np.zeros(scores.shape, dtype=bool)
    sets[np.arange(scores.shape[0]), decode_argmax(scores)] = True
    return sets


@dataclass(frozen=True)
class Scored:
    """A model's answers on a labelled set and their evaluation."""

    scores: np.ndarray  # per-class scores (n, k), :func:`predict_scores`
    sets: np.ndarray  # predicted class sets, bool (n, k), :func:`decode_sets`
    ev: m.Evaluation


def score(
    model: MLPClassifier,
    X: np.ndarray,
    y_true: np.ndarray,
    multilabel: bool,
    n_classes: int,
    cfg: EvaluateConfig,
) -> Scored:
    """Score ``model`` on rows ``X`` of classes ``y_true`` and evaluate it with the
    headline metric and number of confused pairs of ``cfg``."""
    scores = predict_scores(model, X, n_classes)
    sets = decode_sets(scores, multilabel)
    return Scored(scores, sets, m.evaluate(y_true, scores, sets, cfg.headline, cfg.confused_pairs))
