"""Seconds per epoch of the online fit, as the train stage runs it: all 60,000 training images
distorted afresh every epoch on a second process, the preset's network (or committee) on the
first, through :func:`mnistflow.modeling.training.fit`; no MLflow, no test set.

Usage (from the repository root; needs ../shared/mnist)::

    python benchmarks/epoch_time.py --set train.max_iter=6
    python benchmarks/epoch_time.py --set train.max_iter=6 --set 'train.hidden_layer_sizes=[1200]'
    python benchmarks/epoch_time.py --set train.max_iter=6 --set train.members=2

The first epoch also waits for its distortions and makes adam's optimizer: the mean leaves it
out.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

from explore_best import load_split  # benchmarks/explore_best.py
from mnistflow.config import load_params, validate
from mnistflow.data import augment as aug
from mnistflow.data.encode import Encoding, encode_labels, flatten
from mnistflow.data.online import OnlineData
from mnistflow.experiments.presets import apply_preset
from mnistflow.modeling import training
from mnistflow.util.logs import configure
from pipeline import preset_overrides  # benchmarks/pipeline.py

log = logging.getLogger("epoch_time")
REPO = Path(__file__).resolve().parents[1]
N_CLASSES = 10  # MNIST (../shared/mnist)


def main() -> None:
    """Fit the preset with the overrides and log each epoch's seconds and their mean."""
    configure()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="best")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    params = apply_preset(
        load_params(REPO / "params.yaml"), preset_overrides(args.preset, args.set)
    )
    cfg = validate(params)
    if not cfg.train.online_augment:
        raise SystemExit("epoch_time.py times the online fit: train.online_augment must be true")
    x, y = load_split("train")
    if cfg.encode.deskew:
        x = aug.deskew(x, cfg.encode.workers)
    encoding = Encoding.fit(flatten(x), cfg.encode.scaling, cfg.encode.deskew)
    X = encoding.scale(flatten(x))
    target = encode_labels(y, cfg.encode.labels, N_CLASSES)
    online = OnlineData(encoding, x.shape[1:], cfg.encode.augment)
    result = training.fit(cfg.train, X, target, file=io.StringIO(), online=online)
    ends = result.epoch_times
    seconds = [b - a for a, b in zip([0.0, *ends], ends, strict=False)]
    later = seconds[1:] or seconds
    log.info(
        "%s x %d member(s), %d images: s per epoch %s; mean after the first %.2f",
        "x".join(map(str, cfg.train.hidden_layer_sizes)),
        cfg.train.members,
        len(X),
        " ".join(f"{s:.2f}" for s in seconds),
        sum(later) / len(later),
    )


if __name__ == "__main__":
    main()
