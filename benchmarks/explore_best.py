"""Explore deskewing, augmentation and MLP settings on the real MNIST files.

Settings are chosen on a validation split only: the last 10,000 training images are held
out (deskewed like the test set when the trial deskews, never augmented) and the model is
fitted on the first 50,000 plus their augmented copies. The chosen setting is then fitted
once on all 60,000 (+ copies) and scored once on the test set (``--final``).

Usage (from the repository root)::

    python benchmarks/explore_best.py --list
    python benchmarks/explore_best.py --trials baseline,deskew      # appends to --log
    python benchmarks/explore_best.py --final NAME                  # test accuracy, once
    python benchmarks/explore_best.py --table table.md                  # markdown of the log

Each trial is one JSON line in ``--log``; ``--table`` renders them as markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import time
import warnings
from pathlib import Path
from typing import Any

from mnistflow.config import AugmentConfig
from mnistflow.data import augment as aug
from mnistflow.data.idx import IMAGES_MAGIC, LABELS_MAGIC, gunzip, parse_idx
from mnistflow.util.logs import configure

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

log = logging.getLogger("explore_best")

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "mnist"
N_VAL = 10_000

# The baseline of params.yaml; every trial is a set of overrides of it.
BASE: dict[str, Any] = {
    "deskew": False,
    "copies": 0,
    "max_shift": 2,
    "max_rotation": 0.0,
    "elastic_alpha": 0.0,
    "elastic_sigma": 4.0,
    "seed": 0,
    "hidden": (100, 50, 25),
    "epochs": 20,
    "batch_size": "auto",
    "lr": 0.001,
    "alpha": 0.0001,
    "labels": "onehot",
}
BIG = {"deskew": True, "hidden": (800,), "epochs": 12}
SHIFT3 = {**BIG, "copies": 3, "max_shift": 2}
ROT3 = {**SHIFT3, "max_rotation": 10.0}
EL3 = {**ROT3, "elastic_alpha": 34.0, "elastic_sigma": 4.0}
TRIALS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "deskew": {"deskew": True},
    "deskew-800": BIG,
    "shift3-800": SHIFT3,
    "rot3-800": ROT3,
    "elastic3-800": EL3,
    "elastic3-800-a20": {**EL3, "elastic_alpha": 20.0},
    "elastic3-800-a8s3": {**EL3, "elastic_alpha": 8.0, "elastic_sigma": 3.0},
    "rot5-800": {**ROT3, "copies": 5},
    "elastic5-800": {**EL3, "copies": 5},
    "elastic3-800-index": {**EL3, "labels": "index"},
    "elastic3-1000": {**EL3, "hidden": (1000,)},
    "elastic3-800x800": {**EL3, "hidden": (800, 800)},
    "elastic3-800-e20": {**EL3, "epochs": 20},
    "elastic3-800-b500": {**EL3, "batch_size": 500},
    "elastic3-800-lr5e-4": {**EL3, "lr": 0.0005},
    "elastic3-800-lr2e-3": {**EL3, "lr": 0.002},
    "elastic3-800-a1e-3": {**EL3, "alpha": 0.001},
}


def load_split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split (``train`` or ``t10k``) from the shared gz files."""
    images_name = f"{prefix}-images-idx3-ubyte.gz"
    labels_name = f"{prefix}-labels-idx1-ubyte.gz"
    x = parse_idx(
        gunzip((MNIST / images_name).read_bytes(), images_name), images_name, IMAGES_MAGIC
    )
    y = parse_idx(
        gunzip((MNIST / labels_name).read_bytes(), labels_name), labels_name, LABELS_MAGIC
    )
    return x, y


