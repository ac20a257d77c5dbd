"""Two machines, one team: two git clones sharing a real tracking server (PostgreSQL, basic
auth), a bare git repository as ``origin`` and a folder as the DVC remote.

Clone A runs the pipeline and two queued experiments against the server and pushes code,
outputs, run-cache and experiments; clone B clones, pulls, and gets A's outputs, experiments
and runs without training, and reproduces A's run. Then both clones run two queue workers
each at the same time, A with DVC's auto-push on.
One module-scoped scenario (tiny synthetic data) is run once; the tests check its steps.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from mnistflow.tracking import query
from mnistflow.util.fileio import read_json
from tests.helpers import (
    copy_repo,
    run,
    start_queue,
    use_tiny_dataset,
    workspace_env,
    write_idx_dataset,
)
from tests.services import TeamServer, team_server_fixture  # noqa: F401  (session fixture)

pytestmark = pytest.mark.e2e

MNISTFLOW = str(Path(sys.executable).parent / "mnistflow")
EXPERIMENT = "mnist-mlp"
A_EXPS = {"a-alpha": "train.alpha=0.001", "a-wide": "train.hidden_layer_sizes=[24]"}
# the concurrency round: two experiments queued in each clone, two workers in each
ROUND = {
    "A": {"a-c1": "train.alpha=0.0003", "a-c2": "train.alpha=0.003"},
    "B": {"b-c1": "train.alpha=0.0005", "b-c2": "train.alpha=0.005"},
}
# what `dvc pull` must bring to B byte for byte (DVC-cached outputs of every stage)
PULLED = ["models/model.pkl", "data/unpacked/arrays.npz", "data/encoded/train.npz"]


@dataclass
class Team:
    """The scenario's places and what happened there."""

    server: TeamServer
    a: Path
    b: Path
    env_a: dict[str, str]
    env_b: dict[str, str]  # no MNIST mirror: B can only get data from the DVC remote
    baseline_run: str  # A's `dvc repro`
    runs_before_pull: set[str] = field(default_factory=set)
    runs_after_pull: set[str] = field(default_factory=set)
    status_after_pull: str = ""
    shown_exps: set[str] = field(default_factory=set)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def client_for(team: TeamServer):
    """An MlflowClient on the server as the team's user (credentials from the environment)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(team.uri)


@pytest.fixture(scope="module")
def as_user(team_server: TeamServer) -> Iterator[None]:
    """This process talks to the server as the team's user for the module's tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", team_server.user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", team_server.password)
        yield


def server_run_ids(team: TeamServer) -> set[str]:
    client = client_for(team)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return set()
    return {r.info.run_id for r in client.search_runs([exp.experiment_id], max_results=1000)}


def queue(repo: Path, env: dict[str, str], exps: dict[str, str]) -> None:
    for name, setting in exps.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", setting], repo, env)


def wait_queue(repo: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [MNISTFLOW, "wait-queue", "--poll", "2", "--timeout", "1500"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_queue(repo: Path, env: dict[str, str], waiter: subprocess.Popen) -> None:
    out, _ = waiter.communicate(timeout=1600)
    run(["dvc", "queue", "stop"], repo, env, check=False)  # no idle workers left behind
    assert waiter.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def team(team_server: TeamServer, as_user: None, tmp_path_factory: pytest.TempPathFactory) -> Team:
    base = tmp_path_factory.mktemp("team-clones")
    mirror = base / "tiny-mirror"
    files = write_idx_dataset(mirror)
    seed = copy_repo(
        base / "seed", use_tiny_dataset(files, train={"hidden_layer_sizes": [16], "max_iter": 5})
    )
    origin = base / "origin.git"
    run(["git", "clone", "-q", "--bare", str(seed), str(origin)], base)
    env_a = team_server.client_env(workspace_env(mirror))
    env_b = team_server.client_env(workspace_env())

    # Machine A: the pipeline and two queued experiments, against the server; then push.
    # The DVC remote is the committed default `team` (../../mnistflow-dvc-remote from
    # .dvc/, i.e. <base>/mnistflow-dvc-remote for both clones): no per-clone setting.
    a = base / "A"
    run(["git", "clone", "-q", str(origin), str(a)], base, env_a)
    run(["dvc", "repro"], a, env_a)
    run(["git", "add", "-A"], a, env_a)
    run(["git", "commit", "-q", "-m", "baseline on the tiny data"], a, env_a)
    queue(a, env_a, A_EXPS)
    start_queue(a, env_a, 2)
    finish_queue(a, env_a, wait_queue(a, env_a))
    run(["git", "push", "-q", "origin", "HEAD"], a, env_a)
    run(["dvc", "push", "--run-cache"], a, env_a)  # = make push
    run(["dvc", "exp", "push", "origin"], a, env_a)  # the experiments of HEAD, and their cache
    baseline_run = read_json(a / "outputs/train/run.json")["run_id"]

    # Machine B: clone, pull; no training may happen here.
    b = base / "B"
    run(["git", "clone", "-q", str(origin), str(b)], base, env_b)
    t = Team(team_server, a, b, env_a, env_b, baseline_run)
    t.runs_before_pull = server_run_ids(team_server)
    run(["dvc", "pull", "--run-cache"], b, env_b)  # = make pull
    t.status_after_pull = run(["dvc", "status", "--json"], b, env_b).stdout
    t.runs_after_pull = server_run_ids(team_server)
    run(["dvc", "exp", "pull", "origin"], b, env_b)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], b, env_b).stdout)
    t.shown_exps = {e["name"] for row in shown for e in (row.get("experiments") or [])}
    return t


