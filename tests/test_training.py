"""Tests for mnistflow.modeling.training: the fit, its timing and progress, model bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

from mnistflow.config import AugmentConfig, TrainConfig, load_params
from mnistflow.data.encode import Encoding
from mnistflow.data.online import OnlineData, epoch_features
from mnistflow.modeling import training
from mnistflow.modeling.model import build_classifier, with_views
from tests.helpers import REPO_ROOT, synthetic_digits


def tiny_cfg(**overrides: object) -> TrainConfig:
    raw = load_params(REPO_ROOT / "params.yaml")["train"]
    raw |= {"hidden_layer_sizes": [8], "max_iter": 3, **overrides}
    return TrainConfig.from_section(raw, "train")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    images, labels = synthetic_digits(60, seed=3)
    return images.reshape(60, -1) / np.float32(255), labels.astype(np.int64)


@pytest.mark.unit
def test_fit_reports_every_epoch_and_measures(
    data: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="mnistflow.modeling.training")
    seen: list[tuple[int, float, float | None]] = []
    stream = io.StringIO()  # not a terminal: the progress bar stays silent
    result = training.fit(tiny_cfg(), *data, lambda *a: seen.append(a), file=stream)
    assert [e for e, _, _ in seen] == [1, 2, 3]
    assert [loss for _, loss, _ in seen] == pytest.approx(result.losses)
    assert result.n_iter == 3
    assert result.final_loss == pytest.approx(result.losses[-1])
    assert result.early_stop_scores is None
    assert result.fit_time_s > 0
    assert result.summary() == {"n_iter": 3, "final_loss": round(result.losses[-1], 8)}
    assert stream.getvalue() == ""
    # instead of the bar: one plain log line per epoch, with the loss the bar would show
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert lines == [f"epoch {e}/3 loss={loss:.4f}" for e, loss, _ in seen]


@pytest.mark.unit
def test_fit_with_early_stopping_passes_validation_scores(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    result = training.fit(tiny_cfg(early_stopping=True), *data, file=io.StringIO())
    assert result.early_stop_scores is not None
    assert len(result.early_stop_scores) == len(result.losses) == result.n_iter


@pytest.mark.unit
def test_progress_bar_shows_on_a_terminal_only() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, log = Tty(), io.StringIO()
    for stream in (tty, log):
        with training.progress_bar(2, "train", stream) as bar:
            bar.update(2)
    assert "train" in tty.getvalue()
    assert log.getvalue() == ""


@pytest.mark.unit
def test_model_bytes_round_trip_and_are_stable(data: tuple[np.ndarray, np.ndarray]) -> None:
    model = training.fit(tiny_cfg(), *data, file=io.StringIO()).model
    again = training.fit(tiny_cfg(), *data, file=io.StringIO()).model
    blob = training.model_bytes(model)
    assert blob == training.model_bytes(again)  # same params and data, same bytes
    loaded = training.model_from_bytes(blob, "m.pkl")
    assert isinstance(loaded, MLPClassifier)
    np.testing.assert_array_equal(loaded.predict(data[0]), model.predict(data[0]))
    with pytest.raises(TypeError, match=r"m\.pkl: expected an MLPClassifier, found dict"):
        training.model_from_bytes(training.model_bytes({}), "m.pkl")  # type: ignore[arg-type]


# ---------------------------------------------------------------- online augmentation


def online(background: bool = False) -> OnlineData:
    cfg = AugmentConfig.from_section(
        load_params(REPO_ROOT / "params.yaml")["encode"]["augment"] | {"elastic_alpha": 34.0},
        "encode.augment",
    )
    return OnlineData(Encoding("divide255"), (28, 28), cfg, background)


def online_cfg(**overrides: object) -> TrainConfig:
    return tiny_cfg(online_augment=True, **overrides)


@pytest.mark.unit
def test_train_epochs_first_epoch_is_sklearns_fit(data: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = data
    cfg = tiny_cfg(max_iter=1)
    expected = training.fit(cfg, X, y, file=io.StringIO()).model
    model = build_classifier(cfg)
    training.train_epochs([model], cfg, lambda epoch: X, y, X[:0], y[:0], lambda *a: None)
    for got, want in zip(
        model.coefs_ + model.intercepts_, expected.coefs_ + expected.intercepts_, strict=True
    ):
        assert np.array_equal(got, want)
    assert model.loss_curve_ == expected.loss_curve_
    assert model.n_iter_ == 1
    assert model.get_params() == expected.get_params()  # random_state and early_stopping back


@pytest.mark.unit
def test_online_fit_is_reproducible_and_sees_new_images_every_epoch(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = data
    seen: list[tuple[int, float, float | None]] = []
    first = training.fit(online_cfg(), X, y, lambda *a: seen.append(a), io.StringIO(), online())
    again = training.fit(online_cfg(), X, y, file=io.StringIO(), online=online())
    assert training.model_bytes(first.model) == training.model_bytes(again.model)
    assert first.losses == again.losses
    assert len(first.losses) == first.n_iter == 3
    assert [e for e, _, _ in seen] == [1, 2, 3]
    assert len(first.epoch_times) == 3
    assert first.epoch_times == sorted(first.epoch_times)
    # not the same model as three epochs on the base rows, nor on one epoch's distortions
    plain = training.fit(tiny_cfg(), X, y, file=io.StringIO())
    assert first.losses[0] != plain.losses[0]
    once = build_classifier(online_cfg())
    rows = epoch_features(X, online(), 1)
    training.train_epochs([once], online_cfg(), lambda e: rows, y, X[:0], y[:0], lambda *a: None)
    assert once.loss_curve_[0] == first.losses[0]
    assert once.loss_curve_[1:] != first.losses[1:]


@pytest.mark.unit
def test_a_committee_is_its_members_trained_alone_and_merged(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    """Oracle: each member fitted alone (one thread, its own seed) on the same online data.
    The committee, trained side by side in threads, holds exactly those weights, merged;
    its loss per epoch is theirs averaged."""
    X, y = data
    committee = training.fit(online_cfg(members=2), X, y, file=io.StringIO(), online=online())
    alone = [
        training.fit(online_cfg(random_state=seed), X, y, file=io.StringIO(), online=online())
        for seed in (42, 43)
    ]
    merged = committee.model
    assert merged.hidden_layer_sizes == (16,)
    assert np.array_equal(merged.coefs_[0], np.hstack([a.model.coefs_[0] for a in alone]))
    assert np.array_equal(merged.intercepts_[0], np.hstack([a.model.intercepts_[0] for a in alone]))
    assert np.array_equal(merged.coefs_[1], np.vstack([a.model.coefs_[1] for a in alone]) / 2)
    assert not np.array_equal(alone[0].model.coefs_[0], alone[1].model.coefs_[0])  # two seeds
    assert committee.losses == pytest.approx(np.mean([a.losses for a in alone], axis=0), rel=1e-12)
    assert merged.get_params()["random_state"] == 42


@pytest.mark.unit
def test_views_are_the_fitted_net_with_its_moved_copies(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    """Oracle: the same fit without views, its model given the views afterwards."""
    X, y = data
    plain = training.fit(online_cfg(), X, y, file=io.StringIO(), online=online())
    viewed = training.fit(online_cfg(views="shift4"), X, y, file=io.StringIO(), online=online())
    shape = online().image_shape
    blank = online().encoding.blank(shape[0] * shape[1])
    expected = with_views(plain.model, "shift4", shape, blank)
    assert training.model_bytes(viewed.model) == training.model_bytes(expected)
    assert viewed.model.hidden_layer_sizes == (5 * 8,)
    assert viewed.losses == plain.losses
    assert viewed.n_iter == plain.n_iter


@pytest.mark.unit
def test_online_fit_needs_its_data(data: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="online_augment needs the encoding"):
        training.fit(online_cfg(), *data, file=io.StringIO())


@pytest.mark.unit
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_lr_decay_sets_each_epochs_rate(data: tuple[np.ndarray, np.ndarray], solver: str) -> None:
    cfg = online_cfg(solver=solver, learning_rate="constant", lr_decay=0.5, max_iter=4)
    result = training.fit(cfg, *data, file=io.StringIO(), online=online())
    optimizer = result.model._optimizer
    rate = optimizer.learning_rate_init if solver == "adam" else optimizer.learning_rate
    assert rate == pytest.approx(cfg.learning_rate_init * 0.5**3)
    assert result.model.learning_rate_init == cfg.learning_rate_init  # the param is unchanged
    undecayed = training.fit(
        online_cfg(solver=solver, learning_rate="constant", max_iter=4),
        *data,
        file=io.StringIO(),
        online=online(),
    )
    assert undecayed.losses[:2] != result.losses[:2] or undecayed.losses[2:] != result.losses[2:]
    assert undecayed.losses[0] == result.losses[0]  # the first epoch runs at the initial rate


@pytest.mark.unit
def test_online_early_stopping_scores_held_out_rows_and_keeps_the_best_epoch(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = data
    cfg = online_cfg(early_stopping=True, validation_fraction=0.25, max_iter=6)
    seen: list[float | None] = []
    result = training.fit(cfg, X, y, lambda _e, _loss, v: seen.append(v), io.StringIO(), online())
    model = result.model
    assert result.early_stop_scores == seen
    assert len(seen) == 6
    assert model.best_validation_score_ == max(seen)
    assert model.early_stopping is True
    assert model.validation_scores_ == seen
    # the kept weights are the best epoch's: they score best_validation_score_ on the held-out rows
    assert model.score(X[45:], y[45:]) == max(seen)
    assert training.early_stop_rows(60, cfg) == 15


@pytest.mark.unit
def test_online_early_stopping_stops_after_n_iter_no_change(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    # tol 1: no epoch can improve the score by 1, so the run stops after 1 + 2 epochs
    cfg = online_cfg(early_stopping=True, validation_fraction=0.25, max_iter=20)
    cfg = cfg.model_copy(update={"tol": 1.0, "n_iter_no_change": 2})
    result = training.fit(cfg, *data, file=io.StringIO(), online=online())
    assert result.n_iter == 4  # stops once the count exceeds n_iter_no_change, as sklearn does


@pytest.mark.unit
def test_validation_rows_refuses_a_split_that_leaves_nothing() -> None:
    with pytest.raises(ValueError, match="holds out 0 of 3 rows"):
        training.early_stop_rows(3, online_cfg(early_stopping=True, validation_fraction=0.1))
    assert training.early_stop_rows(3, online_cfg()) == 0


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flush_subnormals_zeroes_exactly_the_subnormal_entries(dtype: type) -> None:
    tiny = np.finfo(dtype).tiny
    a = np.array([0.0, tiny, -tiny, tiny / 2, -tiny / 4, 1.0, -3e-3], dtype=dtype)
    b = np.array([[tiny / 8, 2.0]], dtype=dtype)
    assert (a[3:5] != 0).all()  # the two subnormals really are nonzero to begin with
    assert training.flush_subnormals([a, b]) == 3
    np.testing.assert_array_equal(a, np.array([0.0, tiny, -tiny, 0, 0, 1.0, -3e-3], dtype=dtype))
    np.testing.assert_array_equal(b, np.array([[0.0, 2.0]], dtype=dtype))
    assert training.flush_subnormals([a, b]) == 0
