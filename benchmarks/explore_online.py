"""Explore online augmentation on the validation split, through the train stage's
own code (:func:`mnistflow.modeling.training.fit` with ``train.online_augment``).

The last 10,000 training images are the validation set (deskewed when the trial deskews,
never distorted); every epoch trains on fresh distortions of the first 50,000, prepared on a
second process. Hold-out accuracy is recorded after every epoch, so one trial of E epochs
also shows what fewer epochs reached (with the same learning-rate schedule). A trial is a
preset (``presets/<name>.yaml``) plus ``--set key=value`` overrides; nothing reads the test set.

Usage (from the repository root)::

    python benchmarks/explore_online.py --set train.max_iter=30 --name e30
    python benchmarks/explore_online.py --table docs/explore_online.md

Each trial is one JSON line in ``--log``; ``--table`` renders them as markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from explore_best import N_VAL, load_split  # benchmarks/explore_best.py
from mnistflow.config import load_params, section, validate
from mnistflow.data import augment as aug
from mnistflow.data.encode import Encoding, encode_labels, flatten
from mnistflow.data.online import OnlineData
from mnistflow.experiments.presets import apply_preset
from mnistflow.modeling.model import VIEWS, build_members, merge_members, with_views
from mnistflow.modeling.training import Holdout, fit_online, model_bytes, score_holdout
from mnistflow.util.logs import configure
from pipeline import preset_overrides  # benchmarks/pipeline.py

import numpy as np
from threadpoolctl import threadpool_limits

log = logging.getLogger("explore_online")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_LOG = Path(tempfile.gettempdir()) / "explore_online" / "trials.jsonl"
N_CLASSES = 10  # MNIST: the trials read ../shared/mnist (explore_best.load_split)
# The settings a trial row shows (dotted params keys).
SHOWN = (
    "train.hidden_layer_sizes",
    "train.solver",
    "train.momentum",
    "train.max_iter",
    "train.learning_rate_init",
    "train.lr_decay",
    "train.batch_size",
    "train.alpha",
    "train.members",
    "encode.labels",
    "encode.augment.max_shift",
    "encode.augment.max_rotation",
    "encode.augment.elastic_alpha",
    "encode.augment.elastic_sigma",
    "encode.augment.seed",
    "train.random_state",
)


def view_probabilities(
    model: Any, encoding: Encoding, shape: tuple[int, int], X: np.ndarray
) -> dict[str, np.ndarray]:
    """Class probabilities of the hold-out rows through ``model`` with each set of test-time
    :data:`~mnistflow.modeling.model.VIEWS` (``none``: the images alone), as ``train.views``
    builds them."""
    blank = encoding.blank(shape[0] * shape[1])
    return {name: with_views(model, name, shape, blank).predict_proba(X) for name in VIEWS}


def accuracies(probs: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Accuracy of the argmax of each set of probabilities."""
    return {name: float(np.mean(np.argmax(p, axis=1) == y)) for name, p in probs.items()}


class WeightAverages:
    """Running means of a model's weights over the last ``k`` epochs, for each ``k``."""

    def __init__(self, epochs: int, ks: list[int]) -> None:
        self.epochs, self.ks = epochs, [k for k in ks if 0 < k <= epochs]
        self.sums: dict[int, list[np.ndarray]] = {}
        self.counts: dict[int, int] = {}  # epochs added to each mean (fewer if the fit stopped)

    def add(self, epoch: int, model: Any) -> None:
        """Add ``model``'s weights at the end of ``epoch`` to every mean that has started."""
        weights = [*model.coefs_, *model.intercepts_]
        for k in self.ks:
            if epoch > self.epochs - k:
                if k in self.sums:
                    for total, w in zip(self.sums[k], weights, strict=True):
                        total += w
                else:
                    self.sums[k] = [w.astype(np.float64) for w in weights]
                self.counts[k] = self.counts.get(k, 0) + 1

    def accuracies(self, model: Any, holdout: Holdout) -> dict[str, float]:
        """Hold-out accuracy of each mean (``mean<k>``) that has started (over the epochs it
        got, if the fit stopped early), put in ``model``; the model is restored."""
        keep = [w.copy() for w in model.coefs_], [w.copy() for w in model.intercepts_]
        n_layers = len(keep[0])
        out = {}
        for k, total in self.sums.items():
            mean = [(t / self.counts[k]).astype(keep[0][0].dtype) for t in total]
            model.coefs_, model.intercepts_ = mean[:n_layers], mean[n_layers:]
            out[f"mean{k}"] = score_holdout(self.model, holdout)
        model.coefs_, model.intercepts_ = keep
        return out