def test_a_logged_everything_to_the_server_and_committed_nothing_machine_specific(
    team: Team,
) -> None:
    runs = server_run_ids(team.server)
    assert team.baseline_run in runs
    for name in A_EXPS:
        query.experiment_run(team.server.uri, EXPERIMENT, name)  # raises if not FINISHED
    assert not (team.a / "mlflow.db").exists()  # nothing went to a local store
    tracked = run(["git", "ls-files", "outputs", "reports", "dvc.lock"], team.a).stdout.split()
    assert "outputs/train/run.json" in tracked
    for name in tracked:
        if name.endswith((".json", ".md", ".csv", ".lock")):
            text = (team.a / name).read_text()
            assert str(team.a) not in text, name
            assert str(team.a.parent) not in text, name
            assert "sqlite:" not in text, name
            assert team.server.uri not in text, name


def test_b_pulls_a_outputs_without_training(team: Team) -> None:
    assert team.runs_after_pull == team.runs_before_pull  # no MLflow run created by B
    assert json.loads(team.status_after_pull) == {}  # `dvc status`: nothing to reproduce
    for name in PULLED:
        assert md5(team.b / name) == md5(team.a / name), name
    assert read_json(team.b / "outputs/train/run.json")["run_id"] == team.baseline_run
    assert not (team.b / "mlflow.db").exists()


def test_b_sees_a_experiments_and_finds_their_runs(team: Team) -> None:
    assert set(A_EXPS) <= team.shown_exps
    client = client_for(team.server)
    alpha = client.get_run(query.experiment_run(team.server.uri, EXPERIMENT, "a-alpha"))
    wide = client.get_run(query.experiment_run(team.server.uri, EXPERIMENT, "a-wide"))
    assert alpha.data.params["train.alpha"] == "0.001"
    assert wide.data.params["train.hidden_layer_sizes"] == "[24]"
    assert alpha.info.status == wide.info.status == "FINISHED"


def test_b_applies_an_experiment_from_the_remote_without_retraining(team: Team) -> None:
    b, env = team.b, team.env_b
    before = server_run_ids(team.server)
    baseline_model = md5(b / "models/model.pkl")
    try:
        run(["dvc", "exp", "apply", "a-wide"], b, env)
        wide_run = query.experiment_run(team.server.uri, EXPERIMENT, "a-wide")
        assert read_json(b / "outputs/train/run.json")["run_id"] == wide_run
        assert yaml.safe_load((b / "params.yaml").read_text())["train"]["hidden_layer_sizes"] == [
            24
        ]
        lock = yaml.safe_load((b / "dvc.lock").read_text())
        (model_out,) = [o for o in lock["stages"]["train"]["outs"] if o["path"].endswith(".pkl")]
        assert md5(b / "models/model.pkl") == model_out["md5"] != baseline_model
        assert json.loads(run(["dvc", "status", "--json"], b, env).stdout) == {}
        assert server_run_ids(team.server) == before  # restored, not retrained
    finally:
        run(["git", "reset", "-q", "--hard"], b, env)
        run(["dvc", "checkout", "--force"], b, env)
    assert md5(b / "models/model.pkl") == baseline_model


def test_b_leaderboard_lists_a_runs(team: Team) -> None:
    run([MNISTFLOW, "leaderboard", "--all-columns"], team.b, team.env_b)  # with run ids
    board = (team.b / "reports/leaderboard.md").read_text()
    assert team.baseline_run in board
    for name in A_EXPS:
        assert query.experiment_run(team.server.uri, EXPERIMENT, name) in board
        assert name in board


