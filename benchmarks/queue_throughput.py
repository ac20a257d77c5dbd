"""Queue throughput: the same 4 experiments on `dvc queue start -j 2` against `-j 1`, and the
fixed cost of one queued experiment.

Each mode runs in its own throw-away copy of the repo (after a cold `dvc repro`, so only train
and evaluate rerun), with the README's grid: train.hidden_layer_sizes (256,128)/(100,50,25) x
alpha 0.0001/0.001, queued the larger net first as `make sweep` does (`--order short-first`:
alpha first, the order short, long, short, long). The fixed cost of an experiment is its share
of the `-j 1` wall time minus the mean `fit_time_s` of those runs (from the copy's MLflow
store): DVC's temporary workspace, the stage processes, MLflow logging, evaluation. The
same in CPU seconds (the queue workers' own and their finished children's, sampled while
they run) does not depend on what else runs on the machine.
Usage: python benchmarks/queue_throughput.py [--mirror DIR] [--max-iter N] [--order ORDER]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mnistflow.util.workspace import copy_working_tree
from pipeline import REPO, bench_env, measure  # benchmarks/pipeline.py

N_EXPERIMENTS = 4
# The README's grid, the larger net first (as `make sweep` queues it): DVC runs the product
# in order, first -S outermost; --order short-first gives the alternating order it had.
GRID = ["-S", "train.hidden_layer_sizes=[256,128],[100,50,25]", "-S", "train.alpha=0.0001,0.001"]
GRID_SHORT_FIRST = [
    "-S",
    "train.alpha=0.0001,0.001",
    "-S",
    "train.hidden_layer_sizes=[100,50,25],[256,128]",
]
ORDERS = {"long-first": GRID, "short-first": GRID_SHORT_FIRST}


@dataclass(frozen=True)
class Sweep:
    """One `dvc queue start -j N` of the grid: wall time, the runs' fit times, the load."""

    jobs: int
    seconds: float
    fit_times: list[float]
    load_before: float
    load_after: float
    cpu_s: float | None  # the workers' CPU with their children's; None if not readable

    @property
    def fixed_per_experiment(self) -> float:
        """Wall time per experiment (per worker) minus the mean fit: what is not the fit."""
        return self.seconds * self.jobs / N_EXPERIMENTS - statistics.fmean(self.fit_times)

    @property
    def fixed_cpu_per_experiment(self) -> float | None:
        """CPU seconds per experiment minus the mean fit (one BLAS thread: its wall ~ CPU)."""
        if self.cpu_s is None:
            return None
        return self.cpu_s / N_EXPERIMENTS - statistics.fmean(self.fit_times)


class WorkerCpu:
    """Samples the CPU of the queue workers of ``ws`` (with their finished children's) twice a
    second; a worker's last sample counts, so one that stopped early is not lost.

    A worker's pid is in ``.dvc/tmp/exps/celery/dvc-exp-worker-N.pid``; it reaps each
    experiment's `dvc exp exec-run` (and that its stages) before idling, and idles for at
    least one of its monitor's polls before it stops, so the last sample holds every
    experiment it ran.
    """

    def __init__(self, ws: Path) -> None:
        self.folder = ws / ".dvc/tmp/exps/celery"
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        for pid_file in self.folder.glob("dvc-exp-worker-*.pid"):
            try:
                proc = psutil.Process(int(pid_file.read_text().strip()))
                if "queue-worker" not in proc.cmdline():
                    continue
                t = proc.cpu_times()
            except (ValueError, OSError, psutil.Error):
                continue  # not written yet, or the worker is gone
            self.last[proc.pid] = t.user + t.system + t.children_user + t.children_system

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def start(self) -> None:
        """Start sampling (before `dvc queue start`)."""
        self._thread.start()

    def stop(self) -> float | None:
        """Stop; the workers' CPU seconds, or None if no worker was ever seen."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(self.last.values()) if self.last else None


def fit_times(ws: Path, since_ms: int) -> list[float]:
    """``fit_time_s`` of the runs started in the copy's own MLflow store since ``since_ms``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"attributes.start_time >= {since_ms}")
    return [r.data.metrics["fit_time_s"] for r in runs if "fit_time_s" in r.data.metrics]


