"""Time a preset (default presets/best.yaml) end to end in a throw-away copy of the repo.

Prints test accuracy, fit time, total `dvc repro` time (all five stages, cold), the peak
memory of the largest stage process and the load average; for an online-augmentation preset
(presets/best.yaml) also the epochs and the mean time per epoch, and the best
validation score when the preset holds rows out. ``--seeds 0 1 2`` runs it once per seed
offset (the distortions' and the initial weights' seeds moved together; 0 is the preset)
and prints the mean and spread of test accuracy. Usage: python benchmarks/best.py
[--preset NAME] [--set KEY=VALUE ...] [--seeds OFFSET ...] [--mirror DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from mnistflow.config import load_params
from mnistflow.experiments.presets import apply_preset
from mnistflow.tracking.record import EARLY_STOP_SCORE, ELAPSED
from mnistflow.util.workspace import copy_working_tree
from pipeline import REPO, bench_env, measure, preset_overrides  # benchmarks/pipeline.py

import yaml
from mlflow.tracking import MlflowClient

# preset -> (accuracy, cold pipeline time, peak RSS) targets: for best (online augmentation)
# and for the fixed copies it replaced
TARGETS = {
    "best": (">= 0.995", "<= 600 s", "<= 1024 MB"),
    "copies": (">= 0.99", "<= 600 s", "<= 4096 MB"),
}


def run_preset(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """One cold `dvc repro` of the preset with ``overrides`` in a throw-away copy: its
    figures (the keys of :func:`table_rows`)."""
    tmp = Path(tempfile.mkdtemp(prefix="mnistflow-best-"))
    ws = copy_working_tree(REPO, tmp / "ws")
    params = apply_preset(load_params(ws / "params.yaml"), overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env, dvc = bench_env(args.mirror)

    load_before = os.getloadavg()[0]
    run = measure([*dvc, "repro"], ws, env)
    load_after = os.getloadavg()[0]
    metrics = json.loads((ws / "outputs/evaluate/metrics.json").read_text())
    # The fit time is per run by nature: it is in the MLflow run, not in the DVC outputs.
    run_id = json.loads((ws / "outputs/train/run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    out = {
        "accuracy": metrics["test_accuracy"],
        "exact": metrics["test_accuracy_exact_match"],
        "fit_s": client.get_run(run_id).data.metrics["fit_time_s"],
        "total_s": run.seconds,
        "peak_mb": run.peak_mb,
        "load": (load_before, load_after),
    }
    elapsed = client.get_metric_history(run_id, ELAPSED)  # timed epochs: online mode
    if elapsed:
        last = max(elapsed, key=lambda m: m.step)
        out["epochs"] = (last.step, last.value / last.step)
    scores = [m.value for m in client.get_metric_history(run_id, EARLY_STOP_SCORE)]
    if scores:
        out["early_stop_best"] = max(scores)
    if not args.keep:
        shutil.rmtree(tmp)
    return out


def table_rows(preset: str, r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One run's figures with the preset's targets, as (measure, value, target) rows."""
    accuracy, total, memory = TARGETS.get(preset, ("", "", ""))
    rows = [
        ("preset", preset, ""),
        ("test accuracy (argmax, headline)", f"{r['accuracy']:.4f}", accuracy),
        ("exact-match accuracy", f"{r['exact']:.4f}", ""),
        ("fit time", f"{r['fit_s']:.0f} s", ""),
        ("total cold `dvc repro` (5 stages)", f"{r['total_s']:.0f} s", total),
        ("peak RSS of the largest stage process", f"{r['peak_mb']:.0f} MB", memory),
    ]
    if "epochs" in r:
        epochs, per_epoch = r["epochs"]
        rows.append(("epochs, mean s per epoch", f"{epochs}, {per_epoch:.1f} s", ""))
    if "early_stop_best" in r:
        rows.append(("best validation score (held-out rows)", f"{r['early_stop_best']:.4f}", ""))
    before, after = r["load"]
    rows.append(("1-min load average before / after", f"{before:.1f} / {after:.1f}", ""))
    return rows


def seed_overrides(params: dict[str, Any], offset: int) -> dict[str, Any]:
    """The seeds of a run moved by ``offset``: the distortions' (``encode.augment.seed``) and
    the initial weights' and shuffles' (``train.random_state``); offset 0 is the preset."""
    return {
        "encode.augment.seed": params["encode"]["augment"]["seed"] + offset,
        "train.random_state": params["train"]["random_state"] + offset,
    }


def seeds_table(runs: dict[int, dict[str, Any]]) -> str:
    """Markdown: one row per seed offset, then the mean and sample standard deviation."""
    lines = [
        "| seed offset | test accuracy (argmax) | fit time | cold `dvc repro` | peak RSS "
        "| load before / after |",
        "|---|---|---|---|---|---|",
    ]
    for offset, r in runs.items():
        lines.append(
            f"| {offset} | {100 * r['accuracy']:.2f}% | {r['fit_s']:.0f} s | "
            f"{r['total_s']:.0f} s | {r['peak_mb']:.0f} MB | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    acc = [100 * r["accuracy"] for r in runs.values()]
    spread = ""
    if len(acc) > 1:
        spread = f"sample standard deviation {statistics.stdev(acc):.3f} points, "
    lines.append(
        f"\nmean {statistics.mean(acc):.3f}%, {spread}"
        f"range {min(acc):.2f}-{max(acc):.2f}% over {len(acc)} seeds"
    )
    return "\n".join(lines)


def main() -> None:
    """Run the preset once, cold, and print the figures as a markdown table; with ``--seeds``
    once per seed offset, and the mean and spread of test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="best")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param on top of the preset (repeatable)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", metavar="OFFSET",
                        help="run once per seed offset (0 = the preset's seeds)")  # fmt: skip
    parser.add_argument("--mirror", default=os.environ.get("MNIST_MIRROR"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()

    overrides = preset_overrides(args.preset, args.set)
    if args.seeds is None:
        rows = table_rows(args.preset, run_preset(args, overrides))
        lines = ["| measure | value | target |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        sys.stdout.write("\n".join(lines) + f"\n\nmachine: {os.cpu_count()} cores\n")
        return
    base = apply_preset(load_params(REPO / "params.yaml"), overrides)
    runs = {}
    for offset in args.seeds:
        runs[offset] = run_preset(args, {**overrides, **seed_overrides(base, offset)})
        sys.stderr.write(f"seed offset {offset}: {runs[offset]}\n")
    sys.stdout.write(seeds_table(runs) + f"\n\nmachine: {os.cpu_count()} cores\n")


if __name__ == "__main__":
    main()
