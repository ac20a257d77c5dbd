"""Score other test-time views than one-pixel shifts on the validation split, with the final
models that ``explore_online.py`` kept (``<name>.pkl`` beside each trial's ``.npz``): small
rotations and zooms beside the shifts of ``train.views``, without refitting.

Each view resamples the (deskewed) hold-out images, the last 10,000 training images, with the
bilinear sampler of ``data/augment.py`` about the image centre, and runs them through the model.
A set of views is scored by the argmax of the views' mean log-probabilities: the per-image
log-normaliser is the same for every class, so this is the argmax of the mean logits, what
``train.views`` builds into the model. Nothing reads the test set.

Usage (from the repository root; needs ../shared/mnist)::

    python benchmarks/explore_views.py v1200-300-s0 v1200-300-s1 [--dir DIR] [--preset best]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from explore_best import N_VAL, load_split  # benchmarks/explore_best.py
from mnistflow.config import load_params, validate
from mnistflow.data import augment as aug
from mnistflow.data.encode import Encoding, flatten
from mnistflow.experiments.presets import apply_preset
from mnistflow.modeling.model import VIEWS as MODEL_VIEWS
from mnistflow.modeling.training import model_from_bytes
from mnistflow.util.logs import configure
from pipeline import preset_overrides  # benchmarks/pipeline.py

import numpy as np

log = logging.getLogger("explore_views")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = Path(tempfile.gettempdir()) / "explore_online"  # explore_online.py's default log
# One view: (rows down, columns right, rotation in degrees, zoom factor).
View = tuple[int, int, float, float]
# The shifts of train.views: shift4 (the image itself first) as the model builds them.
SHIFT4 = {f"shift{dr:+d},{dc:+d}": (dr, dc, 0.0, 1.0) for dr, dc in MODEL_VIEWS["shift4"]}
ID = "shift+0,+0"
ROTATIONS = {f"rot{a:+d}": (0, 0, float(a), 1.0) for a in (-10, -6, -3, 3, 6, 10)}
ZOOMS = {f"zoom{z}": (0, 0, 0.0, z) for z in (0.92, 1.08)}
VIEWS: dict[str, View] = SHIFT4 | ROTATIONS | ZOOMS
SETS: dict[str, list[str]] = {
    "none": [ID],
    "shift4 (train.views)": list(SHIFT4),
    **{f"rotations ±{a}°": [ID, f"rot+{a}", f"rot-{a}"] for a in (3, 6, 10)},
    **{f"shift4 + rotations ±{a}°": [*SHIFT4, f"rot+{a}", f"rot-{a}"] for a in (3, 6, 10)},
    "zooms 0.92, 1.08": [ID, *ZOOMS],
    "shift4 + zooms": [*SHIFT4, *ZOOMS],
    "shift4 + rotations ±6° + zooms": [*SHIFT4, "rot+6", "rot-6", *ZOOMS],
}


def resample(images: np.ndarray, view: View) -> np.ndarray:
    """``images`` (m, h, w) moved, rotated and zoomed about their centre (bilinear, 0 outside)."""
    dr, dc, degrees, zoom = view
    m, h, w = images.shape
    r, c = np.mgrid[:h, :w].astype(np.float32)
    r = (r - (h - 1) / 2) / zoom
    c = (c - (w - 1) / 2) / zoom
    cos, sin = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    rows, cols = aug.source_coordinates(r, c, cos, sin, dr, dc, (h, w))
    return aug.bilinear(images, *(np.broadcast_to(a, (m, h, w)) for a in (rows, cols)))


def main() -> None:
    """Log each model's hold-out accuracy for every set of views, and the mean over models."""
    configure()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trials", nargs="+", help="trial names (their .pkl files in --dir)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--preset", default="best", help="the trials' encode settings")
    args = parser.parse_args()
    cfg = validate(
        apply_preset(load_params(REPO / "params.yaml"), preset_overrides(args.preset, []))
    )
    x, y = load_split("train")
    if cfg.encode.deskew:
        x = aug.deskew(x, cfg.encode.workers)
    encoding = Encoding.fit(flatten(x[:-N_VAL]), cfg.encode.scaling, cfg.encode.deskew)
    x_val, y_val = x[-N_VAL:], y[-N_VAL:]
    models = {
        name: model_from_bytes((args.dir / f"{name}.pkl").read_bytes(), f"{name}.pkl")
        for name in args.trials
    }
    log_probs = {
        (name, view): np.log(np.maximum(model.predict_proba(rows), np.finfo(np.float64).tiny))
        for view, spec in VIEWS.items()
        for rows in [encoding.scale(flatten(resample(x_val, spec)))]
        for name, model in models.items()
    }
    lines = [
        f"| views | {' | '.join(args.trials)} | mean |",
        f"|---|{'---|' * len(args.trials)}---|",
    ]
    for label, views in SETS.items():
        accuracy = [
            float(np.mean(np.mean([log_probs[name, v] for v in views], axis=0).argmax(1) == y_val))
            for name in args.trials
        ]
        cells = " | ".join(f"{100 * a:.2f}%" for a in accuracy)
        lines.append(f"| {label} | {cells} | {100 * np.mean(accuracy):.3f}% |")
    log.info("hold-out accuracy per set of views:\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
