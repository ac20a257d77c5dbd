"""Queue throughput: the same 4 experiments on `dvc queue start -j 2` against `-j 1`.

Each mode runs in its own throw-away copy of the repo (after a cold `dvc repro`, so only train
and evaluate rerun), with the README's grid: train.alpha 0.0001/0.001 x hidden_layer_sizes
(100,50,25)/(256,128). Usage: python benchmarks/queue_throughput.py [--mirror DIR] [--max-iter N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pipeline import REPO, bench_env, measure  # benchmarks/pipeline.py

from mnistflow.util.workspace import copy_working_tree

GRID = ["-S", "train.alpha=0.0001,0.001", "-S", "train.hidden_layer_sizes=[100,50,25],[256,128]"]


def sweep(jobs: int, base: Path, env: dict[str, str], dvc: list[str], max_iter: int) -> float:
    """Seconds from `dvc queue start -j jobs` until the 4 queued experiments are done."""
    ws = copy_working_tree(REPO, base / f"ws-j{jobs}")
    measure([*dvc, "repro"], ws, env)
    measure([*dvc, "exp", "run", "--queue", "-S", f"train.max_iter={max_iter}", *GRID], ws, env)
    start = time.perf_counter()
    measure([*dvc, "queue", "start", "-j", str(jobs)], ws, env)
    measure([str(Path(sys.executable).parent / "mnistflow"), "wait-queue", "--poll", "1"], ws, env)
    seconds = time.perf_counter() - start
    measure([*dvc, "queue", "stop"], ws, env)
    return seconds


def main() -> None:
    """Run both modes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mirror", default=os.environ.get("MNIST_MIRROR"))
    parser.add_argument("--max-iter", type=int, default=20)
    args = parser.parse_args()
    env, dvc = bench_env(args.mirror)
    base = Path(tempfile.mkdtemp(prefix="mnistflow-queue-"))
    one = sweep(1, base, env, dvc, args.max_iter)
    two = sweep(2, base, env, dvc, args.max_iter)
    sys.stdout.write(
        "| 4 queued experiments (train + evaluate each) | seconds |\n|---|---|\n"
        f"| `dvc queue start -j 1` | {one:.0f} |\n| `dvc queue start -j 2` | {two:.0f} |\n"
        f"| throughput -j 2 / -j 1 | {one / two:.2f}x |\n\nmachine: {os.cpu_count()} cores, "
        f"train.max_iter={args.max_iter}, train.threads as in params.yaml\n"
    )
    # A stopped queue worker may still be writing its logs for a moment.
    shutil.rmtree(base, ignore_errors=True)
    if base.exists():
        sys.stderr.write(f"left behind (a worker was still writing): {base}\n")


if __name__ == "__main__":
    main()