def run_trial(params: dict[str, Any], probs_file: Path, averages: list[int]) -> dict[str, Any]:
    """Fit on fresh distortions of 50k images every epoch; validation accuracy per epoch.
    The final model's hold-out probabilities (per view set) are saved in ``probs_file``,
    for committees of trials (``--committee``), and the model itself beside it (``.pkl``, to
    score other test-time views later); with ``averages``, also the hold-out accuracy of
    the weights averaged over each number of last epochs."""
    cfg = validate(params)
    train = cfg.train.model_copy(update={"early_stopping": False})  # validation is ours
    x, y = load_split("train")
    t0 = time.perf_counter()
    if cfg.encode.deskew:
        x = aug.deskew(x, cfg.encode.workers)
    deskew_s = time.perf_counter() - t0
    x_fit, y_fit, x_val, y_val = x[:-N_VAL], y[:-N_VAL], x[-N_VAL:], y[-N_VAL:]
    encoding = Encoding.fit(flatten(x_fit), cfg.encode.scaling, cfg.encode.deskew)
    X, X_val = encoding.scale(flatten(x_fit)), encoding.scale(flatten(x_val))
    target = encode_labels(y_fit, cfg.encode.labels, N_CLASSES)
    online = OnlineData(encoding, x.shape[1:], cfg.encode.augment)
    holdout = Holdout(X_val, y_val.astype(np.int64), N_CLASSES)
    members = build_members(train)
    means = WeightAverages(train.max_iter, averages)
    holdout_accuracy: list[float] = []
    epoch_times: list[float] = []

    def on_epoch(epoch: int, loss: float, early_stop_score: float | None) -> bool:
        model = merge_members(members)
        holdout_accuracy.append(score_holdout(model, holdout))
        means.add(epoch, model)
        log.info("epoch %d loss %.5f val %.4f", epoch, loss, holdout_accuracy[-1])
        return False

    start = time.perf_counter()
    with threadpool_limits(limits=train.threads):
        fit_online(members, train, X, target, online, on_epoch, epoch_times)
    fit_s = time.perf_counter() - start
    model = merge_members(members)
    probs_file.parent.mkdir(parents=True, exist_ok=True)
    probs_file.with_suffix(".pkl").write_bytes(model_bytes(model))
    return {
        "holdout_accuracy": holdout_accuracy,
        "weight_means": means.accuracies(model, holdout),
        "views": save_probabilities(
            probs_file, view_probabilities(model, encoding, x.shape[1:], X_val), y_val
        ),
        "epoch_times": epoch_times,
        "deskew_s": deskew_s,
        "fit_s": fit_s,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def save_probabilities(path: Path, probs: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Write the probabilities and labels to ``path`` (.npz); return their accuracies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, y=y, **probs)
    return accuracies(probs, y)


def committee(paths: list[Path]) -> dict[str, float]:
    """Hold-out accuracy of the trials' probabilities averaged (per view set)."""
    loaded = [np.load(p) for p in paths]
    y = loaded[0]["y"]
    names = [n for n in loaded[0].files if n != "y"]
    return accuracies({n: sum(d[n] for d in loaded) / len(loaded) for n in names}, y)


def describe(s: dict[str, Any]) -> str:
    """Short text of a trial's settings (dotted keys as in :data:`SHOWN`)."""
    a = "encode.augment."
    net = "x".join(map(str, s["train.hidden_layer_sizes"]))
    members = s.get("train.members", 1)  # rows logged before committees have no such key
    parts = [
        f"{members} x ({net}) merged" if members > 1 else net,
        f"shift ±{s[a + 'max_shift']}, rot ±{s[a + 'max_rotation']:g}°, "
        f"elastic alpha={s[a + 'elastic_alpha']:g} sigma={s[a + 'elastic_sigma']:g}",
        # rows logged before the solver was shown are adam's
        f"{_solver(s.get('train.solver', 'adam'), s.get('train.momentum'))} "
        f"lr {s['train.learning_rate_init']:g} x {s['train.lr_decay']:g}/epoch",
        f"batch {s['train.batch_size']}, L2 {s['train.alpha']:g}",
        f"{s['encode.labels']} targets",
    ]
    if "encode.augment.seed" in s:  # rows logged before the seeds were shown have neither
        parts.append(f"seeds {s['encode.augment.seed']}/{s['train.random_state']}")
    return "; ".join(parts)


def _solver(solver: str, momentum: float | None) -> str:
    return f"sgd (momentum {momentum:g})" if solver == "sgd" else solver


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per trial, best and last validation accuracy and time per epoch."""
    lines = [
        "| trial | settings | val at epoch 20 | best val (epoch) | last val | epochs | "
        "shifted views 4 / 8 | weights averaged over the last 10 / 20 / 40 epochs | s/epoch | "
        "load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = r["holdout_accuracy"]
        best = int(np.argmax(acc))
        at20 = f"{100 * acc[19]:.2f}%" if len(acc) >= 20 else ""
        views = r.get("views", {})
        shifted_views = (
            f"{100 * views['shift4']:.2f}% / {100 * views['shift8']:.2f}%" if views else ""
        )
        means = r.get("weight_means") or {}
        averaged = " / ".join(
            f"{100 * means[f'mean{k}']:.2f}%" if f"mean{k}" in means else "-" for k in (10, 20, 40)
        )
        lines.append(
            f"| {r['name']} | {describe(r['settings'])} | {at20} | "
            f"{100 * acc[best]:.2f}% ({best + 1}) | {100 * acc[-1]:.2f}% | {len(acc)} | "
            f"{shifted_views} | {averaged if means else ''} | {r['fit_s'] / len(acc):.1f} | "
            f"{r['load1']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Command line: run one trial and append it to the log, or render the table."""
    configure()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="best")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", help="trial name in the log (default: the overrides)")
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG)
    parser.add_argument(
        "--average", nargs="+", type=int, default=[], metavar="K",
        help="also score the weights averaged over the last K epochs",
    )  # fmt: skip
    parser.add_argument("--table", type=Path, help="write the markdown table of the log here")
    parser.add_argument(
        "--committee", nargs="+", metavar="NAME", help="accuracy of their mean probabilities"
    )
    args = parser.parse_args()
    if args.committee:
        found = committee([args.log.parent / f"{name}.npz" for name in args.committee])
        log.info("committee of %s: %s", ", ".join(args.committee), found)
    elif args.table is None:
        overrides = preset_overrides(args.preset, args.set)
        params = apply_preset(load_params(REPO / "params.yaml"), overrides)
        name = args.name or " ".join(args.set) or args.preset
        row = {
            "name": name,
            "settings": {key: section(params, key) for key in SHOWN},
            **run_trial(params, args.log.parent / f"{name}.npz", args.average),
            "load1": os.getloadavg()[0],
            "when": time.strftime("%Y-%m-%d %H:%M"),
        }
        acc = row["holdout_accuracy"]
        log.info(
            "%s: best val %.4f at epoch %d, last %.4f, fit %.0f s, maxrss %.0f MB, views %s, "
            "weight means %s",
            row["name"],
            max(acc),
            int(np.argmax(acc)) + 1,
            acc[-1],
            row["fit_s"],
            row["maxrss_mb"],
            row["views"],
            row["weight_means"],
        )
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with args.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    else:
        rows = [json.loads(line) for line in args.log.read_text().splitlines() if line]
        args.table.write_text(table(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
