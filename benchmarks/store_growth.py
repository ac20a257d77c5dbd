"""How the read side grows with the store: leaderboard, register and the UI at N runs.

Fills a fresh sqlite store with N real runs through MLflow's API (the params, stepped loss,
metrics and tags the pipeline logs; a tiny real model in the best run only, so `register` has
something to register), then times, as a user runs them, `mnistflow leaderboard`,
`mnistflow register` and the MLflow UI's runs table in headless Chromium (first page with
run names shown). Prints a table and writes a log-log figure.

Usage: python benchmarks/store_growth.py [--sizes 10 100 1000] [--figure docs/store_growth.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXPERIMENT = "mnist-mlp"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def fill(uri: str, n: int, root: Path) -> None:
    """N runs shaped like the pipeline's (35 params, 20-step loss, ~40 metrics, tags)."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
    from sklearn.neural_network import MLPClassifier

    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(root / "art").as_uri())
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    for i in range(n):
        run = client.create_run(exp, run_name=f"exp-{i:04d}", start_time=now + i)
        acc = float(0.95 + 0.03 * rng.random())
        params = [Param(f"train.p{k}", str(k * i)) for k in range(30)]
        params += [
            Param("train.alpha", str(10.0 ** -int(rng.integers(2, 6)))),
            Param("data.dataset", "mnist"),
        ]
        metrics = [Metric("train_loss", float(1 / (s + 1)), now, s) for s in range(1, 21)]
        metrics += [Metric(f"f1_class_{k}", acc, now, 0) for k in range(10)]
        metrics += [
            Metric("test_accuracy", acc, now, 0),
            Metric("fit_time_s", float(10 + rng.random()), now, 0),
            Metric("delta_to_baseline", acc - 0.97, now, 0),
        ]
        tags = [RunTag("dvc_exp_name", f"exp-{i:04d}"), RunTag("is_baseline", "false")]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run.info.run_id, "FINISHED")
    # the best run gets a real (tiny) model so that `register` can register it
    best = client.search_runs([exp], order_by=["metrics.test_accuracy DESC"], max_results=1)[0]
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=best.info.run_id):
        x = rng.random((20, 4))
        model = MLPClassifier((2,), max_iter=5).fit(x, np.arange(20) % 2)
        mlflow.sklearn.log_model(
            model,
            name="model",
            skops_trusted_types=["sklearn.neural_network._stochastic_optimizers.AdamOptimizer"],
        )


def timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds one command takes (it must succeed)."""
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_first_page(uri: str, env: dict[str, str], work: Path) -> float:
    """Seconds for headless Chromium to show the runs table with run names (UI already up)."""
    import urllib.request

    from mlflow.tracking import MlflowClient

    port = free_port()
    cmd = [str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*cmd, "--port", str(port), "--workers", "1"],
        env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("mlflow ui did not start") from None
                time.sleep(0.5)
        exp_id = MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id
        url = f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs"
        times = []
        for attempt in range(2):  # the first load also warms the server's caches
            profile = work / f"profile{attempt}"
            start = time.perf_counter()
            proc = subprocess.run(
                ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 "--virtual-time-budget=30000", "--dump-dom", url],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            times.append(time.perf_counter() - start)
            if "exp-" not in proc.stdout:
                raise SystemExit("the runs table did not show run names")
        return times[-1]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def main() -> None:
    """Fill, time and print one row per store size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--figure", type=Path, default=REPO / "docs" / "store_growth.png")
    parser.add_argument("--no-ui", action="store_true", help="skip the browser measurement")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"mnistflow-growth-{n}-"))
        try:
            (work / ".dvc").mkdir()
            shutil.copy(REPO / "params.yaml", work / "params.yaml")
            uri = f"sqlite:///{work / 'mlflow.db'}"
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MNISTFLOW_LOG": "WARNING"}
            start = time.perf_counter()
            fill(uri, n, work)
            filled = time.perf_counter() - start
            mnistflow = str(BIN / "mnistflow")
            board = timed([mnistflow, "leaderboard"], env, work)
            register = timed([mnistflow, "register"], env, work)
            ui = float("nan") if args.no_ui else ui_first_page(uri, env, work)
            rows.append((n, filled, board, register, ui))
            sys.stdout.write(
                f"N={n}: fill {filled:.1f} s, leaderboard {board:.2f} s, "
                f"register {register:.2f} s, UI runs table {ui:.2f} s\n"
            )
            sys.stdout.flush()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    lines = ["", "| runs | leaderboard (s) | register (s) | UI runs table, first page (s) |"]
    lines.append("|---|---|---|---|")
    lines += [f"| {n} | {b:.2f} | {r:.2f} | {u:.2f} |" for n, _, b, r, u in rows]
    sys.stdout.write("\n".join(lines) + f"\n\nload average: {os.getloadavg()}\n")
    if len(rows) > 1:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sizes = [r[0] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        for col, label in ((2, "leaderboard"), (3, "register"), (4, "UI runs table")):
            ax.loglog(sizes, [r[col] for r in rows], marker="o", label=label)
        ax.set_xlabel("runs in the store")
        ax.set_ylabel("seconds")
        ax.set_title("read-side cost against store size (sqlite)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.figure, dpi=100)
        sys.stdout.write(f"figure: {args.figure}\n")


if __name__ == "__main__":
    main()
