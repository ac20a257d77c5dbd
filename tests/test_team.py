"""Team scale: the MLflow server (PostgreSQL, basic auth, proxied artifacts), the client
preflight, dataset logging, ``mnistflow sync`` and the DVC remote.

Unit tests cover the pure parts; the e2e tests run against a real PostgreSQL cluster and a real
``mlflow server --app-name basic-auth`` started once per session by tests/services.py.
"""

from __future__ import annotations

import base64
import configparser
import http.server
import itertools
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mnistflow.ops import postgres, sync, tracking_server
from mnistflow.tracking import datasets, store
from mnistflow.util.fileio import read_json
from tests.helpers import (
    REPO_ROOT,
    copy_repo,
    run,
    use_tiny_dataset,
    workspace_env,
    write_idx_dataset,
)
from tests.services import TeamServer, team_server_fixture  # noqa: F401  (session fixture)

ADMIN_PW = "unit-admin-pass-0123"


def options(**changes: object) -> tracking_server.ServerOptions:
    base = {
        "backend_store_uri": "postgresql://u:p@127.0.0.1:5432/mlflow",
        "auth_database_uri": "postgresql://u:p%40x@127.0.0.1:5432/mlflow_auth",
        "artifacts_destination": "/srv/artifacts",
    }
    base.update(changes)
    return tracking_server.ServerOptions(**base)  # type: ignore[arg-type]


@pytest.mark.unit
def test_server_command_is_mlflow_with_auth_postgres_and_proxied_artifacts() -> None:
    cmd = tracking_server.server_command(options())
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    pairs = dict(itertools.pairwise(cmd))
    # the URI holds the database password: it goes by environment (server_env), never argv
    assert "--backend-store-uri" not in cmd
    assert not any("postgresql://" in arg for arg in cmd)
    assert pairs["--artifacts-destination"] == "/srv/artifacts"
    assert pairs["--app-name"] == "basic-auth"
    assert pairs["--host"] == "127.0.0.1"
    assert pairs["--workers"] == "1"
    assert "--serve-artifacts" in cmd
    assert "--allowed-hosts" not in cmd
    wide = tracking_server.server_command(
        options(host="0.0.0.0", allowed_hosts="mlflow.lan,10.0.0.5")
    )
    assert wide[wide.index("--allowed-hosts") + 1] == "mlflow.lan,10.0.0.5"


@pytest.mark.unit
def test_auth_ini_is_read_back_by_configparser_without_a_password() -> None:
    text = tracking_server.auth_ini("postgresql://u:p%40x@h:1/mlflow_auth", "boss", "EDIT")
    parser = configparser.ConfigParser()
    parser.read_string(text)
    section = parser["mlflow"]
    assert section["database_uri"] == "postgresql://u:p%40x@h:1/mlflow_auth"  # % survives
    assert section["admin_username"] == "boss"
    assert section["default_permission"] == "EDIT"
    assert section.getint("auth_cache_ttl_seconds") > 0
    assert "admin_password" not in section
    assert "password1234" not in text


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "message"),
    [("", "no admin password"), ("password1234", "example"), ("short", "at least")],
)
def test_admin_password_refuses_missing_default_and_short(value: str, message: str) -> None:
    with pytest.raises(tracking_server.ServerError, match=message):
        tracking_server.admin_password(None, {tracking_server.ADMIN_PASSWORD_ENV: value})


@pytest.mark.unit
def test_admin_password_from_env_or_file(tmp_path: Path) -> None:
    assert (
        tracking_server.admin_password(None, {tracking_server.ADMIN_PASSWORD_ENV: f" {ADMIN_PW}\n"})
        == ADMIN_PW
    )
    file = tmp_path / "pw"
    file.write_text(ADMIN_PW + "\n")
    assert tracking_server.admin_password(file, {}) == ADMIN_PW
    with pytest.raises(tracking_server.ServerError, match="missing"):
        tracking_server.admin_password(tmp_path / "missing", {})


@pytest.mark.unit
def test_server_env_hands_over_auth_config_and_drops_client_settings(tmp_path: Path) -> None:
    env = tracking_server.server_env(
        {"MLFLOW_TRACKING_URI": "http://x", "MLFLOW_TRACKING_PASSWORD": "p", "PATH": "/bin"},
        "postgresql://u:db-pw@h:1/mlflow",
        tmp_path / "auth.ini",
        ADMIN_PW,
        "secret",
    )
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql://u:db-pw@h:1/mlflow"
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "auth.ini")
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == ADMIN_PW
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "secret"
    assert "MLFLOW_TRACKING_URI" not in env
    assert "MLFLOW_TRACKING_PASSWORD" not in env


