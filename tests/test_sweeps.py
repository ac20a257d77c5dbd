"""Sweeps: dvc exp run and a queued grid on two workers, all into the workspace's MLflow store.

One module-scoped sweep (real DVC, real sqlite store, tiny synthetic dataset) is run once;
the tests below check its results.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.helpers import run, start_queue, tiny_repo_after_repro

pytestmark = pytest.mark.e2e

MNISTFLOW = str(Path(sys.executable).parent / "mnistflow")
GRID = {  # (train.alpha, train.hidden_layer_sizes) as MLflow logs them
    ("0.0001", "[8]"),
    ("0.0001", "[16, 8]"),
    ("0.001", "[8]"),
    ("0.001", "[16, 8]"),
}


@dataclass
class Sweep:
    repo: Path
    env: dict[str, str]
    baseline_run: str  # the run of the plain `dvc repro`
    exp_name: str  # the `dvc exp run -S train.alpha=0.001` experiment
    grid_names: list[str]  # the queued grid's experiments
    bad_name: str  # a queued experiment with an invalid param
    wait: object  # the CompletedProcess of `mnistflow wait-queue`
    logs: dict[str, str]  # `dvc queue logs <name>` per queued experiment


def queued_names(output: str) -> list[str]:
    """Experiment names from `dvc exp run --queue` output, in queue order."""
    return re.findall(r"Queued experiment '([^']+)'", output)


def runs(repo: Path) -> list[Run]:
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist-mlp")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    repo, env = tiny_repo_after_repro(tmp_path_factory.mktemp("sweep"))
    baseline_run = json.loads((repo / "outputs/train/run.json").read_text())["run_id"]

    out = run(["dvc", "exp", "run", "-S", "train.alpha=0.001"], repo, env).stdout
    exp_name = re.search(r"Ran experiment\(s\): (\S+)", out)[1]

    grid = run(
        [
            "dvc",
            "exp",
            "run",
            "--queue",
            "-S",
            "train.alpha=0.0001,0.001",
            "-S",
            "train.hidden_layer_sizes=[8],[16,8]",
        ],
        repo,
        env,
    ).stdout
    bad = run(["dvc", "exp", "run", "--queue", "-S", "train.alpha=-1"], repo, env).stdout
    start_queue(repo, env, 2)
    wait = run(
        [MNISTFLOW, "wait-queue", "--poll", "2", "--timeout", "1500"], repo, env, check=False
    )
    names = [*queued_names(grid), *queued_names(bad)]
    logs = {n: run(["dvc", "queue", "logs", n], repo, env, check=False).stdout for n in names}
    run(["dvc", "queue", "stop"], repo, env, check=False)  # no idle workers left behind
    return Sweep(
        repo, env, baseline_run, exp_name, queued_names(grid), queued_names(bad)[0], wait, logs
    )


def test_wait_queue_names_the_failed_experiment(sweep: Sweep) -> None:
    assert sweep.wait.returncode == 1, sweep.wait.stderr
    assert f"failed: {sweep.bad_name}" in sweep.wait.stderr
    assert "train.alpha" in sweep.wait.stderr  # the end of its log says why
    for name in sweep.grid_names:
        assert name not in sweep.wait.stderr


def test_every_experiment_is_one_run_in_the_workspace_store(sweep: Sweep) -> None:
    all_runs = runs(sweep.repo)
    by_exp: dict[str | None, list[Run]] = {}
    for r in all_runs:
        by_exp.setdefault(r.data.tags.get("dvc_exp_name"), []).append(r)

    (baseline,) = by_exp.pop(None)  # the plain `dvc repro`: no experiment name
    assert baseline.info.run_id == sweep.baseline_run
    assert baseline.info.run_name == f"baseline@{baseline.data.tags['git_commit'][:7]}"
    assert baseline.data.tags["is_baseline"] == "true"
    (single,) = by_exp.pop(sweep.exp_name)
    assert single.data.params["train.alpha"] == "0.001"
    assert single.info.run_name == sweep.exp_name

    assert len(sweep.grid_names) == 4
    assert set(by_exp) == set(sweep.grid_names), "4 runs, one per queued experiment"
    grid_runs = [rs[0] for rs in by_exp.values() if len(rs) == 1]
    assert len(grid_runs) == 4
    assert all(r.info.status == "FINISHED" for r in grid_runs)
    assert {
        (r.data.params["train.alpha"], r.data.params["train.hidden_layer_sizes"]) for r in grid_runs
    } == GRID
    assert all("test_accuracy" in r.data.metrics for r in grid_runs)
    assert len(all_runs) == 6  # the failed experiment stopped before starting a run


def test_exp_names_match_dvc_exp_show(sweep: Sweep) -> None:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], sweep.repo, sweep.env).stdout)
    names = {e["name"] for row in shown for e in (row.get("experiments") or [])}
    assert {sweep.exp_name, *sweep.grid_names} <= names


def test_no_lock_errors_and_no_store_in_temp_workspaces(sweep: Sweep) -> None:
    for name in sweep.grid_names:
        log = sweep.logs[name]
        assert "Reproducing experiment" in log, log
        assert "database is locked" not in log
        assert "Traceback" not in log
    tmp = sweep.repo / ".dvc" / "tmp"
    assert not list(tmp.rglob("mlflow.db*"))
    assert not list(tmp.rglob("mlartifacts"))
    assert (sweep.repo / "mlflow.db").is_file()


def test_queued_workers_share_the_cores(sweep: Sweep) -> None:
    """Two workers ran at once, each fitting with train.threads (1) BLAS threads: 2 on 2 cores."""
    for name in sweep.grid_names:
        assert re.search(r"features \(onehot targets\), 1 BLAS thread(?!s)", sweep.logs[name]), (
            sweep.logs[name]
        )
    grid = [r for r in runs(sweep.repo) if r.data.tags.get("dvc_exp_name") in sweep.grid_names]
    spans = sorted((r.info.start_time, r.info.end_time) for r in grid)
    overlapping = any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    assert overlapping, f"no two experiments ran at once: {spans}"


def test_exp_show_has_the_columns_that_matter(sweep: Sweep) -> None:
    header = run(["dvc", "exp", "show", "--csv"], sweep.repo, sweep.env).stdout.splitlines()[0]
    columns = header.split(",")
    for column in ("train.alpha", "train.hidden_layer_sizes", "test_accuracy", "delta_to_baseline"):
        assert column in columns


def test_diffs_between_two_experiments(sweep: Sweep) -> None:
    by_name = {r.data.tags.get("dvc_exp_name"): r for r in runs(sweep.repo)}
    a, b = next(
        (x, y)
        for x in sweep.grid_names
        for y in sweep.grid_names
        if by_name[x].data.params["train.hidden_layer_sizes"] == "[8]"
        and by_name[y].data.params["train.hidden_layer_sizes"] == "[16, 8]"
        and by_name[x].data.params["train.alpha"] == by_name[y].data.params["train.alpha"]
    )
    cmd = ["dvc", "params", "diff", "--json", a, b]
    params = json.loads(run(cmd, sweep.repo, sweep.env).stdout)["params.yaml"]
    assert params["train.hidden_layer_sizes"] == {"old": "[8]", "new": "[16, 8]"}
    assert "train.alpha" not in params  # only what changed

    cmd = ["dvc", "metrics", "diff", "--json", a, b]
    metrics = json.loads(run(cmd, sweep.repo, sweep.env).stdout)
    loss = metrics["outputs/train/metrics.json"]["final_loss"]
    assert loss["old"] != loss["new"]
    assert loss["new"] == pytest.approx(by_name[b].data.metrics["train_loss"], abs=1e-7)

    text = run(["dvc", "metrics", "diff", a, b], sweep.repo, sweep.env).stdout
    assert "final_loss" in text
    assert a in text

    plots = json.loads(run(["dvc", "plots", "diff", "--json", a, b], sweep.repo, sweep.env).stdout)[
        "data"
    ]
    (loss_plot,) = plots["outputs/train/loss.csv"]
    assert loss_plot["revisions"] == [a, b]
    revs = {v["rev"] for v in loss_plot["content"]["data"]["values"]}
    assert revs == {a, b}
