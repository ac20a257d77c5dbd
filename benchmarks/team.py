"""Team scale: the cost of the tracking server against the local sqlite store.

Starts a throw-away team server (`mnistflow server --pg-dir`: PostgreSQL + `mlflow server`
with basic auth and proxied artifacts) and measures, on the tiny synthetic dataset of the
tests (300 training images, one 16-unit layer, 5 epochs), so that logging, not fitting,
dominates:

1. logging overhead: `dvc repro --force --downstream train` (train + evaluate: one MLflow run
   with its model, metrics, figures and report) in two copies of the repo, one logging to a
   local sqlite store, one to the server, alternated ROUNDS times; the median of each. Store
   and experiment are created before the timing (sqlite's first creation costs seconds).
2. 8 concurrent runs against the server: 8 queued experiments, `dvc queue start -j 8`,
   wall time until `mnistflow wait-queue` returns; then all 8 runs must be FINISHED.
3. `mnistflow sync` of 100 runs: a local sqlite store filled with 100 runs through MLflow's
   API (benchmarks/store_growth.py's `fill`), synced to the server twice: the first copies
   everything, the second (idempotent) nothing.

Usage: python benchmarks/team.py [--rounds 3] [--jobs 8] [--sync-runs 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from store_growth import fill, timed  # benchmarks/store_growth.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers: the tiny dataset and repo copies of the tests

from mnistflow.ops import postgres, tracking_server  # noqa: E402
from mnistflow.tracking import store  # noqa: E402

from tests.helpers import copy_repo, use_tiny_dataset, workspace_env, write_idx_dataset  # noqa: E402

BIN = Path(sys.executable).parent
ADMIN_PW = "bench-admin-pass-0123"
USER, USER_PW = "bench", "bench-user-pass-4567"
EXPERIMENT = "mnist-mlp"


def load() -> str:
    """The 1-minute load average, to print beside each figure."""
    return f"{os.getloadavg()[0]:.1f}"


def scratch_base(prefix: str) -> Path:
    """A fresh folder for a throw-away server; as root in /tmp and world-traversable, because
    the cluster then runs as `postgres`, who must reach it."""
    if os.geteuid() == 0:
        base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        base.chmod(0o755)
        return base
    return Path(tempfile.mkdtemp(prefix=prefix))


def start_server(
    base: Path, extra: Sequence[str] = (), add_user: bool = True
) -> tuple[subprocess.Popen, str]:
    """`mnistflow server --pg-dir BASE/pg [extra]` on a free port, healthy, with the user
    USER (``add_user``: created now; a second start on the same BASE reuses the cluster, its
    data and users)."""
    port = postgres.free_port()
    env = {**os.environ, tracking_server.ADMIN_PASSWORD_ENV: ADMIN_PW}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(var, None)
    log = (base / "server.log").open("a")
    cmd = [str(BIN / "mnistflow"), "server", "--pg-dir", str(base / "pg"), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, *extra],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"mnistflow server exited {proc.returncode}: see {base}/server.log")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=3):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("mnistflow server did not become healthy") from None
            time.sleep(0.5)
    if add_user:
        tracking_server.create_user(uri, tracking_server.DEFAULT_ADMIN, ADMIN_PW, USER, USER_PW)
    return proc, uri


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM: the server stops mlflow, then PostgreSQL."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run a command that must succeed; its output."""
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def logging_overhead(
    base: Path, mirror: Path, files: dict, uri: str, rounds: int
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(wall, client CPU) seconds of train + evaluate per round: (local sqlite, server)."""
    edit = use_tiny_dataset(files, train={"hidden_layer_sizes": [16], "max_iter": 5})
    local = copy_repo(base / "local", edit)
    remote = copy_repo(base / "remote", edit)
    env_local = workspace_env(mirror)  # credentials too (main sets them): sqlite ignores them
    env_remote = {**workspace_env(mirror), "MLFLOW_TRACKING_URI": uri}
    for repo, env in ((local, env_local), (remote, env_remote)):
        run([str(BIN / "dvc"), "repro", "encode"], repo, env)  # the data, not timed
    # the stores and the experiment, as the first train would create them: not timed
    store.ensure_experiment(f"sqlite:///{local / 'mlflow.db'}", EXPERIMENT, local)
    store.ensure_experiment(uri, EXPERIMENT, remote)
    cmd = [str(BIN / "dvc"), "repro", "--force", "--downstream", "train"]
    times: tuple[list[tuple[float, float]], list[tuple[float, float]]] = ([], [])
    for _ in range(rounds):
        times[0].append(timed(cmd, env_local, local))
        times[1].append(timed(cmd, env_remote, remote))
    return times


def concurrent_runs(base: Path, jobs: int, uri: str) -> tuple[float, list[str]]:
    """Wall seconds of `jobs` queued experiments on `jobs` workers; their runs' statuses."""
    from mlflow.tracking import MlflowClient

    repo = base / "remote"  # data already there from logging_overhead
    env = {**workspace_env(), "MLFLOW_TRACKING_URI": uri}
    names = [f"conc-{i}" for i in range(jobs)]
    for i, name in enumerate(names):
        alpha = f"train.alpha={0.0001 * (i + 1):g}"
        run([str(BIN / "dvc"), "exp", "run", "--queue", "-n", name, "-S", alpha], repo, env)
    start = time.perf_counter()
    # not `run`: the detached workers would hold its pipes open until the last one exits
    subprocess.run(
        [str(BIN / "dvc"), "queue", "start", "-j", str(jobs)],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    run([str(BIN / "mnistflow"), "wait-queue", "--poll", "1"], repo, env)
    seconds = time.perf_counter() - start
    run([str(BIN / "dvc"), "queue", "stop"], repo, env)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([exp.experiment_id], max_results=1000)
    statuses = [r.info.status for r in found if r.data.tags.get("dvc_exp_name") in names]
    return seconds, statuses


def sync_runs(base: Path, n: int, uri: str) -> tuple[float, float, float]:
    """(seconds to fill the local store, first sync, second sync) for n runs."""
    root = base / "sync-source"
    root.mkdir()
    source = f"sqlite:///{root / 'mlflow.db'}"
    start = time.perf_counter()
    fill(source, n, root)
    filled = time.perf_counter() - start
    env = workspace_env()
    cmd = [str(BIN / "mnistflow"), "sync", "--to", uri, "--from", source]
    cmd += ["--experiment", EXPERIMENT]
    return filled, timed(cmd, env, root)[0], timed(cmd, env, root)[0]


def main() -> None:
    """Run the three measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--sync-runs", type=int, default=100)
    args = parser.parse_args()
    base = scratch_base("mnistflow-bench-team-")
    mirror = base / "tiny-mirror"
    files = write_idx_dataset(mirror)
    start_load = load()
    proc, uri = start_server(base)
    # this process and every command below speak to the server as USER
    os.environ.update({"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": USER_PW})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out

    def row(name: str, value: str) -> None:  # printed at once: a partial run still tells
        sys.stdout.write(f"| {name} | {value} |\n")
        sys.stdout.flush()

    sys.stdout.write("| measure | value |\n|---|---|\n")
    try:
        local, remote = logging_overhead(base, mirror, files, uri, args.rounds)
        for i, what in enumerate(("wall", "CPU of the client processes")):
            lm = statistics.median(t[i] for t in local)
            rm = statistics.median(t[i] for t in remote)
            row(f"train + evaluate {what}, sqlite vs server (median of {args.rounds})",
                f"{lm:.1f} vs {rm:.1f} s: {rm / lm:.2f}x")  # fmt: skip
        each = " / ".join(f"{a[0]:.1f} vs {b[0]:.1f}" for a, b in zip(local, remote, strict=True))
        row("each round's wall, sqlite vs server", f"{each} s; load {load()}")
        wall, statuses = concurrent_runs(base, args.jobs, uri)
        finished = statuses.count("FINISHED")
        row(f"{args.jobs} queued runs on -j {args.jobs}, wall", f"{wall:.0f} s; load {load()}")
        row("their runs FINISHED / found / queued", f"{finished}/{len(statuses)}/{args.jobs}")
        filled, first, second = sync_runs(base, args.sync_runs, uri)
        row(f"fill a sqlite store with {args.sync_runs} runs (MLflow API)", f"{filled:.0f} s")
        row(f"`mnistflow sync` of {args.sync_runs} runs, first", f"{first:.1f} s")
        row("`mnistflow sync` again (copies nothing)", f"{second:.1f} s; load {load()}")
    finally:
        stop_server(proc)
    sys.stdout.write(f"\nmachine: {os.cpu_count()} cores; load average at start {start_load}\n")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