@pytest.mark.unit
def test_database_uri_quotes_the_password() -> None:
    from mnistflow.ops.postgres import database_uri

    assert (
        database_uri("u", "a@b/c", 5433, "mlflow")
        == "postgresql://u:a%40b%2Fc@127.0.0.1:5433/mlflow"
    )


# --- client preflight (store.check_store) against a stub HTTP server: no subprocess ---------


# The only account of the stub server below
STUB_USER, STUB_PASSWORD = "alice", "secret-pw"


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header (RFC 7617), else None."""
    if header is None or not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    return user, password


class _Stub(http.server.BaseHTTPRequestHandler):
    """MLflow's two preflight endpoints: ``/health`` (open) and the experiments search,
    which answers 401 unless the request carries the stub's exact Basic credentials."""

    health = 200
    search = 200  # the search's status for an authorized request
    seen: list[tuple[str, tuple[str, str] | None]]  # (path, credentials) of every request

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        credentials = basic_credentials(self.headers.get("Authorization"))
        self.seen.append((path, credentials))
        if path == "/health":
            status = self.health
        elif credentials != (STUB_USER, STUB_PASSWORD):
            status = 401
        else:
            status = self.search
        body = b'{"message": "database \\"mlflow\\" does not exist"}' if status >= 500 else b"{}"
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def log_in(monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    """The client's credentials: the stub's user with ``password``."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", STUB_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


@pytest.fixture
def stub() -> Iterator[tuple[str, type[_Stub]]]:
    handler = type("Handler", (_Stub,), {"seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


@pytest.mark.unit
def test_check_store_sends_the_basic_credentials_and_passes(
    stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, handler = stub
    log_in(monkeypatch, STUB_PASSWORD)
    store.check_store(uri)
    assert handler.seen == [
        ("/health", None),
        ("/api/2.0/mlflow/experiments/search", (STUB_USER, STUB_PASSWORD)),
    ]


@pytest.mark.unit
def test_check_store_refuses_a_wrong_password_without_showing_it(
    stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, handler = stub
    log_in(monkeypatch, "wrong-pw-42")
    with pytest.raises(store.TrackingError, match=r"credentials refused by .*HTTP 401") as e:
        store.check_store(uri)
    assert "wrong-pw-42" not in str(e.value)
    assert handler.seen[-1] == ("/api/2.0/mlflow/experiments/search", (STUB_USER, "wrong-pw-42"))


@pytest.mark.unit
def test_check_store_names_refused_credentials_without_the_password(
    stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, handler = stub
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    with pytest.raises(store.TrackingError, match=r"credentials refused by .*none are set") as e:
        store.check_store(uri)
    assert e.value.exit_code == 4
    handler.search = 403
    log_in(monkeypatch, STUB_PASSWORD)
    with pytest.raises(store.TrackingError, match="credentials refused") as e:
        store.check_store(uri)
    assert STUB_PASSWORD not in str(e.value)


@pytest.mark.unit
def test_check_store_names_a_failing_database_and_a_missing_server(
    stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, handler = stub
    log_in(monkeypatch, STUB_PASSWORD)
    handler.search = 500
    with pytest.raises(store.TrackingError, match=f"{uri} failed.*does not exist"):
        store.check_store(uri)
    handler.health = 503
    with pytest.raises(store.TrackingError, match=f"{uri} is not healthy"):
        store.check_store(uri)
    nobody = f"http://127.0.0.1:{postgres.free_port()}"
    with pytest.raises(store.TrackingError, match=f"no tracking server at {nobody}"):
        store.check_store(nobody)


@pytest.mark.unit
def test_redact_drops_userinfo() -> None:
    assert store.redact("https://bob:pw@mlflow.lan:8443/x") == "https://mlflow.lan:8443/x"
    assert store.redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


@pytest.mark.unit
def test_the_reports_store_line_and_ui_command_carry_no_password() -> None:
    from mnistflow.tracking.reports import run_links
    from mnistflow.tracking.runs import Run

    links = run_links(
        Run("r1", "1", "postgresql://u:db-secret-pw@db.lan:5432/mlflow"), "e", "0123456789ab"
    )
    assert links.tracking_uri == "postgresql://db.lan:5432/mlflow"
    assert "db-secret-pw" not in repr(links)


@pytest.mark.unit
def test_dataset_digest_fits_mlflows_column_and_keeps_the_full_hash() -> None:
    sha = "ab" * 32
    ds = datasets.meta_dataset("tiny", sha, "data/features/train.npz", (300, 784))
    assert ds.digest == sha[:36]
    assert ds.name == "tiny"
    assert ds.schema.inputs[0].shape == (-1, 784)


# --- e2e: the real pipeline against the real server ------------------------------------------


@dataclass(frozen=True)
class ServerRepo:
    """A tiny-data repo copy after one `dvc repro` logged to the team server."""

    repo: Path
    env: dict[str, str]
    run_id: str
    output: str  # what `dvc repro` printed (stdout and stderr)


def server_runs(team: TeamServer) -> list:
    """Every run of the pipeline's experiment on the server (as alice)."""
    from mlflow.tracking import MlflowClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", team.user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", team.password)
        client = MlflowClient(team.uri)
        exp = client.get_experiment_by_name("mnist-mlp")
        return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture(scope="session")