def test_b_without_credentials_gets_401_and_writes_nothing(team: Team) -> None:
    search = f"{team.server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(search, timeout=10)
    assert e.value.code == 401
    env = dict(team.env_b)
    del env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]
    board = team.b / "reports/leaderboard.md"
    board.unlink(missing_ok=True)
    before = server_run_ids(team.server)
    for cmd in (["leaderboard"], ["reproduce", team.baseline_run]):
        proc = run([MNISTFLOW, *cmd], team.b, env, check=False)
        assert proc.returncode == 4, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if "credentials refused" in line]
        assert len(errors) == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    assert not board.exists()
    assert server_run_ids(team.server) == before
    assert len(run(["git", "worktree", "list"], team.b).stdout.splitlines()) == 1


def test_b_reproduces_a_run_with_identical_metrics(team: Team) -> None:
    before = server_run_ids(team.server)
    proc = run([MNISTFLOW, "reproduce", team.baseline_run], team.b, team.env_b, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "result: identical" in proc.stdout
    (new,) = server_run_ids(team.server) - before
    rerun = client_for(team.server).get_run(new)
    assert rerun.data.tags["reproduces"] == team.baseline_run
    assert rerun.info.status == "FINISHED"


@pytest.fixture(scope="module")
def concurrent_round(team: Team) -> dict[str, tuple[Path, dict[str, str]]]:
    """Two experiments queued in each clone, then two workers in A and two in B at once.

    A pushes its experiments by itself (DVC's auto-push, as docs/team.md sets it up)."""
    clones = {"A": (team.a, team.env_a), "B": (team.b, team.env_b)}
    dvc_remote = team.a.parent / "mnistflow-dvc-remote"  # the default's folder, absolute
    run(["dvc", "remote", "modify", "--local", "team", "url", str(dvc_remote)], *clones["A"])
    run(["dvc", "config", "--local", "exp.auto_push", "true"], *clones["A"])
    run(["dvc", "config", "--local", "exp.git_remote", "origin"], *clones["A"])
    for clone, exps in ROUND.items():
        queue(*clones[clone], exps)
    for repo, env in clones.values():  # returns at once: the workers are detached
        start_queue(repo, env, 2)
    waiters = {clone: wait_queue(*clones[clone]) for clone in clones}
    for clone, waiter in waiters.items():
        finish_queue(*clones[clone], waiter)
    return clones


def test_four_queue_workers_in_two_clones_lose_no_run(team: Team, concurrent_round) -> None:
    client = client_for(team.server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    names = {n for exps in ROUND.values() for n in exps}
    found = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if r.data.tags.get("dvc_exp_name") in names
    ]
    assert sorted(r.data.tags["dvc_exp_name"] for r in found) == sorted(names)
    assert all(r.info.status == "FINISHED" for r in found), [r.info.status for r in found]
    running = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert running == []
    spans = sorted((r.info.start_time, r.info.end_time) for r in found)
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    print(f"4 queued runs in 2 clones: at most {overlap} MLflow runs open at once")


def test_concurrent_workers_logged_no_error(team: Team, concurrent_round) -> None:
    for clone, (repo, env) in concurrent_round.items():
        for name in ROUND[clone]:
            log = run(["dvc", "queue", "logs", name], repo, env).stdout
            assert "Reproducing experiment" in log, log[-2000:]
            assert re.search(r"Traceback|database is locked|HTTP 5\d\d", log) is None, log[-2000:]


def test_auto_push_sent_a_experiments_to_origin(team: Team, concurrent_round) -> None:
    refs = run(["git", "ls-remote", "origin", "refs/exps/*"], team.b, team.env_b).stdout
    pushed = {line.rsplit("/", 1)[-1] for line in refs.splitlines()}
    assert set(ROUND["A"]) <= pushed
    assert not set(ROUND["B"]) & pushed  # B did not turn auto-push on
    for name in ROUND["A"]:
        log = run(["dvc", "queue", "logs", name], team.a, team.env_a).stdout
        assert "Pushing experiment to 'origin'" in log, log[-2000:]
        assert "Something went wrong" not in log, log[-2000:]
    run(["dvc", "exp", "pull", "origin", "a-c1"], team.b, team.env_b)  # ref + outputs
    names = run(["dvc", "exp", "list", "--name-only"], team.b, team.env_b).stdout.split()
    assert "a-c1" in names
