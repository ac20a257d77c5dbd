"""Tuning benchmark (`make bench-tune`): trials as DVC experiments, and TPE against a grid.

On a reduced real MNIST (the first --train training images, the first --test test images,
written as a dataset of their own into a throw-away copy of this working tree):

1. Throughput: `mnistflow tune` with 1 worker (--trials-1 trials) and then 2 workers in the
   same clone (--trials-2 trials); each trial is a `dvc exp run --temp`. Trials per hour from
   the wall time of the whole command (worker start-up included).
2. Fixed overhead per trial: each 1-worker trial's duration in Optuna minus the bare fit of
   the same params (in this process: encode the same rows, fit, score the validation rows).
3. Search quality, in-process (no DVC, the same validation split and code as a trial): best
   validation accuracy of --budget TPE trials over the shipped tune.space against --budget
   points of the README's grid (train.alpha x train.hidden_layer_sizes (100,50,25)/(256,128),
   the alpha axis refined to budget/2 log-spaced values over tune.space's alpha range).

Usage: python benchmarks/tune.py [--mirror DIR] [--train N] [--test N] [--epochs N] ...
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnistflow.config import (
    EncodeConfig,
    TrainConfig,
    config,
    load_params,
    tune_space,
    validate,
    with_overrides,
)
from mnistflow.data.encode import encode_splits, split_validation
from mnistflow.data.idx import encode_idx, gunzip, parse_idx
from mnistflow.modeling.metrics import true_classes
from mnistflow.modeling.training import Validation, fit
from mnistflow.tuning import space
from mnistflow.util.git import git
from mnistflow.util.workspace import copy_working_tree
from pipeline import REPO, bench_env, measure  # benchmarks/pipeline.py

import numpy as np
import yaml

FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", 2051),
    "train_labels": ("train-labels-idx1-ubyte.gz", 2049),
    "test_images": ("t10k-images-idx3-ubyte.gz", 2051),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", 2049),
}


def small_mnist(mirror: Path, out: Path, n_train: int, n_test: int) -> dict:
    """The first rows of the real files as a new IDX dataset in ``out``; its ``files:``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, (name, magic) in FILES.items():
        array = parse_idx(gunzip((mirror / name).read_bytes(), name), name, magic)
        raw = encode_idx(array[: n_train if role.startswith("train") else n_test])
        (out / name).write_bytes(gzip.compress(raw, mtime=0))
        files[role] = {"name": name, "sha256": hashlib.sha256(raw).hexdigest()}
    return files


def workspace(base: Path, files: dict, args: argparse.Namespace) -> Path:
    """A copy of this tree on the small dataset, tune settings for the benchmark."""
    ws = copy_working_tree(REPO, base / "ws")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["datasets"]["mnist-small"] = {
        "mirrors": [],
        "classes": [str(i) for i in range(10)],
        "files": files,
    }
    params["data"]["dataset"] = "mnist-small"
    params["unpack"]["write_png"] = False
    params["train"]["max_iter"] = args.epochs
    params["tune"].update({"validation_size": args.validation, "pruner": "none"})
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(["commit", "-q", "-am", "bench params"], ws)
    return ws


def study_trials(ws: Path, study: str) -> list:
    import optuna

    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{ws}/optuna.db")
    return [t for t in loaded.trials if t.state.name == "COMPLETE"]


def bare_fit(params: dict, overrides: dict, arrays: dict, validation: int) -> tuple[float, float]:
    """Seconds and validation accuracy of encode + fit + score of one configuration in-process
    (what a trial's stages compute, without DVC, MLflow or process start-up)."""
    edited = with_overrides(params, overrides)
    train_cfg = config(edited, "train", TrainConfig)
    encode_cfg = config(edited, "encode", EncodeConfig)
    start = time.perf_counter()
    encoded = encode_splits(split_validation(arrays, validation), encode_cfg, 10)
    held = Validation(encoded.X_test, true_classes(encoded.y_test), 10)
    result = fit(train_cfg, encoded.X_train, encoded.y_train, validation=held)
    return time.perf_counter() - start, result.val_accuracy[-1]


