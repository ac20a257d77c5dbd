"""How the read side grows: leaderboard, register and the UI at N runs; DVC at N experiments.

Grows one store through N runs (default 100, then 10,000) shaped like the pipeline's (the
params, stepped loss, metrics and tags it logs), through MLflow's client API: a champion run
with a tiny real model and an accuracy above every other run's, so `register` registers the
same run at each N, then the rest, one `log_batch` each. Then times, as a user runs them,
`mnistflow leaderboard` and `mnistflow register` (alternated, --repeat times, median), on
two stores:

- sqlite: built once and cached under --cache (~/.cache/mnistflow-bench-store), each size a
  snapshot; every timing works on a fresh copy. Also the MLflow UI's runs table in headless
  Chromium (first page with run names shown), Chromium on an empty page and the server's
  answer to the table's `runs/search` request, to tell browser start-up from the store's cost.
- server: a throw-away team server (`mnistflow server --pg-dir`, PostgreSQL, as
  benchmarks/team.py starts it), filled by --threads writers at once.

Prints each size's row, then the ratio of each size to the previous one (wall and CPU).

Then, in a copy of the repo on tiny data after one real `dvc repro`, it saves N experiments
(`dvc exp save` through DVC's Python API, each with its own train.alpha and metrics) and
queues N more (`dvc exp run --queue`), timing `dvc exp show` and `dvc queue status` at each N.
Prints both tables and writes a log-log figure.

Usage: python benchmarks/store_growth.py [--sizes 100 10000] [--stores sqlite server]
       [--repeat 3] [--threads 8] [--cache DIR] [--exp-sizes 10 50 100]
       [--figure reports/benchmarks/store_growth.png] [--no-ui] [--no-store] [--no-dvc]

Only leaderboard and register: --no-ui --no-dvc. Each register after the first finds the run
registered already (it keeps the version instead of making one).
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import mnistflow  # noqa: F401  (pins the floating-point environment, see benchmarks/ruff.toml)

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnistflow-bench-store"
nan = float("nan")
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


def run_data(i: int, now: int, accuracy: float | None = None) -> tuple[list, list, list]:
    """Run i's metrics, params and tags, shaped like the pipeline's (32 params, a 20-step
    loss, 13 more metrics, tags); its own seed, so runs logged in any order are the same."""
    from mlflow.entities import Metric, Param, RunTag

    rng = np.random.default_rng(i)
    acc = float(0.95 + 0.03 * rng.random()) if accuracy is None else accuracy
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
        RunTag("dvc_exp_name", f"exp-{i:05d}"),
        RunTag("is_baseline", "false"),
        RunTag("dataset", "mnist"),  # leaderboard and register rank one dataset's runs
    ]
    return metrics, params, tags


def log_runs(uri: str, exp: str, first: int, last: int, threads: int = 1) -> None:
    """Runs first..last-1, FINISHED: 3 requests each (create, one log_batch, terminate), on
    ``threads`` threads (a server answers several at once; sqlite has one writer)."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    now = int(time.time() * 1000)

    def one(i: int) -> None:
        run = client.create_run(exp, run_name=f"exp-{i:05d}", start_time=now + i)
        metrics, params, tags = run_data(i, now)
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run.info.run_id, "FINISHED")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(first, last)))  # list(): an error in any run is raised here


def log_champion(uri: str, exp: str) -> None:
    """Run 0: accuracy 0.99, above every other run's 0.95-0.98, with a real (tiny) model, so
    that `register` has the same best run to register at every size."""
    from mnistflow.serving.logged_model import conda_env

    import mlflow
    from mlflow.tracking import MlflowClient
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    run = client.create_run(exp, run_name="exp-00000", start_time=now)
    metrics, params, tags = run_data(0, now, accuracy=0.99)
    client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run.info.run_id):  # ends FINISHED
        rng = np.random.default_rng(0)
        with warnings.catch_warnings():  # a 5-epoch stand-in: not converging is the point
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = MLPClassifier((2,), max_iter=5).fit(rng.random((20, 4)), np.arange(20) % 2)
        mlflow.sklearn.log_model(
            model,
            name="model",
            conda_env=conda_env(),  # the pipeline's: no pip version for MLflow to look up
            skops_trusted_types=["sklearn.neural_network._stochastic_optimizers.AdamOptimizer"],
        )


def fill(uri: str, n: int, root: Path) -> None:
    """A new experiment with N runs: the champion (run 0, with a model) and N-1 more."""
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(root / "art").as_uri())
    log_champion(uri, exp)
    log_runs(uri, exp, 1, n)


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


FILL_VERSION = 2  # bump when run_data/log_champion change: cached stores are rebuilt


