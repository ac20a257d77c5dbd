"""Matplotlib figures from arrays, saved as PNG atomically.

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot): no global state,
no display needed.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mnistflow.util import fileio

DPI = 100
GALLERY_COLS = 6
GALLERY_TILE_IN = 1.3  # inches per image in the gallery
CAPTION_PT = 7.0


def _save(fig: Figure, target: str | Path) -> Path:
    """Render ``fig`` to PNG at ``target`` atomically."""
    FigureCanvasAgg(fig)

    def write(tmp: Path) -> None:
        # No timestamp or version in the PNG metadata: same figure, same bytes.
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})

    return fileio.write_atomic(target, write)


def loss_curve(
    losses: Sequence[float], early_stop_scores: Sequence[float] | None, target: str | Path
) -> Path:
    """Training loss per epoch (and validation accuracy on a second axis when given)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = np.arange(1, len(losses) + 1)
    ax.plot(epochs, losses, marker="o", ms=3, color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    ax.grid(alpha=0.3)
    if early_stop_scores:
        ax2 = ax.twinx()
        ax2.plot(
            epochs,
            early_stop_scores,
            marker="s",
            ms=3,
            color="tab:orange",
            label="early-stopping score",
        )
        ax2.set_ylabel("early-stopping score", color="tab:orange")
    ax.set_title("Training loss per epoch")
    fig.tight_layout()
    return _save(fig, target)


def accuracy_vs_time(
    elapsed_s: Sequence[float],
    early_stop_scores: Sequence[float] | None,
    test_time_s: float,
    test_accuracy: float,
    target: str | Path,
) -> Path:
    """The early-stopping score at the end of each epoch against the fit's wall-clock seconds, and
    the test accuracy, measured once, at the end of the fit (per run: a time axis)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if early_stop_scores:
        ax.plot(
            elapsed_s[: len(early_stop_scores)],
            early_stop_scores,
            marker="o",
            ms=3,
            color="tab:orange",
            label="early-stopping hold-out (each epoch)",
        )
    ax.plot([test_time_s], [test_accuracy], marker="*", ms=12, ls="", color="tab:red", label="test")
    ax.annotate(
        f"{100 * test_accuracy:.2f}%",
        (test_time_s, test_accuracy),
        textcoords="offset points",
        xytext=(-10, 8),
        ha="right",
    )
    ax.set_xlabel("fit time, s (wall clock)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Accuracy against training time")
    fig.tight_layout()
    return _save(fig, target)


def confusion_heatmap(cm: np.ndarray, class_names: Sequence[str], target: str | Path) -> Path:
    """Confusion matrix as a heatmap with the count in each cell (rows: true class)."""
    return _save(confusion_figure(cm, class_names), target)


def confusion_figure(cm: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The heatmap of :func:`confusion_heatmap`: log-coloured, with a colour bar in counts."""
    k = cm.shape[0]
    size = max(5.0, 0.6 * k + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    # log scale so the off-diagonal errors are visible next to the large diagonal; the colour
    # bar is labelled in counts, so the scale can be read
    shown = np.log1p(cm)
    image = ax.imshow(shown, cmap="Blues")
    top = int(cm.max()) if cm.size else 0
    counts = [0] + [10**e for e in range(len(str(top))) if 10**e <= top]
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_ticks(np.log1p(counts), labels=[str(c) for c in counts])
    bar.set_label("test images (log scale)")
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = shown.max() / 2 if shown.size else 0
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shown[i, j] > threshold else "black",
                )
    ax.set_title("Confusion matrix (test set, argmax predictions)")
    fig.tight_layout()
    return fig


def tile(images: np.ndarray, cols: int, top: int, pad: int) -> np.ndarray:
    """Images (n, h, w) laid out row by row in ``cols`` columns on a zero canvas.

    Each cell is ``top`` blank rows (room for a caption) over the image, with ``pad`` blank
    columns split around it and ``pad`` blank rows below; cell ``i`` starts at row
    ``(i // cols) * (top + h + pad)``, column ``(i % cols) * (w + pad)``.
    """
    n, h, w = images.shape
    rows = max(1, math.ceil(n / cols))
    cell_h, cell_w = top + h + pad, w + pad
    canvas = np.zeros((rows * cell_h, cols * cell_w), dtype=images.dtype)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        y, x = r * cell_h + top, c * cell_w + pad // 2
        canvas[y : y + h, x : x + w] = image
    return canvas


def gallery(images: np.ndarray, captions: Sequence[str], target: str | Path) -> Path:
    """A grid of uint8 images (n, h, w) with one caption each; a note if there are none.

    Drawn as one image with text over it, not one subplot per image: 36 subplots and
    ``tight_layout`` cost ~0.8 CPU s per evaluate, this ~0.2 s. Captions are wrapped to the
    tile's width and the band above each row is as tall as the longest caption.
    """
    n = len(images)
    if n == 0:
        fig = Figure(figsize=(4, 1))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
        return _save(fig, target)
    cols = min(GALLERY_COLS, n)
    w = images.shape[2]
    per_px = GALLERY_TILE_IN / w  # inches per image pixel
    chars = int(GALLERY_TILE_IN * 72 / (0.6 * CAPTION_PT))  # ~0.6 em per character
    wrapped = [
        "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) for line in c.split("\n"))
        for c in captions
    ]
    lines = max(text.count("\n") + 1 for text in wrapped)
    top = math.ceil(lines * CAPTION_PT * 1.2 / 72 / per_px) + 1
    canvas = tile(images, cols, top, pad=max(2, w // 7))
    fig = Figure(figsize=(canvas.shape[1] * per_px, canvas.shape[0] * per_px))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    cell_h, cell_w = canvas.shape[0] // math.ceil(n / cols), canvas.shape[1] // cols
    for i, text in enumerate(wrapped):
        r, c = divmod(i, cols)
        x, y = c * cell_w + (cell_w - 1) / 2, r * cell_h + top - 1
        ax.text(x, y, text, ha="center", va="bottom", fontsize=CAPTION_PT, linespacing=1.1)
    return _save(fig, target)


def report_figures(
    report_dir: str | Path,
    losses: Sequence[float],
    early_stop_scores: Sequence[float] | None,
    cm: np.ndarray,
    class_names: Sequence[str],
    gallery_images: np.ndarray,
    captions: Sequence[str],
) -> dict[str, str]:
    """Write the report's three figures into ``report_dir``; return title -> file name."""
    report_dir = Path(report_dir)
    loss_curve(losses, early_stop_scores, report_dir / "loss.png")
    confusion_heatmap(cm, class_names, report_dir / "confusion.png")
    gallery(gallery_images, captions, report_dir / "misclassified.png")
    return {
        "Training loss": "loss.png",
        "Confusion matrix": "confusion.png",
        f"Misclassified test images (first {len(gallery_images)})": "misclassified.png",
    }
