"""CSV text of a run's tables (pure: arrays in, text out)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """CSV text with a header ("\\n" line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def loss_csv(losses: Sequence[float], early_stop_scores: Sequence[float] | None) -> str:
    """``epoch,loss[,early_stop_score]`` lines for the DVC plot (8 decimals)."""
    header = ["epoch", "loss"] + (["early_stop_score"] if early_stop_scores else [])
    rows = []
    for i, loss in enumerate(losses):
        row = [str(i + 1), f"{loss:.8f}"]
        if early_stop_scores:
            row.append(f"{early_stop_scores[i]:.8f}")
        rows.append(row)
    return csv_text(header, rows)


def confusion_csv(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> str:
    """``actual,predicted`` class names per test row, for DVC's confusion plot."""
    rows = [[class_names[t], class_names[p]] for t, p in zip(y_true, y_pred, strict=True)]
    return csv_text(["actual", "predicted"], rows)
