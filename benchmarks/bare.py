"""The original author's approach as a yardstick: load the gz files, fit, predict (no DVC/MLflow).

Usage: python benchmarks/bare.py <folder with the four MNIST .gz files>
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from mnistflow.data.idx import IMAGES_MAGIC, LABELS_MAGIC, gunzip, parse_idx
from mnistflow.util.logs import configure

import numpy as np
from sklearn.neural_network import MLPClassifier

logger = logging.getLogger("bare")


def load(folder: Path, name: str, magic: int) -> np.ndarray:
    """Read one gzipped IDX file."""
    return parse_idx(gunzip((folder / name).read_bytes(), name), name, magic)


def main() -> None:
    """Fit the baseline MLP on one-hot targets and print the test accuracy and timings."""
    configure()
    folder = Path(sys.argv[1])
    start = time.perf_counter()
    x_train = load(folder, "train-images-idx3-ubyte.gz", IMAGES_MAGIC).reshape(-1, 784) / 255.0
    y_train = load(folder, "train-labels-idx1-ubyte.gz", LABELS_MAGIC)
    x_test = load(folder, "t10k-images-idx3-ubyte.gz", IMAGES_MAGIC).reshape(-1, 784) / 255.0
    y_test = load(folder, "t10k-labels-idx1-ubyte.gz", LABELS_MAGIC)
    onehot = np.eye(10)[y_train]
    model = MLPClassifier(
        hidden_layer_sizes=(100, 50, 25),
        activation="relu",
        learning_rate="adaptive",
        max_iter=20,
        random_state=42,
    )
    fit_start = time.perf_counter()
    model.fit(x_train, onehot)
    fit = time.perf_counter() - fit_start
    accuracy = float(np.mean(model.predict_proba(x_test).argmax(axis=1) == y_test))
    logger.info(
        "bare: fit %.1f s, total %.1f s, argmax accuracy %.4f",
        fit,
        time.perf_counter() - start,
        accuracy,
    )


if __name__ == "__main__":
    main()