def cached_sqlite(sizes: list[int], cache: Path) -> dict[int, Path]:
    """sqlite stores of each size (one store grown through the sizes), built once under
    ``cache`` and reused: building 10,000 runs costs minutes. Built on tmpfs where there is
    one (each write is a commit: ~25 ms a run there, ~110 ms on this disk)."""
    folder = cache / f"sqlite-v{FILL_VERSION}"
    snapshots = {n: folder / f"mlflow-{n}.db" for n in sizes}
    if all(path.exists() for path in snapshots.values()):
        sys.stdout.write(f"sqlite stores from the cache: {folder}\n")
        return snapshots
    from mlflow.tracking import MlflowClient

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shm = Path("/dev/shm")
    build = Path(tempfile.mkdtemp(prefix="mnistflow-growth-", dir=shm if shm.is_dir() else None))
    try:
        uri = f"sqlite:///{build / 'mlflow.db'}"
        start = time.perf_counter()
        # the champion's model stays in the cache: the snapshots point at it
        exp = MlflowClient(uri).create_experiment(EXPERIMENT, (folder / "art").as_uri())
        log_champion(uri, exp)
        done = 1
        for n in sorted(sizes):
            log_runs(uri, exp, done, n)
            done = n
            shutil.copy(build / "mlflow.db", folder / f".mlflow-{n}.db.tmp")
            (folder / f".mlflow-{n}.db.tmp").rename(snapshots[n])  # complete, or absent
            took = time.perf_counter() - start
            sys.stdout.write(f"sqlite store of {n} runs built: {took:.0f} s\n")
            sys.stdout.flush()
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return snapshots


def time_commands(env: dict[str, str], work: Path, repeat: int) -> dict[str, float | list]:
    """`mnistflow leaderboard` and `mnistflow register`, alternated ``repeat`` times: the
    median wall and CPU seconds of each (and every pair when repeat > 1)."""
    cli = str(BIN / "mnistflow")
    times: dict[str, list[tuple[float, float]]] = {"leaderboard": [], "register": []}
    for _ in range(repeat):
        for command, seen in times.items():
            seen.append(timed([cli, command], env, work))
    row: dict[str, float | list] = {}
    for command, seen in times.items():
        wall, cpu = (float(x) for x in np.median(seen, axis=0))
        row.update({command: wall, f"{command}_cpu": cpu})
        if repeat > 1:
            row[f"{command}_all"] = [tuple(round(x, 2) for x in t) for t in seen]
    return row


