"""Matplotlib figures from arrays, saved as PNG atomically.

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot): no global state,
no display needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mnistflow.util import fileio

DPI = 100


def _save(fig: Figure, target: str | Path) -> Path:
    """Render ``fig`` to PNG at ``target`` atomically."""
    FigureCanvasAgg(fig)

    def write(tmp: Path) -> None:
        # No timestamp or version in the PNG metadata: same figure, same bytes.
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})

    return fileio.write_atomic(target, write)


def loss_curve(
    losses: Sequence[float], val_scores: Sequence[float] | None, target: str | Path
) -> Path:
    """Training loss per epoch (and validation accuracy on a second axis when given)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = np.arange(1, len(losses) + 1)
    ax.plot(epochs, losses, marker="o", ms=3, color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    ax.grid(alpha=0.3)
    if val_scores:
        ax2 = ax.twinx()
        ax2.plot(
            epochs, val_scores, marker="s", ms=3, color="tab:orange", label="validation accuracy"
        )
        ax2.set_ylabel("validation accuracy", color="tab:orange")
    ax.set_title("Training loss per epoch")
    fig.tight_layout()
    return _save(fig, target)


def accuracy_vs_time(
    elapsed_s: Sequence[float],
    val_scores: Sequence[float] | None,
    test_time_s: float,
    test_accuracy: float,
    target: str | Path,
) -> Path:
    """Validation score at the end of each epoch against the fit's wall-clock seconds, and
    the test accuracy, measured once, at the end of the fit (per run: a time axis)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if val_scores:
        ax.plot(
            elapsed_s[: len(val_scores)],
            val_scores,
            marker="o",
            ms=3,
            color="tab:orange",
            label="validation (each epoch)",
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
    k = cm.shape[0]
    size = max(5.0, 0.6 * k + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    # log scale so the off-diagonal errors are visible next to the large diagonal
    shown = np.log1p(cm)
    ax.imshow(shown, cmap="Blues")
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
    return _save(fig, target)


def gallery(images: np.ndarray, captions: Sequence[str], target: str | Path) -> Path:
    """A grid of uint8 images (n, h, w) with one caption each; a note if there are none."""
    n = len(images)
    cols = max(1, min(6, n))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows))
    if n == 0:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(captions[i], fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, target)


def report_figures(
    report_dir: str | Path,
    losses: Sequence[float],
    val_scores: Sequence[float] | None,
    cm: np.ndarray,
    class_names: Sequence[str],
    gallery_images: np.ndarray,
    captions: Sequence[str],
) -> dict[str, str]:
    """Write the report's three figures into ``report_dir``; return title -> file name."""
    report_dir = Path(report_dir)
    loss_curve(losses, val_scores, report_dir / "loss.png")
    confusion_heatmap(cm, class_names, report_dir / "confusion.png")
    gallery(gallery_images, captions, report_dir / "misclassified.png")
    return {
        "Training loss": "loss.png",
        "Confusion matrix": "confusion.png",
        f"Misclassified test images (first {len(gallery_images)})": "misclassified.png",
    }
