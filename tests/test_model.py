"""Tests for mnistflow.modeling.model: building from params, ignored settings, progress."""

from __future__ import annotations

import copy
import os
import pickle
import re
import signal

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from mnistflow.config import ParamsError, TrainConfig, config, load_params
from mnistflow.modeling.model import (
    build_classifier,
    build_members,
    decode_argmax,
    decode_sets,
    fit_with_progress,
    ignored_settings,
    loss_history,
    merge_members,
    predict_scores,
    with_views,
)
from mnistflow.util.signals import Interrupted, raise_on_signals
from tests.helpers import REPO_ROOT, synthetic_digits

pytestmark = pytest.mark.unit


def train_section(**overrides: object) -> dict:
    """The repository's params with ``train:`` overrides."""
    params = copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))
    params["train"].update(overrides)
    return params


def train_cfg(**overrides: object) -> TrainConfig:
    return config(train_section(**overrides), "train", TrainConfig)


def data(n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, one-hot targets and class indices of synthetic digits."""
    images, labels = synthetic_digits(n, seed=3)
    X = images.reshape(n, -1).astype(np.float32) / 255
    return X, np.eye(10, dtype=np.float32)[labels], labels.astype(np.int64)


def test_build_maps_every_setting() -> None:
    cfg = train_cfg(hidden_layer_sizes=[7, 3], alpha=0.5, batch_size=32, momentum=0.8)
    model = build_classifier(cfg)
    got = model.get_params()
    settings = cfg.as_dict()
    assert settings.pop("threads") == 1  # not sklearn's: the stage limits BLAS with it
    # not sklearn's either: the online per-epoch loop (modeling.training) applies them
    assert (settings.pop("online_augment"), settings.pop("lr_decay")) == (False, 1.0)
    assert (settings.pop("members"), settings.pop("views")) == (1, "none")
    for key, value in settings.items():
        expected = tuple(value) if key == "hidden_layer_sizes" else value
        assert got[key] == expected, key


def test_batch_size_auto_passes_through() -> None:
    assert build_classifier(train_cfg(batch_size="auto")).batch_size == "auto"


def test_default_params_warn_that_adaptive_learning_rate_is_ignored() -> None:
    warnings = ignored_settings(train_cfg())  # adam + learning_rate adaptive
    assert len(warnings) == 1
    assert "train.learning_rate='adaptive'" in warnings[0]
    assert "adam" in warnings[0]


def test_sgd_uses_learning_rate_and_momentum() -> None:
    assert ignored_settings(train_cfg(solver="sgd", momentum=0.5)) == []


def test_lbfgs_warns_about_stochastic_settings_set_on_purpose() -> None:
    warnings = ignored_settings(train_cfg(solver="lbfgs", batch_size=64, learning_rate="constant"))
    assert any("train.batch_size=64" in w for w in warnings)
    # values equal to sklearn's defaults cannot mislead anyone
    assert not any("train.shuffle" in w for w in warnings)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"hidden_layer_sizes": [100, -5]}, "train.hidden_layer_sizes"),
        ({"activation": "softmax"}, "train.activation"),
        ({"solver": "rmsprop"}, "train.solver"),
        ({"max_iter": 0}, "train.max_iter"),
        ({"batch_size": "big"}, "train.batch_size"),
        ({"alpha": "0.1"}, "train.alpha"),
    ],
)
def test_bad_params_name_the_key(override: dict, key: str) -> None:
    with pytest.raises(ParamsError, match=re.escape(f"'{key}'")):
        train_cfg(**override)


def test_fit_with_progress_reports_every_epoch_and_pickles_plain() -> None:
    X, Y, _ = data()
    seen: list[tuple[int, float, float | None]] = []
    model = fit_with_progress(
        build_classifier(train_cfg(max_iter=3, hidden_layer_sizes=[8])),
        X,
        Y,
        lambda e, loss, val: seen.append((e, loss, val)),
    )
    assert [e for e, _, _ in seen] == [1, 2, 3]
    assert [loss for _, loss, _ in seen] == pytest.approx(model.loss_curve_)
    assert all(val is None for _, _, val in seen)
    assert "_update_no_improvement_count" not in vars(model)
    assert type(pickle.loads(pickle.dumps(model))) is MLPClassifier


def test_fit_with_progress_reports_validation_score_with_early_stopping() -> None:
    X, Y, _ = data()
    seen: list[float | None] = []
    model = fit_with_progress(
        build_classifier(train_cfg(max_iter=2, hidden_layer_sizes=[8], early_stopping=True)),
        X,
        Y,
        lambda e, loss, val: seen.append(val),
    )
    assert seen == pytest.approx(model.validation_scores_)
    assert loss_history(model)[1] == pytest.approx(model.validation_scores_)


def test_same_params_and_data_give_byte_identical_model() -> None:
    X, Y, _ = data()
    cfg = train_cfg(max_iter=2, hidden_layer_sizes=[16, 8])
    blobs = [
        pickle.dumps(fit_with_progress(build_classifier(cfg), X, Y, lambda *a: None), protocol=5)
        for _ in range(2)
    ]
    assert blobs[0] == blobs[1]
    other = train_cfg(max_iter=2, hidden_layer_sizes=[16, 8], random_state=7)
    blob3 = pickle.dumps(fit_with_progress(build_classifier(other), X, Y, lambda *a: None), 5)
    assert blob3 != blobs[0]  # the seed matters, so the equality above is not trivial


def test_interrupt_during_fit_propagates_instead_of_half_trained_model() -> None:
    X, Y, _ = data()
    model = build_classifier(train_cfg(max_iter=50, hidden_layer_sizes=[8]))

    def on_epoch(epoch: int, loss: float, val: float | None) -> None:
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted) as info, raise_on_signals():
        fit_with_progress(model, X, Y, on_epoch)
    assert info.value.signum == signal.SIGTERM
    assert info.value.exit_code == 143
    assert model.n_iter_ == 2
    assert "_update_no_improvement_count" not in vars(model)
    # the handlers in force before the block are back (not ours, which would raise)
    assert {s: signal.getsignal(s) for s in before} == before


def test_sklearn_swallows_keyboard_interrupt_which_is_why_we_do_not_use_it() -> None:
    X, Y, _ = data()
    model = build_classifier(train_cfg(max_iter=50, hidden_layer_sizes=[8]))

    def on_epoch(epoch: int, loss: float, val: float | None) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="interrupted"):
        fit_with_progress(model, X, Y, on_epoch)  # returns normally: half-trained
    assert model.n_iter_ == 2


def test_predictions_onehot_and_index() -> None:
    X, Y, y = data()
    onehot = fit_with_progress(
        build_classifier(train_cfg(max_iter=30, hidden_layer_sizes=[16])), X, Y, lambda *a: None
    )
    scores = predict_scores(onehot, X, 10)
    assert scores.shape == (200, 10)
    sets = decode_sets(scores, multilabel=True)
    assert np.array_equal(sets, onehot.predict(X).astype(bool))  # sklearn's own threshold
    index = fit_with_progress(
        build_classifier(train_cfg(max_iter=30, hidden_layer_sizes=[16])), X, y, lambda *a: None
    )
    scores = predict_scores(index, X, 10)
    assert np.allclose(scores.sum(axis=1), 1.0)
    assert np.array_equal(decode_argmax(scores), index.predict(X))
    assert np.all(decode_sets(scores, multilabel=False).sum(axis=1) == 1)


def test_predict_scores_places_columns_by_class_when_a_class_is_missing() -> None:
    X, _, y = data()
    keep = y != 4
    model = fit_with_progress(
        build_classifier(train_cfg(max_iter=5, hidden_layer_sizes=[8])),
        X[keep],
        y[keep],
        lambda *a: None,
    )
    scores = predict_scores(model, X, 10)
    assert scores.shape == (200, 10)
    assert np.all(scores[:, 4] == 0)
    assert np.array_equal(decode_argmax(scores), model.predict(X))


def forward_logits(model: MLPClassifier, X: np.ndarray) -> np.ndarray:
    """The output layer's pre-activations, computed here from the weights (relu nets)."""
    h = X.astype(np.float64)
    for i, (w, b) in enumerate(zip(model.coefs_, model.intercepts_, strict=True)):
        h = h @ w + b
        if i < len(model.coefs_) - 1:
            h = np.maximum(h, 0)
    return h


@pytest.mark.parametrize("hidden", [[6], [6, 4]])
@pytest.mark.parametrize("targets", ["index", "onehot"])
def test_a_merged_committee_outputs_its_members_mean_logits(
    hidden: list[int], targets: str
) -> None:
    """Oracle: the members' own weights, run forward here; the merged net's probabilities
    are the softmax (class indices) or the sigmoid (one-hot targets) of their mean."""
    X, onehot, labels = data(120)
    y = labels if targets == "index" else onehot
    cfg = train_cfg(hidden_layer_sizes=hidden, max_iter=3, members=3, online_augment=True)
    members = build_members(cfg)
    assert [m.random_state for m in members] == [42, 43, 44]
    for m in members:
        with pytest.warns(ConvergenceWarning):
            m.fit(X, y)
    merged = merge_members(members)
    assert merged.hidden_layer_sizes == tuple(3 * n for n in hidden)
    mean = np.mean([forward_logits(m, X) for m in members], axis=0)
    if targets == "index":
        expected = np.exp(mean - mean.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
    else:
        expected = 1 / (1 + np.exp(-mean))
    np.testing.assert_allclose(merged.predict_proba(X), expected, rtol=1e-4, atol=1e-6)
    assert merged.coefs_[0].dtype == members[0].coefs_[0].dtype
    assert merged.loss_curve_ == pytest.approx(np.mean([m.loss_curve_ for m in members], axis=0))
    assert [m.hidden_layer_sizes for m in members] == [tuple(hidden)] * 3  # members untouched
    before = merged.coefs_[0].copy()
    merged.partial_fit(X, y)  # a fresh optimizer for the merged shapes
    assert merged.coefs_[0].shape == before.shape
    assert not np.array_equal(merged.coefs_[0], before)


def moved_image(image: np.ndarray, blank: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``image`` (h, w) moved ``dr`` rows down and ``dc`` columns right, pixel by pixel; the
    pixels with nothing moved onto them take ``blank``'s value."""
    h, w = image.shape
    out = blank.reshape(h, w).copy()
    for r in range(h):
        for c in range(w):
            if 0 <= r - dr < h and 0 <= c - dc < w:
                out[r, c] = image[r - dr, c - dc]
    return out


@pytest.mark.parametrize("views", ["shift4", "shift8"])
@pytest.mark.parametrize(("hidden", "targets"), [([6], "index"), ([6, 4], "onehot")])
def test_views_average_the_logits_of_moved_images(
    views: str, hidden: list[int], targets: str
) -> None:
    """Oracle: each image moved here pixel by pixel (a standardized encoding, so the blank
    pixels are not 0), run forward through the original net; the merged net's outputs are
    the activation of the mean of those logits."""
    images, labels = synthetic_digits(60, seed=5)
    shape = images.shape[1:]
    flat = images.reshape(len(images), -1).astype(np.float32)
    mean, std = flat.mean(axis=0), flat.std(axis=0) + 1
    X = (flat - mean) / std
    blank = (0 - mean) / std  # the features of an empty image
    model = build_classifier(train_cfg(hidden_layer_sizes=hidden, max_iter=3))
    with pytest.warns(ConvergenceWarning):
        model.fit(X, labels if targets == "index" else np.eye(10, dtype=np.float32)[labels])
    moves = {"shift4": [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)],
             "shift8": [(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1)]}[views]  # fmt: skip
    moved = [np.array([moved_image(x.reshape(shape), blank, *m).ravel() for x in X]) for m in moves]
    logits = [forward_logits(model, rows) for rows in moved]
    mean_logits = np.mean(logits, axis=0)
    if targets == "index":
        expected = np.exp(mean_logits - mean_logits.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
    else:
        expected = 1 / (1 + np.exp(-mean_logits))
    combined = with_views(model, views, shape, blank)
    np.testing.assert_allclose(combined.predict_proba(X), expected, rtol=1e-4, atol=1e-6)
    assert combined.hidden_layer_sizes == tuple(len(moves) * n for n in hidden)
    assert not np.allclose(model.predict_proba(X), expected, atol=1e-3)  # the views matter
    assert with_views(model, "none", shape, blank) is model


def test_one_member_is_the_model_itself() -> None:
    (model,) = build_members(train_cfg())
    assert merge_members([model]) is model
