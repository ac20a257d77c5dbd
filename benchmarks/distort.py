"""Online augmentation's two halves per 60,000-image epoch, on one core each: distorting
every training image (``augment.epoch_batch`` with the best preset's distortions) against one
``partial_fit`` epoch of the preset's network on one BLAS thread (adam's updates in place, as
the online loop makes them from its second epoch on).

Usage (from the repository root; needs ../shared/mnist)::

    python benchmarks/distort.py [--epochs 3] [--preset best] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from explore_best import load_split  # benchmarks/explore_best.py
from mnistflow.config import load_params, validate
from mnistflow.data import augment as aug
from mnistflow.data.encode import Encoding, encode_labels, flatten
from mnistflow.experiments.presets import apply_preset
from mnistflow.internals import in_place_adam
from mnistflow.modeling.model import build_classifier
from mnistflow.util.logs import configure
from pipeline import preset_overrides  # benchmarks/pipeline.py

import numpy as np
from threadpoolctl import threadpool_limits

log = logging.getLogger("distort")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Print the CPU seconds of one epoch's distortions and of one epoch's training."""
    configure()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--preset", default="best")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = preset_overrides(args.preset, args.set)
    params = apply_preset(load_params(REPO / "params.yaml"), overrides)
    cfg = validate(params)
    x, y = load_split("train")
    if cfg.encode.deskew:
        x = aug.deskew(x, workers=1)
    distort_s = []
    for epoch in range(1, args.epochs + 1):
        start = time.process_time()
        aug.epoch_batch(x, y, epoch, cfg.encode.augment)
        distort_s.append(time.process_time() - start)
    encoding = Encoding.fit(flatten(x), cfg.encode.scaling, cfg.encode.deskew)
    X = encoding.scale(flatten(x))
    target = encode_labels(y, cfg.encode.labels, 10)
    model = build_classifier(cfg.train)
    classes = np.arange(10) if target.ndim == 1 else None
    train_s = []
    with threadpool_limits(limits=1):
        for _ in range(args.epochs):
            start = time.process_time()
            with in_place_adam(model):  # as the online loop (a no-op on the first epoch)
                model.partial_fit(X, target, classes=classes)
            train_s.append(time.process_time() - start)
    log.info(
        "per %d-image epoch, CPU s on one core: distortions %s (median %.2f); training %s "
        "(%s, median %.2f)",
        len(x),
        " ".join(f"{s:.2f}" for s in distort_s),
        float(np.median(distort_s)),
        " ".join(f"{s:.2f}" for s in train_s),
        "x".join(map(str, cfg.train.hidden_layer_sizes)),
        float(np.median(train_s)),
    )


if __name__ == "__main__":
    main()