def server_repo(team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> ServerRepo:
    base = tmp_path_factory.mktemp("team-repo")
    mirror = base / "tiny-mirror"
    files = write_idx_dataset(mirror)
    repo = copy_repo(
        base / "repo", use_tiny_dataset(files, train={"hidden_layer_sizes": [16], "max_iter": 5})
    )
    env = team_server.client_env(workspace_env(mirror))
    start = time.perf_counter()
    proc = run(["dvc", "repro"], repo, env)
    print(f"dvc repro against the server: {time.perf_counter() - start:.1f} s")
    run_id = read_json(repo / "outputs/train/run.json")["run_id"]
    return ServerRepo(repo, env, run_id, proc.stdout + proc.stderr)


@pytest.mark.e2e
def test_authenticated_pipeline_logs_to_the_server_with_proxied_artifacts(
    team_server: TeamServer, server_repo: ServerRepo
) -> None:
    found = {r.info.run_id: r for r in server_runs(team_server)}
    r = found[server_repo.run_id]
    assert r.info.status == "FINISHED"
    assert r.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert r.data.tags["mnistflow.stage"] == "evaluated"
    assert "test_accuracy" in r.data.metrics
    assert r.info.user_id == team_server.user
    (dataset,) = r.inputs.dataset_inputs
    sha = read_json(server_repo.repo / "data/encoded/info.json")["dataset_sha256"]
    assert dataset.dataset.name == "tiny"
    assert dataset.dataset.digest == sha[:36]
    tags = {t.key: t.value for t in dataset.tags}
    assert tags == {"mlflow.data.context": "training", datasets.SHA_TAG: sha}
    # artifacts came back through the server (proxied), into the --pg-dir artifacts folder
    from mlflow.tracking import MlflowClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", team_server.user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", team_server.password)
        listed = {a.path for a in MlflowClient(team_server.uri).list_artifacts(r.info.run_id)}
    assert {"report", "evaluate", "train"} <= listed
    assert any((team_server.pg_dir / "artifacts").rglob("report.md"))


