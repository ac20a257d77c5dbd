"""How many concurrent writers one team server holds.

Starts a throw-away team server (`mnistflow server --pg-dir`: PostgreSQL + `mlflow server`
with basic auth and proxied artifacts, on 127.0.0.1) with 1, then 2 server workers
(`--workers`), and for N = 4, 16, 64 concurrent writer processes measures what a training
run's logging costs under that load. Each writer logs through the train stage's own client
code (`mnistflow.tracking.runs.mlflow_run` with system metrics on, `Run.set_tags`,
`Run.log_params` with `record.train_params` of params.yaml, `record.log_epoch` for 20
synthetic epochs with `train_loss` and `early_stop_score`, `Run.log_artifact` of a 2 KB file, the
run's end), without training. Every call of a `Run` method and the run's start and end are
timed at the client; a call is one or two HTTP requests (`log_params`: read the run, then
write the batch). The writers start together (a barrier), after their imports.

Printed per server-worker count and N: calls, wall seconds from the barrier to the last
writer's end, calls/s, p50/p95/max latency of a call, errors (a writer's exception: MLflow's
client retries failed requests first, with its defaults), runs FINISHED as the server sees
them; and the largest N with p95 <= 1 s. The load average (/proc/loadavg) before and after.

Writers are forked from this process (the imports happen once), so N=64 costs 64 processes,
not 64 MLflow imports. Client and server share the machine's cores.

Usage: python benchmarks/team_load.py [--writers 4 16 64] [--server-workers 1 2] [--epochs 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from mnistflow.config import load_config
from mnistflow.tracking import record, store
from mnistflow.tracking.runs import Run, mlflow_run
from team import BIN, USER, USER_PW, scratch_base, start_server, stop_server  # benchmarks/

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "team-load"
P95_TARGET_S = 1.0
LEVEL_DEADLINE_S = 300  # one load level: past this its writers are killed, counted as errors


class TimedRun:
    """A :class:`Run` whose every method call is timed into ``samples`` (seconds)."""

    def __init__(self, run: Run, samples: list[float]) -> None:
        self._run, self._samples = run, samples

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._run, name)
        if not callable(method):
            return method

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._samples.append(time.perf_counter() - start)

        return timed


def writer(
    uri: str, experiment_id: str, name: str, epochs: int, artifact: str, barrier: Any, out: Any
) -> None:
    """One writer process: wait for the others, then log one run; put (latencies, error)."""
    sys.stdout = sys.stderr  # MLflow prints "View run …" links: keep the table alone on stdout
    samples: list[float] = []
    error = ""
    params = load_config(REPO / "params.yaml")
    barrier.wait()
    try:
        start = time.perf_counter()
        context = mlflow_run(uri, experiment_id, run_name=name, log_system_metrics=True)
        run = context.__enter__()
        samples.append(time.perf_counter() - start)
        try:
            timed = cast(Run, TimedRun(run, samples))
            timed.set_tags({"mnistflow.stage": "load", "mnistflow.bench": name})
            timed.log_params(record.train_params(params))
            for epoch in range(1, epochs + 1):
                record.log_epoch(timed, epoch, 2.3 / epoch, 0.5 + epoch / (4 * epochs))
            timed.log_artifact(artifact, "train")
        except BaseException:
            start = time.perf_counter()
            context.__exit__(*sys.exc_info())
            samples.append(time.perf_counter() - start)
            raise
        start = time.perf_counter()
        context.__exit__(None, None, None)
        samples.append(time.perf_counter() - start)
    except Exception as exc:  # counted and reported: the figure is the number of errors
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc()
    out.put((samples, error))


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _call(fn: Callable[..., Any], args: tuple, out: Any) -> None:
    out.put(fn(*args))


def in_child(ctx: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a forked process: this process never opens a connection to the
    server, which the writers forked from it would otherwise share (MLflow pools them)."""
    out = ctx.Queue()
    proc = ctx.Process(target=_call, args=(fn, args, out))
    proc.start()
    result = out.get(timeout=300)
    proc.join()
    return result


def finished_runs(uri: str, experiment_id: str, prefix: str) -> int:
    """How many runs named ``prefix…`` the server has as FINISHED."""
    from mlflow.tracking import MlflowClient

    query = f"tags.`mnistflow.bench` LIKE '{prefix}%'"
    runs = MlflowClient(uri).search_runs([experiment_id], query, max_results=1000)
    return sum(r.info.status == "FINISHED" for r in runs)