def sweep(
    jobs: int, base: Path, env: dict[str, str], dvc: list[str], max_iter: int, grid: list[str]
) -> Sweep:
    """Time `dvc queue start -j jobs` until the queued grid is done; its runs' fit times."""
    ws = copy_working_tree(REPO, base / f"ws-j{jobs}")
    measure([*dvc, "repro"], ws, env)
    measure([*dvc, "exp", "run", "--queue", "-S", f"train.max_iter={max_iter}", *grid], ws, env)
    load_before = os.getloadavg()[0]
    since_ms = int(time.time() * 1000)
    cpu = WorkerCpu(ws)
    cpu.start()
    start = time.perf_counter()
    measure([*dvc, "queue", "start", "-j", str(jobs)], ws, env)
    measure([str(Path(sys.executable).parent / "mnistflow"), "wait-queue", "--poll", "1"], ws, env)
    seconds = time.perf_counter() - start
    cpu_s = cpu.stop()
    load_after = os.getloadavg()[0]
    measure([*dvc, "queue", "stop"], ws, env)
    fits = fit_times(ws, since_ms)
    if len(fits) != N_EXPERIMENTS:
        raise SystemExit(f"-j {jobs}: {len(fits)} runs with fit_time_s, not {N_EXPERIMENTS}")
    return Sweep(jobs, seconds, fits, load_before, load_after, cpu_s)


def table(one: Sweep, two: Sweep, max_iter: int, order: str) -> str:
    """The markdown table of both modes."""
    ratio = one.seconds / two.seconds
    rows = [
        ("`dvc queue start -j 1`, wall", f"{one.seconds:.0f} s"),
        ("`dvc queue start -j 2`, wall", f"{two.seconds:.0f} s"),
        ("throughput -j 2 / -j 1 (target >= 1.85)", f"**{ratio:.2f}x**"),
        (
            "fixed cost per experiment at -j 1: wall / 4 - mean fit_time_s (target <= 5 s)",
            f"**{one.fixed_per_experiment:.1f} s**",
        ),
        (
            "the same at -j 2: wall x 2 / 4 - mean fit_time_s",
            f"{two.fixed_per_experiment:.1f} s",
        ),
        (
            "the same in CPU: workers' CPU s / 4 - mean fit_time_s, -j 1; -j 2",
            f"{_maybe(one.fixed_cpu_per_experiment)}; {_maybe(two.fixed_cpu_per_experiment)}",
        ),
        (
            "fit_time_s of the 4 runs at -j 1 (sorted)",
            ", ".join(f"{f:.1f}" for f in sorted(one.fit_times)),
        ),
        (
            "fit_time_s of the 4 runs at -j 2 (sorted)",
            ", ".join(f"{f:.1f}" for f in sorted(two.fit_times)),
        ),
        (
            "load average (1 min) before / after, -j 1; -j 2",
            f"{one.load_before:.1f} / {one.load_after:.1f}; "
            f"{two.load_before:.1f} / {two.load_after:.1f}",
        ),
    ]
    lines = [f"| {N_EXPERIMENTS} queued experiments (train + evaluate each) | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + (
        f"\n\nmachine: {os.cpu_count()} cores, train.max_iter={max_iter}, order {order}, "
        "train.threads as in params.yaml\n"
    )


def _maybe(seconds: float | None) -> str:
    return "n/a (no worker seen)" if seconds is None else f"{seconds:.1f} s"


def main() -> None:
    """Run both modes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mirror", default=os.environ.get("MNIST_MIRROR"))
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--order", choices=sorted(ORDERS), default="long-first")
    args = parser.parse_args()
    env, dvc = bench_env(args.mirror)
    base = Path(tempfile.mkdtemp(prefix="mnistflow-queue-"))
    grid = ORDERS[args.order]
    one = sweep(1, base, env, dvc, args.max_iter, grid)
    two = sweep(2, base, env, dvc, args.max_iter, grid)
    sys.stdout.write(table(one, two, args.max_iter, args.order))
    # A stopped queue worker may still be writing its logs for a moment.
    shutil.rmtree(base, ignore_errors=True)
    if base.exists():
        sys.stderr.write(f"left behind (a worker was still writing): {base}\n")


if __name__ == "__main__":
    main()