def _files_under(folder: Path) -> Iterator[Path]:
    return (p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.e2e
def test_a_pipeline_on_the_server_prints_no_mlflow_run_links(server_repo: ServerRepo) -> None:
    """MLflow prints "🏃 View run <name> at: http://…" on stdout when a run on a tracking
    server ends (never for a local store): the pipeline's output stays in the log format."""
    assert "Running stage 'evaluate'" in server_repo.output
    assert "View run" not in server_repo.output
    assert "View experiment" not in server_repo.output
    assert "\N{RUNNER}" not in server_repo.output


@pytest.mark.e2e
def test_no_password_on_command_lines_in_logs_run_artifacts_or_files(
    team_server: TeamServer, server_repo: ServerRepo
) -> None:
    """The database, admin and user passwords (random per session) appear nowhere a person
    or a process of another user could read them: they travel by environment and 0600 files."""
    import base64
    import subprocess

    import psutil
    from mlflow.tracking import MlflowClient

    db_pw = (team_server.pg_dir / "password").read_text().strip()
    user_auth = base64.b64encode(f"{team_server.user}:{team_server.password}".encode())
    secrets = [db_pw.encode(), team_server.admin_password.encode(), team_server.password.encode()]
    secrets.append(user_auth)

    def leaks(data: bytes) -> list[bytes]:
        return [s for s in secrets if s in data]

    # 1. command lines of every process on the machine, the server's among them
    port = team_server.uri.rsplit(":", 1)[1]
    servers = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        assert not leaks(cmdline.encode()), f"password on the command line of {proc.pid}"
        if "mlflow" in cmdline and " server" in cmdline and port in cmdline:
            servers.append(proc)
    assert servers, "the mlflow server process was not found"
    # ... it got the database through its environment (the process owner's to read)
    environ = servers[0].environ()
    assert db_pw in environ["MLFLOW_BACKEND_STORE_URI"]

    # 2. logs: mnistflow server + mlflow server, PostgreSQL's, and the pipeline's output
    logs = [team_server.log, team_server.pg_dir / "server.log"]
    for log in logs:
        assert not leaks(log.read_bytes()), f"password in {log}"
    assert "Running stage 'train'" in server_repo.output
    assert not leaks(server_repo.output.encode()), "password in the output of dvc repro"

    # 3. the run's params, tags and metric names on the server
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", team_server.user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", team_server.password)
        data = MlflowClient(team_server.uri).get_run(server_repo.run_id).data
    assert data.params
    assert data.tags
    recorded = [*data.params.items(), *data.tags.items(), *data.metrics]
    assert not leaks(repr(recorded).encode()), "password in the run's params or tags"

    # 4. every artifact the server stored
    artifacts = list(_files_under(team_server.pg_dir / "artifacts"))
    assert any(p.name == "report.md" for p in artifacts)
    for path in artifacts:
        assert not leaks(path.read_bytes()), f"password in artifact {path}"

    # 5. the workspace the pipeline ran in (git history, outputs, DVC cache) and the
    # repository's tracked files
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    files = [*_files_under(server_repo.repo), *(REPO_ROOT / n.decode() for n in tracked if n)]
    assert len(files) > 100
    for path in files:
        if path.is_file():
            assert not leaks(path.read_bytes()), f"password in {path}"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no credentials", "credentials refused by"),
        ("wrong password", "credentials refused by"),
        ("server down", "no tracking server at"),
    ],
)
def test_bad_setup_stops_train_before_training(
    team_server: TeamServer, server_repo: ServerRepo, case: str, message: str
) -> None:
    env = {**server_repo.env, "PYTHONPATH": "src"}
    if case == "no credentials":
        del env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]
    elif case == "wrong password":
        env["MLFLOW_TRACKING_PASSWORD"] = "not-the-password-987"
    else:
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{postgres.free_port()}"
    model = server_repo.repo / "models/model.pkl"
    model.unlink(missing_ok=True)
    before = len(server_runs(team_server))
    proc = run([sys.executable, "stages/train.py"], server_repo.repo, env, check=False)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert message in proc.stderr
    assert "training on" not in proc.stderr  # stopped before the data was loaded
    assert "not-the-password-987" not in proc.stderr + proc.stdout
    assert not model.exists()
    assert len(server_runs(team_server)) == before


# --- mnistflow sync ----------------------------------------------------------------------------


@pytest.mark.unit
def test_sync_plan_skips_complete_copies_and_redoes_half_ones() -> None:
    source = [("a", "FINISHED"), ("b", "FAILED"), ("c", "RUNNING"), ("d", "FINISHED")]
    destination = [
        ("x", {sync.SYNC_SOURCE: "a", sync.SYNCED_FROM: "a"}),
        ("y", {sync.SYNC_SOURCE: "d"}),  # interrupted copy of d
        ("z", {}),  # a run logged straight to the server
    ]
    p = sync.plan(source, destination)
    assert p.copy == ["b", "d"]
    assert p.delete == ["y"]
    assert p.skipped_running == ["c"]
    assert p.already == 1


@pytest.mark.unit
def test_sync_chunks_and_tags() -> None:
    assert [list(c) for c in sync.chunks(list(range(5)), 2)] == [[0, 1], [2, 3], [4]]
    tags = sync.copied_tags({"mlflow.runName": "r", sync.SYNCED_FROM: "old"}, "src1")
    assert tags == {"mlflow.runName": "r", sync.SYNC_SOURCE: "src1"}


