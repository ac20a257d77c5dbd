"""Tests for mnistflow.reporting.figures: real PNGs from arrays, atomic and reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistflow.reporting import figures
from tests.helpers import synthetic_digits

pytestmark = pytest.mark.unit


def test_loss_curve_png(tmp_path: Path) -> None:
    out = figures.loss_curve([2.0, 1.0, 0.5], [0.5, 0.7, 0.8], tmp_path / "r" / "loss.png")
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (600, 400)
    assert list(tmp_path.joinpath("r").iterdir()) == [out]  # no temp file left


def test_accuracy_vs_time_draws_validation_and_the_test_point(tmp_path: Path) -> None:
    a = figures.accuracy_vs_time([10.0, 20.0, 30.0], [0.9, 0.95, 0.97], 31.0, 0.98, tmp_path / "a")
    b = figures.accuracy_vs_time([10.0, 20.0, 30.0], [0.9, 0.95, 0.97], 31.0, 0.98, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    with Image.open(a) as img:
        assert img.format == "PNG"
        assert img.size == (600, 400)
    # without validation scores there is still the test point; a different curve, other bytes
    only_test = figures.accuracy_vs_time([10.0], None, 31.0, 0.98, tmp_path / "c")
    assert only_test.read_bytes() != a.read_bytes()


def test_confusion_heatmap_is_reproducible(tmp_path: Path) -> None:
    cm = np.arange(100).reshape(10, 10)
    names = [str(i) for i in range(10)]
    a = figures.confusion_heatmap(cm, names, tmp_path / "a.png")
    b = figures.confusion_heatmap(cm, names, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    c = figures.confusion_heatmap(cm.T, names, tmp_path / "c.png")
    assert c.read_bytes() != a.read_bytes()


def test_confusion_colour_bar_reads_in_counts() -> None:
    cm = np.array([[980, 3], [12, 1005]])
    fig = figures.confusion_figure(cm, ["a", "b"])
    _heatmap, bar = fig.axes
    labels = [t.get_text() for t in bar.get_yticklabels()]
    assert labels == ["0", "1", "10", "100", "1000"]  # counts up to the largest cell, 1005
    np.testing.assert_allclose(bar.get_yticks(), np.log1p([0, 1, 10, 100, 1000]))
    assert bar.get_ylabel() == "test images (log scale)"


def test_gallery_draws_the_images(tmp_path: Path) -> None:
    images, labels = synthetic_digits(8, seed=0)
    out = figures.gallery(images, [f"{lab}" for lab in labels], tmp_path / "g.png")
    with Image.open(out) as img:
        assert img.size[0] > img.size[1]  # 6 columns, 2 rows
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # not a blank canvas
    empty = figures.gallery(images[:0], [], tmp_path / "empty.png")
    assert empty.stat().st_size > 0


def test_tile_places_each_image_in_its_cell_below_the_caption_band() -> None:
    images = np.arange(1, 8, dtype=np.uint8)[:, None, None] * np.ones((7, 3, 2), np.uint8)
    canvas = figures.tile(images, cols=3, top=4, pad=2)
    cell_h, cell_w = 4 + 3 + 2, 2 + 2
    assert canvas.shape == (3 * cell_h, 3 * cell_w)  # 7 images: 3 rows of 3
    for i in range(7):
        r, c = divmod(i, 3)
        y, x = r * cell_h + 4, c * cell_w + 1
        assert (canvas[y : y + 3, x : x + 2] == i + 1).all()
    assert canvas.sum() == images.sum()  # nothing else drawn: bands and gaps stay blank


def test_gallery_wraps_long_captions_into_a_taller_band(tmp_path: Path) -> None:
    images, _ = synthetic_digits(6, seed=0)
    short = figures.gallery(images, ["#1 4→9 (0.51)"] * 6, tmp_path / "short.png")
    long = ["#1 Ankle boot→T-shirt/top (0.51)\nset: Ankle boot+Sneaker+Sandal"] * 6
    tall = figures.gallery(images, long, tmp_path / "long.png")
    with Image.open(short) as a, Image.open(tall) as b:
        assert a.size[0] == b.size[0]  # same columns, same width
        assert b.size[1] > a.size[1]  # the wrapped captions got more room above the images


def test_report_figures_writes_three_pngs_and_titles_them(tmp_path: Path) -> None:
    images, _ = synthetic_digits(3, seed=0)
    shown = figures.report_figures(
        tmp_path / "r", [1.0, 0.5], None, np.eye(2, dtype=int), ["a", "b"], images, ["x"] * 3
    )
    assert shown == {
        "Training loss": "loss.png",
        "Confusion matrix": "confusion.png",
        "Misclassified test images (first 3)": "misclassified.png",
    }
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(shown.values())