def features(
    s: dict[str, Any], x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, workers: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Deskew both parts, augment the fitting part only, scale x/255 in place."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if s["deskew"]:
        x_fit = aug.deskew(x_fit, workers)
        x_eval = aug.deskew(x_eval, workers)
    times["deskew_s"] = time.perf_counter() - t0
    cfg = AugmentConfig(
        copies=s["copies"],
        max_shift=s["max_shift"],
        max_rotation=s["max_rotation"],
        elastic_alpha=s["elastic_alpha"],
        elastic_sigma=s["elastic_sigma"],
        seed=s["seed"],
    )
    t0 = time.perf_counter()
    X, y = aug.augment(x_fit, y_fit, cfg, workers)
    times["augment_s"] = time.perf_counter() - t0
    times["augment_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    X = X.reshape(len(X), -1)
    X /= 255.0  # in place: no second full-size copy
    X_eval = x_eval.reshape(len(x_eval), -1).astype(np.float32) / 255.0
    return X, y, X_eval, times


def fit_score(
    s: dict[str, Any], X: np.ndarray, y: np.ndarray, X_eval: np.ndarray, y_eval: np.ndarray
) -> dict[str, Any]:
    """Fit the MLP as the train stage would and return argmax accuracy and times."""
    model = MLPClassifier(
        hidden_layer_sizes=tuple(s["hidden"]),
        activation="relu",
        solver="adam",
        alpha=s["alpha"],
        batch_size=s["batch_size"],
        learning_rate="adaptive",
        learning_rate_init=s["lr"],
        max_iter=s["epochs"],
        shuffle=True,
        tol=0.0001,
        early_stopping=False,
        n_iter_no_change=10,
        random_state=42,
    )
    target = np.eye(10, dtype=np.float32)[y] if s["labels"] == "onehot" else y.astype(np.int64)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, target)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    scores = model.predict_proba(X_eval)
    accuracy = float((scores.argmax(axis=1) == y_eval).mean())
    return {
        "accuracy": accuracy,
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,
        "n_iter": int(model.n_iter_),
        "final_loss": float(model.loss_),
    }


def run_trial(name: str, final: bool, workers: int) -> dict[str, Any]:
    """One trial: validation (default) or the final fit on all 60k scored on the test set."""
    s = {**BASE, **TRIALS[name]}
    x_train, y_train = load_split("train")
    if final:
        x_eval, y_eval = load_split("t10k")
        x_fit, y_fit = x_train, y_train
    else:
        x_fit, y_fit = x_train[:-N_VAL], y_train[:-N_VAL]
        x_eval, y_eval = x_train[-N_VAL:], y_train[-N_VAL:]
    t_start = time.perf_counter()
    X, y, X_eval, times = features(s, x_fit, y_fit, x_eval, workers)
    log.info("%s: %d training rows, fitting", name, len(X))
    result = fit_score(s, X, y, X_eval, y_eval)
    return {
        "name": name,
        "split": "test" if final else "val",
        "settings": s,
        "n_fit": len(X),
        **times,
        **result,
        "total_s": time.perf_counter() - t_start,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load1": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }


def describe(s: dict[str, Any]) -> str:
    """Short text of the settings that differ from BASE."""
    parts = []
    if s["deskew"]:
        parts.append("deskew")
    if s["copies"]:
        aug_text = f"{s['copies']} copies (shift ±{s['max_shift']}"
        if s["max_rotation"]:
            aug_text += f", rot ±{s['max_rotation']:g}°"
        if s["elastic_alpha"]:
            aug_text += f", elastic alpha={s['elastic_alpha']:g} sigma={s['elastic_sigma']:g}"
        parts.append(aug_text + ")")
    parts.append("x".join(map(str, s["hidden"])))
    parts.append(f"{s['epochs']} ep")
    for key, label in (
        ("batch_size", "batch"),
        ("lr", "lr"),
        ("alpha", "L2"),
        ("labels", "targets"),
    ):
        if s[key] != BASE[key]:
            parts.append(f"{label} {s[key]}")
    return ", ".join(parts)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of logged trials (latest result per name and split, validation first)."""
    latest = {(r["name"], r["split"]): r for r in rows}
    ordered = sorted(latest.values(), key=lambda r: r["split"] == "test")
    lines = [
        "| trial | settings | split | accuracy | training rows | epochs | deskew+augment s | "
        "fit s (wall) | fit CPU s | BLAS threads | load avg at end |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ordered:
        s = {**BASE, **r["settings"]}
        lines.append(
            f"| {r['name']} | {describe(s)} | {r['split']} | {100 * r['accuracy']:.2f}% | "
            f"{r['n_fit']:,} | {r['n_iter']} | {r['deskew_s'] + r['augment_s']:.0f} | "
            f"{r['fit_s']:.0f} | {r['fit_cpu_s']:.0f} | {r.get('threads') or os.cpu_count()} | "
            f"{r['load1']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Command line: run trials, the final fit, or render the table."""
    configure()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", help="comma-separated trial names (validation split)")
    parser.add_argument("--final", help="one trial name: fit on all 60k, score the test set")
    parser.add_argument("--list", action="store_true", help="list the trials")
    parser.add_argument("--table", type=Path, help="write the markdown table to this file")
    parser.add_argument("--log", type=Path, default=Path("/tmp/explore_best/trials.jsonl"))
    parser.add_argument("--workers", type=int, default=2, help="processes for augmentation")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: all)")
    args = parser.parse_args()
    if args.list:
        for name, overrides in TRIALS.items():
            log.info("%-22s %s", name, describe({**BASE, **overrides}))
    names = [n for n in (args.trials or "").split(",") if n]
    unknown = [n for n in [*names, args.final] if n and n not in TRIALS]
    if unknown:
        parser.error(f"unknown trial(s) {unknown}; see --list")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    for name, final in [(n, False) for n in names] + ([(args.final, True)] if args.final else []):
        with threadpool_limits(args.threads):
            row = run_trial(name, final, args.workers)
        row["threads"] = args.threads or os.cpu_count()
        log.info(
            "%s [%s]: accuracy %.4f, fit %.0f s (cpu %.0f s), total %.0f s, maxrss %.0f MB",
            name,
            row["split"],
            row["accuracy"],
            row["fit_s"],
            row["fit_cpu_s"],
            row["total_s"],
            row["maxrss_mb"],
        )
        with args.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=list) + "\n")
    if args.table:
        rows = [json.loads(line) for line in args.log.read_text().splitlines() if line]
        machine = (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        args.table.write_text(
            f"# Exploration results ({time.strftime('%Y-%m-%d')}, {machine})\n\n{table(rows)}\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