@pytest.mark.e2e
def test_sync_twice_copies_each_local_run_once(
    team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from mlflow.tracking import MlflowClient

    from tests.mlflow_fixtures import EXPERIMENT, shared_store

    local = shared_store(tmp_path_factory)
    env = team_server.client_env(workspace_env())
    cmd = [str(Path(sys.executable).parent / "mnistflow"), "sync", "--to", team_server.uri]
    cmd += ["--from", local.uri, "--experiment", EXPERIMENT]
    start = time.perf_counter()
    run(cmd, local.root, env)
    print(f"sync of {len(local.runs)} runs: {time.perf_counter() - start:.1f} s")
    run(cmd, local.root, env)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", team_server.user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", team_server.password)
        client = MlflowClient(team_server.uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        copies = [
            r
            for r in client.search_runs([exp.experiment_id], max_results=1000)
            if sync.SYNCED_FROM in r.data.tags
        ]
        by_source = {r.data.tags[sync.SYNCED_FROM]: r for r in copies}
        assert len(copies) == len(by_source) == len(local.runs)
        src = MlflowClient(local.uri)
        for logged in local.runs.values():
            copy = by_source[logged.run_id]
            original = src.get_run(logged.run_id)
            assert copy.info.run_name == logged.name
            assert copy.info.status == logged.status
            assert copy.data.params == original.data.params
            assert copy.data.tags["is_baseline"] == original.data.tags["is_baseline"]
            steps = [
                (m.step, m.value) for m in client.get_metric_history(copy.info.run_id, "train_loss")
            ]
            assert steps == [(0, 2.0), (1, 1.0), (2, 0.5)]
        baseline = by_source[local.runs["baseline"].run_id]
        models = client.search_logged_models(
            experiment_ids=[exp.experiment_id],
            filter_string=f"source_run_id = '{baseline.info.run_id}'",
        )
        assert len(models) == 1
        assert {a.path for a in client.list_logged_model_artifacts(models[0].model_id)} >= {
            "MLmodel"
        }


@pytest.mark.e2e
def test_mnistflow_ui_on_a_database_keeps_its_password_off_command_lines_and_logs() -> None:
    import signal
    import subprocess
    import urllib.request

    import psutil

    from tests.services import processes_showing, scratch_cluster

    with scratch_cluster("mnistflow-ui-") as (base, cluster):
        uri, password = cluster.create_database("mlflow"), cluster.password()
        port = postgres.free_port()
        env = {**workspace_env(), "MLFLOW_TRACKING_URI": uri}
        log = base / "ui.log"
        with log.open("w") as out:
            ui = subprocess.Popen(
                [str(Path(sys.executable).parent / "mnistflow"), "ui", "--port", str(port)],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 180
            while True:
                assert ui.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3):
                        break
                except OSError:
                    time.sleep(0.5)
            # the UI answers on the database, and no process shows its password
            assert processes_showing(password) == []
            assert any("mlflow" in " ".join(c.cmdline()) for c in psutil.Process(ui.pid).children())
        finally:
            ui.send_signal(signal.SIGTERM)
            ui.wait(timeout=60)
        assert password not in log.read_text()


@pytest.mark.e2e
def test_server_takes_the_team_databases_from_the_environment_off_the_command_line() -> None:
    import signal
    import subprocess

    from tests.services import processes_showing, scratch_cluster, wait_healthy

    mnistflow = str(Path(sys.executable).parent / "mnistflow")
    env = {**workspace_env(), tracking_server.ADMIN_PASSWORD_ENV: ADMIN_PW + "-long-enough"}
    with scratch_cluster("mnistflow-envdb-") as (base, cluster):
        missing = run([mnistflow, "server", "--port", "1"], base, env, check=False)
        assert missing.returncode == 4
        assert "give --pg-dir (trial) or the team database: $MLFLOW_BACKEND_STORE_URI" in (
            missing.stderr
        )
        env[tracking_server.BACKEND_STORE_ENV] = cluster.create_database(tracking_server.BACKEND_DB)
        no_auth = run([mnistflow, "server", "--port", "1"], base, env, check=False)
        assert no_auth.returncode == 4
        assert "$MNISTFLOW_AUTH_DATABASE_URI (or --auth-database-uri) is required" in (
            no_auth.stderr
        )
        env[tracking_server.AUTH_DATABASE_ENV] = cluster.create_database(tracking_server.AUTH_DB)
        port, log = postgres.free_port(), base / "server.log"
        args = ["server", "--port", str(port), "--artifacts-destination", str(base / "art")]
        with log.open("w") as out:
            proc = subprocess.Popen(
                [mnistflow, *args], cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc, log)
            tracking_server.create_user(
                f"http://127.0.0.1:{port}", tracking_server.DEFAULT_ADMIN,
                env[tracking_server.ADMIN_PASSWORD_ENV], "bob", "bob-password-0123",
            )  # fmt: skip
            password = cluster.password()
            assert processes_showing(password) == []
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=90)
        assert proc.returncode == 0
        assert password not in log.read_text()