def out(line: str = "") -> None:
    """One line of the result on stdout (a benchmark prints figures)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    """Run the three parts and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mirror", default=str(REPO.parent / "shared/mnist"))
    parser.add_argument("--train", type=int, default=6000, help="training images used")
    parser.add_argument("--test", type=int, default=1000, help="test images used")
    parser.add_argument("--validation", type=int, default=1000, help="tune.validation_size")
    parser.add_argument("--epochs", type=int, default=10, help="train.max_iter")
    parser.add_argument("--trials-1", type=int, default=3, help="trials of the 1-worker study")
    parser.add_argument("--trials-2", type=int, default=4, help="trials of the 2-worker study")
    parser.add_argument("--budget", type=int, default=20, help="TPE trials = grid points")
    parser.add_argument("--search-only", action="store_true", help="part 3 only (no DVC)")
    parser.add_argument("--dvc-only", action="store_true", help="parts 1 and 2 only")
    args = parser.parse_args()
    env, dvc = bench_env(None)
    mnistflow = str(Path(sys.executable).parent / "mnistflow")
    out(f"load average before: {os.getloadavg()}")

    base = Path(tempfile.mkdtemp(prefix="mnistflow-bench-tune-"))
    files = small_mnist(Path(args.mirror), base / "mirror", args.train, args.test)
    env["MNISTFLOW_MIRROR"] = str(base / "mirror")  # the small dataset's files, nothing else
    ws = workspace(base, files, args)
    measure([*dvc, "repro", "unpack"], ws, env)
    params = load_params(ws / "params.yaml")
    validate(params)

    from mnistflow.util.fileio import load_npz

    arrays = load_npz(ws / "data/unpacked/arrays.npz")
    if not args.search_only:
        dvc_parts(ws, env, mnistflow, params, arrays, args)
    if not args.dvc_only:
        search(params, arrays, args)
    out(f"\nload average after: {os.getloadavg()}; workspace {base} (remove by hand)")


def dvc_parts(ws: Path, env: dict, mnistflow: str, params: dict, arrays: dict, args) -> None:
    """Parts 1 and 2: trials as DVC experiments on 1 and 2 workers, overhead per trial."""
    n1, n2 = args.trials_1, args.trials_2
    one = measure([mnistflow, "tune", "--study", "w1", "--trials", str(n1)], ws, env).seconds
    load_one = os.getloadavg()[0]
    cmd = [mnistflow, "tune", "--study", "w2"]
    start = time.perf_counter()
    pair = [
        subprocess.Popen([*cmd, "--trials", str(n2 // 2)], cwd=ws, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]  # fmt: skip
    codes = [p.wait() for p in pair]
    two = time.perf_counter() - start
    load_two = os.getloadavg()[0]
    if codes != [0, 0]:
        raise SystemExit(f"2-worker study failed: {codes}")

    # 2. overhead per trial against the bare fit of the same params
    rows = []
    for t in study_trials(ws, "w1"):
        took = (t.datetime_complete - t.datetime_start).total_seconds()
        bare, acc = bare_fit(params, t.user_attrs["overrides"], arrays, args.validation)
        rows.append((t.number, took, bare, took - bare, t.value, acc))

    out(f"\n## Trials as DVC experiments ({args.train} train rows, {args.validation} held out, "
          f"{args.epochs} epochs)\n")  # fmt: skip
    out("| workers | trials | wall s | trials/hour | load avg (1 min) after |")
    out("|---|---|---|---|---|")
    out(f"| 1 | {n1} | {one:.1f} | {n1 / one * 3600:.0f} | {load_one:.2f} |")
    out(f"| 2 | {n2} | {two:.1f} | {n2 / two * 3600:.0f} | {load_two:.2f} |")
    out("\n| trial | trial s | bare fit s | overhead s | trial val_acc | bare val_acc |")
    out("|---|---|---|---|---|---|")
    for number, took, bare, over, value, acc in rows:
        out(f"| {number} | {took:.1f} | {bare:.1f} | {over:.1f} | {value:.4f} | {acc:.4f} |")


def search(params: dict, arrays: dict, args: argparse.Namespace) -> None:
    """Part 3: TPE against the README's grid, same budget, in-process."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dims = tune_space(params)
    alpha = params["tune"]["space"]["train.alpha"]
    alphas = np.geomspace(alpha["low"], alpha["high"], args.budget // 2)
    grid = [
        {"train.alpha": float(a), "train.hidden_layer_sizes": layers}
        for a in alphas
        for layers in ([100, 50, 25], [256, 128])
    ]
    start = time.perf_counter()
    grid_scores = [bare_fit(params, g, arrays, args.validation)[1] for g in grid]
    grid_s = time.perf_counter() - start
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    start = time.perf_counter()
    for _ in range(args.budget):
        trial = study.ask()
        over = space.suggest(trial, dims)
        study.tell(trial, bare_fit(params, over, arrays, args.validation)[1])
    tpe_s = time.perf_counter() - start
    best_grid = int(np.argmax(grid_scores))
    out(f"\n## Search, {args.budget} configurations each (in-process fits, same split)\n")
    out("| search | best val_accuracy | best params | fits s |")
    out("|---|---|---|---|")
    out(f"| grid (README axes) | {grid_scores[best_grid]:.4f} | {grid[best_grid]} | {grid_s:.0f} |")
    out(f"| TPE (tune.space, seed 0) | {study.best_value:.4f} | "
          f"{space.overrides(dims, study.best_params)} | {tpe_s:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
