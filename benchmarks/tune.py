"""Tuning benchmark (`make bench-tune`): in-process trials on 1 and 2 workers, and TPE
against random search.

On real MNIST (the first --train training images, the first --test test images, written as a
dataset of their own into a throw-away copy of this working tree; by default all of them,
--validation of the training rows held out), --epochs epochs per fit, no pruning:

1. Throughput: `mnistflow tune --workers 1` (--trials-1 trials), then `--workers 2`
   (--trials-2 trials in all), both on the same four fixed configurations (:data:`FIXED`,
   enqueued in the study, cycled). Trials per hour from the study (first trial's start to the
   last one's end) and from the wall time of the whole command (start-up and data load
   included).
2. Fixed overhead per trial: each 1-worker trial's duration in Optuna minus its own fit time
   (``fit_time_s`` of its MLflow run, which includes scoring and reporting each epoch), and
   minus the bare fit of the same params in this process (encode unless the worker had that
   encoding cached, fit, score the validation rows: the same library calls, without Optuna
   and MLflow; measured later, so on a busy machine the load differs between the two).
3. Search quality, in-process (the same validation split and code as a trial, no pruning):
   the shipped samplers (``tuning.storage.sampler``: TPE and random) over the shipped
   tune.space, --seeds (default :data:`SEEDS`), --budget trials each. Per sampler and seed the best
   validation accuracy, the trial that first reached it and the best so far after
   :data:`CHECKPOINTS` trials; per sampler the mean, range and standard deviation of the best.
   A configuration proposed again is fitted once (:func:`run_search`).

Usage: python benchmarks/tune.py [--mirror DIR] [--train N] [--test N] [--epochs N] ...
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mnistflow.config import Params, load_params, tune_space, validate
from mnistflow.data.idx import encode_idx, gunzip, parse_idx
from mnistflow.tuning import objective, space, storage
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
    params["evaluate"]["baseline_accuracy"]["mnist-small"] = 0.97  # every dataset has one
    params["unpack"]["write_png"] = False
    params["train"]["max_iter"] = args.epochs
    params["tune"].update({"holdout_size": args.validation, "pruner": "none"})
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(["commit", "-q", "-am", "bench params"], ws)
    return ws


def study_trials(ws: Path, study: str) -> list:
    import optuna

    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{ws}/optuna.db")
    return [t for t in loaded.trials if t.state.name == "COMPLETE"]


def bare_fit(
    params: Params, overrides: dict, splits: objective.EncodedSplits
) -> tuple[float, float]:
    """Seconds and validation accuracy of one configuration in-process: encode (unless
    ``splits`` has it cached), fit, score: a trial's computation without Optuna or MLflow."""
    start = time.perf_counter()
    result = objective.fit_trial(objective.trial_params(params, overrides), splits)
    return time.perf_counter() - start, result.holdout_accuracy[-1]


def fresh_splits(params: Params, ws: Path) -> objective.EncodedSplits:
    """A worker's view of the data: the training rows, nothing encoded yet."""
    rows = objective.load_training_rows(ws / params.paths.arrays)
    return objective.EncodedSplits(rows, params.tune.holdout_size, len(params.dataset.classes))


