"""Tests for mnistflow.modeling.training: the fit, its timing and progress, model bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier

from mnistflow.config import TrainConfig, load_params
from mnistflow.modeling import training
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
    assert result.val_scores is None
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
    assert result.val_scores is not None
    assert len(result.val_scores) == len(result.losses) == result.n_iter


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
