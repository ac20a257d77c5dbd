"""The misclassified test images: rows, their CSV and gallery captions (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from mnistflow.data.images import png_relpath
from mnistflow.reporting.tables import csv_text

HEADER = ("index", "true", "predicted", "confidence", "predicted_set", "png")


@dataclass(frozen=True)
class Misclassified:
    """One misclassified test image."""

    index: int
    true: int
    predicted: int  # argmax class
    confidence: float  # its score, rounded to 6 decimals
    predicted_set: tuple[int, ...]  # classes over the threshold
    png: str  # where unpack drew it

    def row(self) -> list[object]:
        """The CSV row, in HEADER order."""
        predicted_set = " ".join(str(c) for c in self.predicted_set)
        return [self.index, self.true, self.predicted, self.confidence, predicted_set, self.png]


def rows(
    y_true: np.ndarray,
    scores: np.ndarray,
    pred_sets: np.ndarray,
    wrong: np.ndarray,
    images_dir: str,
) -> list[Misclassified]:
    """One entry per misclassified test image, in test order.

    Args:
        y_true: true class indices (n,).
        scores: per-class scores (n, k).
        pred_sets: predicted class sets, bool (n, k).
        wrong: bool mask (n,) of the rows counted as errors by the headline metric.
        images_dir: paths.images_dir, for the PNG path of each image.
    """
    predicted = np.argmax(scores, axis=1)
    out = []
    for i in np.flatnonzero(wrong):
        true, pred = int(y_true[i]), int(predicted[i])
        png = PurePosixPath(images_dir) / png_relpath("test", true, int(i)).as_posix()
        out.append(
            Misclassified(
                index=int(i),
                true=true,
                predicted=pred,
                confidence=round(float(scores[i, pred]), 6),
                predicted_set=tuple(int(c) for c in np.flatnonzero(pred_sets[i])),
                png=str(png),
            )
        )
    return out


def to_csv(entries: Sequence[Misclassified]) -> str:
    """The misclassified table: index, true, predicted, confidence, predicted_set, png."""
    return csv_text(HEADER, [e.row() for e in entries])


# What a gallery caption says, for the report (the one place besides :func:`caption`)
CAPTION_KEY = (
    "Each image of the gallery is captioned `#<test index> <true class>→<predicted class> "
    "(<score of the predicted class>)`; with one-hot targets a second line `set: …` shows "
    "the classes scoring over 0.5 when they are not just the predicted one (`none`: no "
    "class did)."
)


def caption(row: Misclassified, class_names: Sequence[str], multilabel: bool) -> str:
    """Gallery caption: index, true -> argmax class (its score); the thresholded set below it
    when that differs (one-hot targets: no class, or several)."""
    text = (
        f"#{row.index} {class_names[row.true]}→{class_names[row.predicted]} ({row.confidence:.2f})"
    )
    if multilabel and row.predicted_set != (row.predicted,):
        names = [class_names[c] for c in row.predicted_set]
        text += "\nset: " + ("+".join(names) if names else "none")
    return text