def out(line: str = "") -> None:
    """One line of the result on stdout (a benchmark prints figures)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    """Run the three parts and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mirror", default=str(REPO.parent / "shared/mnist"))
    parser.add_argument("--train", type=int, default=60000, help="training images used")
    parser.add_argument("--test", type=int, default=10000, help="test images used")
    parser.add_argument("--validation", type=int, default=10000, help="tune.holdout_size")
    parser.add_argument("--epochs", type=int, default=10, help="train.max_iter")
    parser.add_argument("--trials-1", type=int, default=4, help="trials of the 1-worker study")
    parser.add_argument("--trials-2", type=int, default=8, help="trials of the 2-worker study")
    parser.add_argument("--budget", type=int, default=20, help="trials per sampler and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="part 3")
    parser.add_argument("--search-only", action="store_true", help="part 3 only")
    parser.add_argument("--workers-only", action="store_true", help="parts 1 and 2 only")
    args = parser.parse_args()
    env, dvc = bench_env(None)
    mnistflow = str(Path(sys.executable).parent / "mnistflow")
    out(f"load average before: {os.getloadavg()}")

    base = Path(tempfile.mkdtemp(prefix="mnistflow-bench-tune-"))
    files = small_mnist(Path(args.mirror), base / "mirror", args.train, args.test)
    env["MNISTFLOW_MIRROR"] = str(base / "mirror")  # the small dataset's files, nothing else
    ws = workspace(base, files, args)
    measure([*dvc, "repro", "unpack"], ws, env)
    params = validate(load_params(ws / "params.yaml"))
    if not args.search_only:
        worker_parts(ws, env, mnistflow, params, args)
    if not args.workers_only:
        search(params, ws, args)
    out(f"\nload average after: {os.getloadavg()}; workspace {base} (remove by hand)")


def study_span(trials: list) -> float:
    """Seconds from the first trial's start to the last trial's end."""
    start = min(t.datetime_start for t in trials)
    return (max(t.datetime_complete for t in trials) - start).total_seconds()


# The configurations both throughput studies run (enqueued, so 1 and 2 workers fit the same
# work: a sampled study's trial times vary tenfold with layer and batch sizes).
FIXED = [
    {"train.alpha": 1e-4, "train.learning_rate_init": 1e-3, "train.batch_size": 128,
     "train.hidden_layer_sizes": "[100, 50, 25]", "encode.scaling": "divide255"},
    {"train.alpha": 1e-5, "train.learning_rate_init": 3e-3, "train.batch_size": 256,
     "train.hidden_layer_sizes": "[256, 128]", "encode.scaling": "standardize"},
    {"train.alpha": 1e-3, "train.learning_rate_init": 1e-3, "train.batch_size": 64,
     "train.hidden_layer_sizes": "[100, 50, 25]", "encode.scaling": "standardize"},
    {"train.alpha": 3e-5, "train.learning_rate_init": 2e-3, "train.batch_size": 512,
     "train.hidden_layer_sizes": "[512]", "encode.scaling": "divide255"},
]  # fmt: skip


def enqueue(ws: Path, study: str, trials: int) -> None:
    """Create ``study`` with the first ``trials`` of :data:`FIXED` (cycled) waiting."""
    import optuna

    created = optuna.create_study(
        study_name=study, storage=f"sqlite:///{ws}/optuna.db", direction="maximize"
    )
    for i in range(trials):
        created.enqueue_trial(FIXED[i % len(FIXED)])


def worker_parts(ws: Path, env: dict, mnistflow: str, params: Params, args) -> None:
    """Parts 1 and 2: in-process trials on 1 and 2 workers, overhead per trial."""
    rows_out = []
    for study, workers, trials in (("w1", 1, args.trials_1), ("w2", 2, args.trials_2)):
        enqueue(ws, study, trials)
        cmd = [mnistflow, "tune", "--study", study, "--workers", str(workers),
               "--trials", str(trials // workers)]  # fmt: skip
        wall = measure(cmd, ws, env).seconds
        done = study_trials(ws, study)
        span = study_span(done)
        rows_out.append((workers, len(done), span, wall, os.getloadavg()[0]))

    # 2. overhead per trial: outside the fit (the trial's own fit_time_s, measured in the
    # same process at the same moment), and against the bare fit of the same params in the
    # worker's order (so the same encodings are cached)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws}/mlflow.db")
    splits = fresh_splits(params, ws)
    overheads = []
    for t in sorted(study_trials(ws, "w1"), key=lambda t: t.number):
        took = (t.datetime_complete - t.datetime_start).total_seconds()
        fitted = client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics["fit_time_s"]
        bare, acc = bare_fit(params, t.user_attrs["overrides"], splits)
        overheads.append((t.number, took, fitted, took - fitted, bare, took - bare, t.value, acc))

    out(f"\n## In-process trials ({args.train} train rows, {args.validation} held out, "
        f"{args.epochs} epochs, no pruning)\n")  # fmt: skip
    out("| workers | trials | study s | trials/hour (study) | wall s | trials/hour (wall) "
        "| load avg (1 min) after |")  # fmt: skip
    out("|---|---|---|---|---|---|---|")
    for workers, n, span, wall, load in rows_out:
        out(f"| {workers} | {n} | {span:.1f} | {n / span * 3600:.0f} | {wall:.1f} | "
            f"{n / wall * 3600:.0f} | {load:.2f} |")  # fmt: skip
    out("\n| trial | trial s | its fit s | outside the fit s | bare fit s | trial - bare s "
        "| trial val_acc | bare val_acc |")  # fmt: skip
    out("|---|---|---|---|---|---|---|---|")
    for number, took, fitted, outside, bare, over, value, acc in overheads:
        out(f"| {number} | {took:.1f} | {fitted:.1f} | {outside:.2f} | {bare:.1f} | {over:.2f} "
            f"| {value:.4f} | {acc:.4f} |")  # fmt: skip


SAMPLERS = ("tpe", "random")
SEEDS = (0, 1, 2)
CHECKPOINTS = (5, 10, 20)  # best-so-far after this many trials (those within --budget)


def run_search(
    params: Params,
    splits: objective.EncodedSplits,
    kind: str,
    seed: int,
    budget: int,
    scores: dict[str, float],
) -> list[float]:
    """Hold-out accuracy of each of ``budget`` trials, in order, that the shipped sampler
    ``kind`` (``storage.sampler``, seeded with ``seed``) proposes over tune.space.

    A configuration already in ``scores`` (by its overrides) is not fitted again: the fit is
    deterministic, and TPE's first trials are the random sampler's draws for the same seed
    (Optuna's ``n_startup_trials``), so both samplers start with the same configurations."""
    import optuna

    dims = tune_space(params.raw)
    cfg = params.tune.model_copy(update={"sampler": kind})
    study = optuna.create_study(direction="maximize", sampler=storage.sampler(cfg, seed))
    values = []
    for _ in range(budget):
        trial = study.ask()
        over = space.suggest(trial, dims)
        key = json.dumps(over, sort_keys=True)
        if key not in scores:
            scores[key] = bare_fit(params, over, splits)[1]
        values.append(scores[key])
        study.tell(trial, values[-1])
    return values


def best_so_far(values: list[float]) -> list[float]:
    """The running maximum of ``values``."""
    return [max(values[: i + 1]) for i in range(len(values))]


def search(params: Params, ws: Path, args: argparse.Namespace) -> None:
    """Part 3: TPE against random search, --budget trials per sampler and seed, in-process."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    splits = fresh_splits(params, ws)
    runs: dict[str, dict[int, list[float]]] = {kind: {} for kind in SAMPLERS}
    scores: dict[str, float] = {}  # overrides -> holdout_accuracy, each configuration fitted once
    for seed in args.seeds:
        for kind in SAMPLERS:
            start = time.perf_counter()
            runs[kind][seed] = run_search(params, splits, kind, seed, args.budget, scores)
            took = time.perf_counter() - start
            out(f"{kind} seed {seed}: {took:.0f} s, {len(scores)} configurations fitted so far, "
                f"load average {os.getloadavg()[0]:.2f}, holdout_accuracy per trial "
                + " ".join(f"{v:.4f}" for v in runs[kind][seed]))  # fmt: skip
    out(
        f"\n## Search: TPE against random, {args.budget} trials per sampler and seed "
        f"(in-process fits, {args.epochs} epochs, {args.validation} held-out rows, tune.space)\n"
    )
    search_tables(runs)


def search_tables(runs: dict[str, dict[int, list[float]]]) -> None:
    """The tables of part 3 from each sampler's validation accuracies per seed, in trial order
    (the per-seed lines of a run hold them too, lossless: accuracies on 10,000 rows)."""
    budget = len(next(iter(next(iter(runs.values())).values())))
    checkpoints = [c for c in CHECKPOINTS if c < budget]  # the best column is at the budget
    out("| sampler | seed | best holdout_accuracy | first reached at trial (1-based) | "
        + " | ".join(f"best after {c}" for c in checkpoints) + " |")  # fmt: skip
    out("|---|---|---|---|" + "---|" * len(checkpoints))
    for kind, per_seed in runs.items():
        for seed, values in per_seed.items():
            running = best_so_far(values)
            out(f"| {kind} | {seed} | {running[-1]:.4f} | {values.index(running[-1]) + 1} | "
                + " | ".join(f"{running[c - 1]:.4f}" for c in checkpoints) + " |")  # fmt: skip
    out("\n| sampler | mean best | min-max best | std best | "
        + " | ".join(f"mean best after {c}" for c in checkpoints) + " |")  # fmt: skip
    out("|---|---|---|---|" + "---|" * len(checkpoints))
    for kind, per_seed in runs.items():
        best = np.array([max(values) for values in per_seed.values()])
        after = [np.mean([best_so_far(v)[c - 1] for v in per_seed.values()]) for c in checkpoints]
        std = f"{best.std(ddof=1):.4f}" if len(best) > 1 else "-"
        out(f"| {kind} | {best.mean():.4f} | {best.min():.4f}-{best.max():.4f} | {std} | "
            + " | ".join(f"{a:.4f}" for a in after) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
