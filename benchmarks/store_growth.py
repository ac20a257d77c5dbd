"""How the read side grows: leaderboard, register and the UI at N runs; DVC at N experiments.

Fills a fresh sqlite store with N real runs through MLflow's API (the params, stepped loss,
metrics and tags the pipeline logs; a tiny real model in the best run only, so `register` has
something to register), then times, as a user runs them, `mnistflow leaderboard`,
`mnistflow register` and the MLflow UI's runs table in headless Chromium (first page with
run names shown). For the UI it also times Chromium on an empty page and the server's answer
to the runs table's `runs/search` request, to tell browser start-up from the store's cost.

Then, in a copy of the repo on tiny data after one real `dvc repro`, it saves N experiments
(`dvc exp save` through DVC's Python API, each with its own train.alpha and metrics) and
queues N more (`dvc exp run --queue`), timing `dvc exp show` and `dvc queue status` at each N.
Prints both tables and writes a log-log figure.

Usage: python benchmarks/store_growth.py [--sizes 10 100 1000] [--exp-sizes 10 50 100]
       [--figure reports/benchmarks/store_growth.png] [--no-ui] [--no-store] [--no-dvc]
       [--repeat K]

Only leaderboard and register at 1,000 runs, 3 times each (alternating; the table shows the
median, the printed row every time): --sizes 1000 --no-ui --no-dvc --repeat 3. Each register
after the first finds the run registered already (it keeps the version instead of making one).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mnistflow  # noqa: F401  (pins the floating-point environment, see benchmarks/ruff.toml)

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
        tags = [
            RunTag("dvc_exp_name", f"exp-{i:04d}"),
            RunTag("is_baseline", "false"),
            RunTag("dataset", "mnist"),  # leaderboard and register rank one dataset's runs
        ]
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


def timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one command, which must succeed.

    On a shared machine the CPU time is the steadier figure: the wall time grows with the
    load of everything else, the CPU time of a single-threaded command hardly does.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(url: str, profile: Path) -> tuple[float, str]:
    """Seconds for headless Chromium to load ``url`` (fresh profile) and its DOM."""
    start = time.perf_counter()
    proc = subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
         "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return time.perf_counter() - start, proc.stdout


def search_page(port: int, exp_id: str) -> float:
    """Seconds the server takes to answer the runs table's request: 100 runs, newest first."""
    import json
    import urllib.request

    body = {
        "experiment_ids": [exp_id],
        "max_results": 100,
        "order_by": ["attributes.start_time DESC"],
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - start


def ui_first_page(uri: str, env: dict[str, str], work: Path) -> tuple[float, float, float]:
    """Seconds for headless Chromium to show the runs table with run names (UI already up),
    for Chromium on an empty page, and for the server's answer to the table's runs/search."""
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
            seconds, dom = chromium(url, work / f"profile{attempt}")
            times.append(seconds)
            if "exp-" not in dom:
                raise SystemExit("the runs table did not show run names")
        blank, _ = chromium("about:blank", work / "profile-blank")
        return times[-1], blank, min(search_page(port, exp_id) for _ in range(3))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def store_rows(sizes: list[int], with_ui: bool, repeat: int = 1) -> list[dict[str, float]]:
    """Fill a fresh store per size; time leaderboard, register (``repeat`` times) and the UI."""
    rows = []
    for n in sizes:
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
            times: dict[str, list[tuple[float, float]]] = {"leaderboard": [], "register": []}
            for _ in range(repeat):
                for command, seen in times.items():
                    seen.append(timed([mnistflow, command], env, work))
            (board, board_cpu), (register, register_cpu) = (
                tuple(float(x) for x in np.median(seen, axis=0)) for seen in times.values()
            )
            nan = float("nan")
            ui, blank, search = ui_first_page(uri, env, work) if with_ui else (nan, nan, nan)
            row = {"n": n, "fill": filled, "leaderboard": board, "leaderboard_cpu": board_cpu,
                   "register": register, "register_cpu": register_cpu, "ui": ui,
                   "blank": blank, "search": search, "load": os.getloadavg()[0]}  # fmt: skip
            if repeat > 1:  # every (wall, CPU) pair, in the order run
                row.update({f"{c}_all": [tuple(round(x, 2) for x in t) for t in seen]
                            for c, seen in times.items()})  # fmt: skip
            rows.append(row)
            sys.stdout.write(f"{row}\n")
            sys.stdout.flush()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def dvc_rows(sizes: list[int], keep: bool) -> list[dict[str, float]]:
    """Save and queue experiments on tiny data; time `dvc exp show` and `dvc queue status`."""
    import json

    import yaml
    from dvc.repo import Repo

    sys.path.insert(0, str(REPO))
    from tests.helpers import run, tiny_repo_after_repro

    base = Path(tempfile.mkdtemp(prefix="mnistflow-exps-"))
    old_cwd, old_env = Path.cwd(), dict(os.environ)
    try:
        start = time.perf_counter()
        repo, env = tiny_repo_after_repro(base)
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-q", "-m", "baseline: tiny data after dvc repro"], repo, env)
        sys.stdout.write(f"tiny repo after dvc repro: {time.perf_counter() - start:.1f} s\n")
        os.environ.clear()
        os.environ.update({**env, "MNISTFLOW_LOG": "WARNING"})
        os.chdir(repo)  # DVC's API works on the current directory's repo
        dvc_repo = Repo(str(repo))
        params_file, metrics_file = repo / "params.yaml", repo / "outputs/evaluate/metrics.json"
        params_text, metrics = params_file.read_text(), json.loads(metrics_file.read_text())
        dvc = [str(BIN / "dvc")]
        show_env = {**env, "COLUMNS": "250"}
        rows: dict[int, dict[str, float]] = {}
        saved = 0
        for n in sizes:  # saved experiments, one new commit each
            start = time.perf_counter()
            for i in range(saved, n):
                params = yaml.safe_load(params_text)
                params["train"]["alpha"] = 1e-5 * (i + 1)
                params_file.write_text(yaml.safe_dump(params, sort_keys=False))
                metrics_file.write_text(json.dumps({**metrics, "test_accuracy": 0.9 + i * 1e-4}))
                dvc_repo.experiments.save(name=f"exp-{i:04d}", force=True)
            saved = n
            made = time.perf_counter() - start
            show, show_cpu = timed([*dvc, "exp", "show", "--no-pager"], show_env, repo)
            again, again_cpu = timed([*dvc, "exp", "show", "--no-pager"], show_env, repo)
            changed, changed_cpu = timed(
                [*dvc, "exp", "show", "--no-pager", "--only-changed"], show_env, repo
            )
            rows[n] = {"n": n, "saving": made, "show": show, "show_cpu": show_cpu,
                       "again": again, "again_cpu": again_cpu, "changed": changed,
                       "changed_cpu": changed_cpu, "load": os.getloadavg()[0]}  # fmt: skip
            sys.stdout.write(f"{rows[n]}\n")
            sys.stdout.flush()
        run(["git", "checkout", "--", "params.yaml", str(metrics_file)], repo, env)
        queued = 0
        for n in sizes:  # queued experiments (no worker started)
            start = time.perf_counter()
            for i in range(queued, n):
                dvc_repo.experiments.run(
                    params=[f"train.alpha={2e-5 * (i + 1)}"], queue=True, name=f"q-{i:04d}"
                )
            queued = n
            made = time.perf_counter() - start
            status, status_cpu = timed([*dvc, "queue", "status"], env, repo)
            rows[n].update(queueing=made, status=status, status_cpu=status_cpu)
            sys.stdout.write(f"{n} queued: made in {made:.1f} s, queue status {status:.2f} s\n")
            sys.stdout.flush()
        return [rows[n] for n in sizes]
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        if keep:
            sys.stdout.write(f"kept: {base}\n")
        else:
            shutil.rmtree(base, ignore_errors=True)


def figure(path: Path, store: list[dict[str, float]], exps: list[dict[str, float]]) -> None:
    """Log-log plot of each measure against N: the store's and DVC's side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (
        (axes[0], store, (("leaderboard_cpu", "leaderboard (CPU s)"),
                          ("register_cpu", "register (CPU s)"),
                          ("ui", "UI runs table (wall s)"),
                          ("search", "UI: server's runs/search of 100 (wall s)")),
         "runs in the sqlite store"),
        (axes[1], exps, (("show_cpu", "dvc exp show, first after saving (CPU s)"),
                         ("again_cpu", "dvc exp show, again (CPU s)"),
                         ("changed_cpu", "dvc exp show --only-changed (CPU s)"),
                         ("status_cpu", "dvc queue status (CPU s)")),
         "DVC experiments (saved; queued for queue status)"),
    )  # fmt: skip
    for ax, rows, columns, xlabel in panels:
        if len(rows) < 2:
            ax.set_axis_off()
            continue
        sizes = [r["n"] for r in rows]
        for key, label in columns:
            ax.loglog(sizes, [r[key] for r in rows], marker="o", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("read-side cost against size (2 shared cores; CPU seconds where marked)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    sys.stdout.write(f"figure: {path}\n")


def main() -> None:
    """Fill, time and print one row per store size and per experiment count."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--exp-sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument(
        "--figure", type=Path, default=REPO / "reports" / "benchmarks" / "store_growth.png"
    )
    parser.add_argument("--no-ui", action="store_true", help="skip the browser measurement")
    parser.add_argument("--no-store", action="store_true", help="skip the MLflow store part")
    parser.add_argument("--no-dvc", action="store_true", help="skip the DVC experiments part")
    parser.add_argument("--keep", action="store_true", help="keep the experiments' repo")
    parser.add_argument(
        "--repeat", type=int, default=1, help="time leaderboard and register this many times"
    )
    args = parser.parse_args()
    store = [] if args.no_store else store_rows(args.sizes, not args.no_ui, args.repeat)
    exps = [] if args.no_dvc else dvc_rows(sorted(args.exp_sizes), args.keep)

    lines = []
    if store:
        lines += ["", "| runs | leaderboard, s (CPU s) | register, s (CPU s) | UI runs table, "
                  "first page (s) | Chromium, empty page (s) | server: runs/search of 100 (s) "
                  "| load |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['n']} | {r['leaderboard']:.2f} ({r['leaderboard_cpu']:.2f}) | "
                  f"{r['register']:.2f} ({r['register_cpu']:.2f}) | {r['ui']:.2f} | "
                  f"{r['blank']:.2f} | {r['search']:.2f} | {r['load']:.1f} |"
                  for r in store]  # fmt: skip
    if exps:
        lines += ["", "| experiments | `dvc exp show`, s (CPU s) | again | `--only-changed` "
                  "| `dvc queue status` | making them (s): saved, queued | load |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['n']} | {r['show']:.2f} ({r['show_cpu']:.2f}) | {r['again']:.2f} "
                  f"({r['again_cpu']:.2f}) | {r['changed']:.2f} ({r['changed_cpu']:.2f}) | "
                  f"{r['status']:.2f} ({r['status_cpu']:.2f}) | {r['saving']:.0f}, "
                  f"{r['queueing']:.0f} | {r['load']:.1f} |" for r in exps]  # fmt: skip
    sys.stdout.write("\n".join(lines) + f"\n\nload average: {os.getloadavg()}\n")
    if len(store) > 1 or len(exps) > 1:
        figure(args.figure, store, exps)


if __name__ == "__main__":
    main()