def workspace(prefix: str) -> Path:
    """A temp folder where `mnistflow` runs: params.yaml of the repo and a .dvc/ marker."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    (work / ".dvc").mkdir()
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    return work


def emit(row: dict) -> dict:
    sys.stdout.write(f"{row}\n")
    sys.stdout.flush()
    return row


def sqlite_rows(
    sizes: list[int], with_ui: bool, repeat: int, cache: Path
) -> list[dict[str, float]]:
    """Leaderboard, register (and the UI) on a copy of the cached sqlite store of each size."""
    snapshots = cached_sqlite(sizes, cache)
    rows = []
    for n in sorted(sizes):
        work = workspace(f"mnistflow-growth-{n}-")
        try:
            shutil.copy(snapshots[n], work / "mlflow.db")  # register writes to it
            uri = f"sqlite:///{work / 'mlflow.db'}"
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MNISTFLOW_LOG": "WARNING"}
            row = {"store": "sqlite", "n": n, **time_commands(env, work, repeat)}
            nan = float("nan")
            ui, blank, search = ui_first_page(uri, env, work) if with_ui else (nan, nan, nan)
            row.update(ui=ui, blank=blank, search=search, load=os.getloadavg()[0])
            rows.append(emit(row))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def server_rows(sizes: list[int], repeat: int, threads: int) -> list[dict[str, float]]:
    """A throw-away team server (benchmarks/team.py's), one store grown through the sizes
    with ``threads`` writers; leaderboard and register against it at each size."""
    import team  # benchmarks/team.py: start_server, the user it creates

    from mlflow.tracking import MlflowClient

    base = Path(tempfile.mkdtemp(prefix="mnistflow-growth-server-", dir="/tmp"))
    base.chmod(0o755)  # the cluster runs as `postgres` when this runs as root
    proc, uri = team.start_server(base)
    saved = dict(os.environ)
    os.environ.update(
        {"MLFLOW_TRACKING_USERNAME": team.USER, "MLFLOW_TRACKING_PASSWORD": team.USER_PW}
    )
    work = workspace("mnistflow-growth-server-work-")
    rows = []
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MNISTFLOW_LOG": "WARNING"}
        exp = MlflowClient(uri).create_experiment(EXPERIMENT)
        log_champion(uri, exp)
        done, start = 1, time.perf_counter()
        for n in sorted(sizes):
            log_runs(uri, exp, done, n, threads)
            done = n
            filled = time.perf_counter() - start
            row = {"store": "server", "n": n, "fill": filled, **time_commands(env, work, repeat)}
            rows.append(emit({**row, "load": os.getloadavg()[0]}))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        team.stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
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
    store_columns = (("leaderboard_cpu", "leaderboard (CPU s)"),
                     ("register_cpu", "register (CPU s)"),
                     ("ui", "UI runs table (wall s)"),
                     ("search", "UI: server's runs/search of 100 (wall s)"))  # fmt: skip
    exp_columns = (("show_cpu", "dvc exp show, first after saving (CPU s)"),
                   ("again_cpu", "dvc exp show, again (CPU s)"),
                   ("changed_cpu", "dvc exp show --only-changed (CPU s)"),
                   ("status_cpu", "dvc queue status (CPU s)"))  # fmt: skip
    groups = sorted({r["store"] for r in store})
    store_series = [
        (f"{name}: {label}", [r for r in store if r["store"] == name], key)
        for name in groups
        for key, label in store_columns
    ]
    exp_series = [(label, exps, key) for key, label in exp_columns]
    panels = (
        (axes[0], store_series, "runs in the store"),
        (axes[1], exp_series, "DVC experiments (saved; queued for queue status)"),
    )
    for ax, series, xlabel in panels:
        drawn = False
        for label, rows, key in series:
            values = [r.get(key, nan) for r in rows]
            if len(rows) < 2 or all(v != v for v in values):  # nothing measured
                continue
            ax.loglog([r["n"] for r in rows], values, marker="o", label=label)
            drawn = True
        if not drawn:
            ax.set_axis_off()
            continue
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("read-side cost against size (2 shared cores; CPU seconds where marked)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    sys.stdout.write(f"figure: {path}\n")


def main() -> None:
    """Fill, time and print one row per store and size, and per experiment count."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10000])
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "server"],
                        default=["sqlite", "server"])  # fmt: skip
    parser.add_argument("--exp-sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument(
        "--figure", type=Path, default=REPO / "reports" / "benchmarks" / "store_growth.png"
    )
    parser.add_argument("--cache", type=Path, default=CACHE, help="where built stores are kept")
    parser.add_argument("--threads", type=int, default=8, help="writers filling the server")
    parser.add_argument("--no-ui", action="store_true", help="skip the browser measurement")
    parser.add_argument("--no-store", action="store_true", help="skip the MLflow store part")
    parser.add_argument("--no-dvc", action="store_true", help="skip the DVC experiments part")
    parser.add_argument("--keep", action="store_true", help="keep the experiments' repo")
    parser.add_argument(
        "--repeat", type=int, default=3, help="time leaderboard and register this many times"
    )
    args = parser.parse_args()
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # one line per run ended
    sys.stdout.write(f"load average at start: {os.getloadavg()}\n")
    store = []
    if not args.no_store and "sqlite" in args.stores:
        store += sqlite_rows(args.sizes, not args.no_ui, args.repeat, args.cache)
    if not args.no_store and "server" in args.stores:
        store += server_rows(args.sizes, args.repeat, args.threads)
    exps = [] if args.no_dvc else dvc_rows(sorted(args.exp_sizes), args.keep)

    lines = []
    if store:
        lines += ["", "| store | runs | leaderboard, s (CPU s) | register, s (CPU s) | UI runs "
                  "table, first page (s) | Chromium, empty page (s) | server: runs/search of "
                  "100 (s) | load |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['store']} | {r['n']} | {r['leaderboard']:.2f} "
                  f"({r['leaderboard_cpu']:.2f}) | {r['register']:.2f} ({r['register_cpu']:.2f})"
                  f" | {r.get('ui', nan):.2f} | {r.get('blank', nan):.2f} | "
                  f"{r.get('search', nan):.2f} | {r['load']:.1f} |" for r in store]  # fmt: skip
        lines += ["", "| store | runs | leaderboard, wall (CPU) | register, wall (CPU) |",
                  "|---|---|---|---|"]  # fmt: skip
        for name in args.stores:
            mine = [r for r in store if r["store"] == name]
            for small, big in itertools.pairwise(mine):
                ratio = {c: big[c] / small[c] for c in ("leaderboard", "leaderboard_cpu",
                                                       "register", "register_cpu")}  # fmt: skip
                lines.append(
                    f"| {name} | {big['n']} / {small['n']} | {ratio['leaderboard']:.2f}x "
                    f"({ratio['leaderboard_cpu']:.2f}x) | {ratio['register']:.2f}x "
                    f"({ratio['register_cpu']:.2f}x) |"
                )
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