def load_level(
    ctx: Any, uri: str, experiment_id: str, n: int, label: str, epochs: int, artifact: str
) -> dict[str, Any]:
    """N writers at once against ``uri``: the figures of one table row."""
    barrier = ctx.Barrier(n + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=writer,
            args=(uri, experiment_id, f"{label}-n{n}-{i}", epochs, artifact, barrier, out),
        )
        for i in range(n)
    ]
    begun = time.perf_counter()
    for proc in procs:
        proc.start()
    barrier.wait(timeout=600)  # every writer is up: the clock starts
    start = time.perf_counter()
    sys.stderr.write(f"{label} N={n}: writers up in {start - begun:.1f} s\n")
    results: list[tuple[list[float], str]] = []
    deadline = start + LEVEL_DEADLINE_S
    try:
        for _ in procs:
            results.append(out.get(timeout=max(1.0, deadline - time.perf_counter())))
    except queue.Empty:
        missing = n - len(results)
        results += [([], f"no result in {LEVEL_DEADLINE_S} s")] * missing
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    latencies = [s for samples, _ in results for s in samples] or [float("nan")]
    errors = [e for _, e in results if e]
    finished = in_child(ctx, finished_runs, uri, experiment_id, f"{label}-n{n}-")
    return {
        "calls": len(latencies),
        "wall": wall,
        "rate": len(latencies) / wall,
        "p50": percentile(latencies, 0.50),
        "p95": percentile(latencies, 0.95),
        "max": max(latencies),
        "errors": errors,
        "finished": finished,
    }


def loadavg() -> str:
    """/proc/loadavg's first three fields."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    """Both server configurations, every N; the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--server-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    ctx = mp.get_context("fork")  # writers start with mlflow and mnistflow already imported
    started, load_before = time.perf_counter(), loadavg()
    base = scratch_base("mnistflow-bench-team-load-")
    artifact = base / "loss_curve.txt"
    artifact.write_text("".join(f"{e} {2.3 / e:.6f}\n" for e in range(1, 201)))  # ~2 KB
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    os.environ.update({"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": USER_PW})
    sys.stdout.write(
        f"load average before: {loadavg()}; {os.cpu_count()} cores shared by client and "
        f"server; {args.epochs} epochs per run\n\n"
        "| server workers | writers | calls | wall s | calls/s | p50 ms | p95 ms | max ms "
        "| errors | runs FINISHED |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    best: dict[int, int] = {}
    first = True
    try:
        for workers in args.server_workers:
            begun = time.perf_counter()
            proc, uri = start_server(base, ["--workers", str(workers)], add_user=first)
            sys.stderr.write(
                f"server with {workers} worker(s) up in {time.perf_counter() - begun:.0f} s\n"
            )
            first = False
            try:
                experiment_id = in_child(ctx, store.ensure_experiment, uri, EXPERIMENT, base)
                for n in args.writers:
                    f = load_level(ctx, uri, experiment_id, n, f"w{workers}", args.epochs,
                                   str(artifact))  # fmt: skip
                    sys.stdout.write(
                        f"| {workers} | {n} | {f['calls']} | {f['wall']:.1f} | {f['rate']:.0f} "
                        f"| {f['p50'] * 1000:.0f} | {f['p95'] * 1000:.0f} | {f['max'] * 1000:.0f} "
                        f"| {len(f['errors'])} | {f['finished']}/{n} |\n"
                    )
                    sys.stdout.flush()
                    for error in f["errors"][:3]:
                        sys.stdout.write(f"  error: {error}\n")
                    if f["p95"] <= P95_TARGET_S and not f["errors"]:
                        best[workers] = max(best.get(workers, 0), n)
            finally:
                stop_server(proc)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    sys.stdout.write("\n")
    for workers in args.server_workers:
        n = best.get(workers)
        sys.stdout.write(
            f"largest N with p95 <= {P95_TARGET_S:.0f} s and no error, {workers} server "
            f"worker(s): {n if n else 'none of ' + str(args.writers)}\n"
        )
    sys.stdout.write(
        f"load average before: {load_before}; after: {loadavg()}; "
        f"total {time.perf_counter() - started:.0f} s ({BIN / 'python'} {' '.join(sys.argv)})\n"
    )


if __name__ == "__main__":
    main()
