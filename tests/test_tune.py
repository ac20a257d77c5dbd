"""``mnistflow tune``: the search space (schema, trial -> overrides -> experiment flags), the
train stage's side of a trial (validation scores, pruning, a dead worker), and real studies
whose trials are DVC experiments: two processes on one sqlite file (then ``--best`` as a real
experiment and ``mnistflow reproduce`` of a trial), two clones against PostgreSQL with a worker
SIGKILLed mid-trial, and bad params refused before any work."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnistflow.config import (
    TRIAL_KEY,
    CategoricalDim,
    EncodeConfig,
    ParamsError,
    TrainConfig,
    load_params,
    tune_space,
    validate,
)
from mnistflow.modeling.training import Validation, fit
from mnistflow.tuning import space, storage, trial, worker
from mnistflow.util import fileio
from tests.helpers import (
    REPO_ROOT,
    copy_repo,
    run,
    use_tiny_dataset,
    workspace_env,
    write_idx_dataset,
)
from tests.services import TeamServer, team_server_fixture  # noqa: F401  (session fixture)

MNISTFLOW = str(Path(sys.executable).parent / "mnistflow")


@pytest.fixture
def params() -> dict:
    return copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))


# --- unit: the space and its validation --------------------------------------------------------


@pytest.mark.unit
def test_shipped_space_parses_into_dimensions(params: dict) -> None:
    dims = tune_space(params)
    assert set(dims) == set(params["tune"]["space"])
    layers = dims["train.hidden_layer_sizes"]
    assert isinstance(layers, CategoricalDim)
    assert [100, 50, 25] in [list(c) for c in layers.choices]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("key", "entry", "message"),
    [
        ("train.alpah", {"type": "float", "low": 0.1, "high": 1.0}, "'train.alpah' is not a key"),
        ("encode.augment", {"type": "int", "low": 0, "high": 2}, "'encode.augment' is not a key"),
        ("paths.model", {"type": "categorical", "choices": ["a"]}, "not in encode, train"),
        ("train.alpha", {"type": "float", "low": -1.0, "high": 1.0}, "'train.alpha' must be >= 0"),
        ("train.max_iter", {"type": "float", "low": 1.0, "high": 9.5}, "must be an integer"),
        ("train.alpha", {"type": "uniform", "low": 0, "high": 1}, "'tune.space.train.alpha.type'"),
        ("train.alpha", {"type": "float", "low": 0.0, "high": 1.0, "log": True}, "low must be > 0"),
        ("train.alpha", {"type": "float", "low": 1.0, "high": 0.1}, "needs low < high"),
        ("train.alpha", {"type": "float", "low": 0.1, "hihg": 1.0}, "unknown key"),
        ("train.activation", {"type": "categorical", "choices": ["relu", "gelu"]}, "one of"),
        (TRIAL_KEY, {"type": "int", "low": 10, "high": 20}, "set by `mnistflow tune`"),
    ],
)
def test_bad_space_entries_name_the_key(params: dict, key: str, entry: dict, message: str) -> None:
    params["tune"]["space"] = {key: entry}
    with pytest.raises(ParamsError, match=message) as err:
        validate(params)
    assert f"tune.space.{key}" in str(err.value)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["test_accuracy", "test_accuracy_argmax", "TEST_loss"])
def test_an_objective_on_the_test_set_is_refused(params: dict, name: str) -> None:
    params["tune"]["objective"] = name
    with pytest.raises(ParamsError, match=r"'tune.objective' names a test-set metric"):
        validate(params)


@pytest.mark.unit
def test_trial_values_map_to_overrides_and_dvc_flags(params: dict) -> None:
    dims = tune_space(params)
    stored = {  # what Optuna stores: list choices as YAML text
        "train.alpha": 0.001,
        "train.learning_rate_init": 0.002,
        "train.batch_size": 64,
        "train.hidden_layer_sizes": "[256, 128]",
        "encode.scaling": "standardize",
    }
    over = space.overrides(dims, stored)
    assert over["train.hidden_layer_sizes"] == [256, 128]
    assert space.set_flags(over) == [
        "-S", "train.alpha=0.001",
        "-S", "train.learning_rate_init=0.002",
        "-S", "train.batch_size=64",
        "-S", "train.hidden_layer_sizes=[256, 128]",
        "-S", "encode.scaling=standardize",
    ]  # fmt: skip
    flags = worker.trial_flags(validate(params), over)
    # every trial holds out the validation rows (so it never encodes the test set) and logs
    # its run into the tune experiment
    assert flags[-4:] == [
        "-S", f"{TRIAL_KEY}={params['tune']['validation_size']}",
        "-S", f"mlflow.experiment_name={params['tune']['mlflow_experiment']}",
    ]  # fmt: skip
    assert worker.exp_name("s", 7) == "s-t7"


@pytest.mark.unit
def test_in_memory_study_suggests_within_the_space_and_records_overrides(params: dict) -> None:
    import optuna

    dims = tune_space(params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        over = space.suggest(trial, dims)
        assert 1e-6 <= over["train.alpha"] <= 1e-2
        assert over["train.hidden_layer_sizes"] in [[100, 50, 25], [256, 128], [512]]
        study.tell(trial, 0.5)
    assert space.overrides(dims, study.trials[0].params) == space.suggest(
        optuna.trial.FixedTrial(study.trials[0].params), dims
    )


# --- unit: the train stage's side of a trial ---------------------------------------------------


class _PruneAtEpoch2:
    """A pruner that prunes every trial at its second epoch."""

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= 2


def _fit_data(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(0).random((n, 784), dtype=np.float32)
    return X, np.eye(10, dtype=np.float32)[np.arange(n) % 10]


@pytest.mark.unit
def test_a_pruned_trial_stops_the_fit_at_its_epoch(params: dict) -> None:
    import optuna

    study = optuna.create_study(direction="maximize", pruner=_PruneAtEpoch2())
    asked = study.ask()
    link = trial.TrialLink(
        "sqlite://", study.study_name, asked._trial_id, asked.number, "p", os.getpid()
    )
    stage = trial.StageTrial(link, asked)
    cfg = TrainConfig.from_section(
        {**params["train"], "hidden_layer_sizes": [8], "max_iter": 10}, "train"
    )
    X, y = _fit_data()
    result = fit(
        cfg,
        X[:40],
        y[:40],
        validation=Validation(X[40:], np.arange(40, 60) % 10, 10, stage.on_score),
    )
    assert result.n_iter == 2  # of 10
    assert stage.state == "PRUNED"
    assert len(result.val_accuracy) == 2
    assert result.summary()["val_accuracy"] == round(result.val_accuracy[-1], 8)
    assert sorted(study.trials[0].intermediate_values) == [1, 2]
    assert stage.tags("s-t0")[trial.TAG_EXP] == "s-t0"


@pytest.mark.unit
def test_without_a_trial_validation_only_scores_and_the_fit_runs_to_the_end(params: dict) -> None:
    cfg = TrainConfig.from_section(
        {**params["train"], "hidden_layer_sizes": [8], "max_iter": 4}, "train"
    )
    X, y = _fit_data()
    plain = fit(cfg, X[:40], y[:40])
    scored = fit(cfg, X[:40], y[:40], validation=Validation(X[40:], np.arange(40, 60) % 10, 10))
    assert scored.n_iter == 4
    assert "val_accuracy" not in plain.summary()
    assert plain.losses == scored.losses  # scoring does not change the fit
    assert trial.TrialLink.from_env({}) is None


@pytest.mark.unit
def test_a_trial_whose_worker_is_gone_stops(params: dict) -> None:
    import optuna

    study = optuna.create_study(direction="maximize")
    asked = study.ask()
    gone = 2**22 + 12345  # above Linux's largest pid_max: no such process
    link = trial.TrialLink("sqlite://", study.study_name, asked._trial_id, 0, "p", gone)
    with pytest.raises(trial.TrialAbandoned, match="worker pid"):
        trial.StageTrial(link, asked).on_score(1, 0.5)
    assert trial.TrialLink.from_env({trial.TRIAL_ENV: link.to_env()}) == link


@pytest.mark.unit
def test_a_pruned_trial_with_online_augmentation_stops_at_its_epoch(params: dict) -> None:
    """Trials run the train stage, so train.online_augment is honoured as in any run; the
    online loop stops when the trial is pruned too."""
    import optuna

    from mnistflow.data.encode import Encoding
    from mnistflow.data.online import OnlineData

    study = optuna.create_study(direction="maximize", pruner=_PruneAtEpoch2())
    asked = study.ask()
    link = trial.TrialLink("sqlite://", study.study_name, asked._trial_id, 0, "p", os.getpid())
    stage = trial.StageTrial(link, asked)
    raw = params["train"] | {"hidden_layer_sizes": [8], "max_iter": 6, "online_augment": True}
    cfg = TrainConfig.from_section(raw, "train")
    augment = EncodeConfig.from_section(params["encode"], "encode").augment
    online = OnlineData(Encoding("divide255"), (28, 28), augment, background=False)  # unit
    X, y = _fit_data()
    held = Validation(X[40:], np.arange(40, 60) % 10, 10, stage.on_score)
    result = fit(cfg, X[:40], y[:40], validation=held, online=online)
    assert result.n_iter == 2  # of 6
    assert stage.state == "PRUNED"


@pytest.mark.unit
def test_storage_url_precedence(params: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = validate(params).tune
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    assert storage.storage_url(cfg, Path("/r")) == "sqlite:////r/optuna.db"
    monkeypatch.setenv(storage.STORAGE_ENV, "postgresql://u:p@h:5432/optuna")
    assert storage.storage_url(cfg, Path("/r")) == "postgresql+psycopg://u:p@h:5432/optuna"
    assert storage.storage_url(cfg, Path("/r"), "sqlite:////x.db") == "sqlite:////x.db"


# --- e2e: real studies ---------------------------------------------------------------------------


def tiny_tune_repo(
    base: Path, name: str, max_iter: int = 25, **tune: object
) -> tuple[Path, dict[str, str]]:
    """A repo copy on tiny data with a two-key space, after `dvc repro unpack`."""
    mirror = base / "tiny-mirror"
    files = write_idx_dataset(mirror, n_train=600, n_test=100) if not mirror.exists() else None
    files = files or fileio.read_json(base / "files.json")
    fileio.write_json(base / "files.json", files)

    def edit(p: dict) -> None:
        use_tiny_dataset(files, train={"hidden_layer_sizes": [16], "max_iter": max_iter})(p)
        space = {
            "train.alpha": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "train.hidden_layer_sizes": {"type": "categorical", "choices": [[16], [32, 16]]},
        }
        p["tune"].update(
            {"validation_size": 200, "n_trials": 6, "pruner_warmup_epochs": 5, "space": space}
        )
        p["tune"].update(tune)

    repo = copy_repo(base / name, edit)
    env = workspace_env(mirror)
    run(["dvc", "repro", "unpack"], repo, env)
    return repo, env


def trial_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def dvc_experiments(repo: Path, env: dict[str, str]) -> list[str]:
    """Names of the repo's DVC experiments (`dvc exp list`)."""
    return run(["dvc", "exp", "list", "--name-only"], repo, env).stdout.split()


def check_study(study, runs: list, n_trials: int, experiments: list[str]) -> None:
    """Unique trial numbers, enough finished trials; each finished trial has exactly one
    FINISHED run and one DVC experiment, no other trial has an experiment; no test metric in
    any trial run; no run RUNNING."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    assert len({t.number for t in trials}) == len(trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= n_trials
    by_trial: dict[str, list] = {}
    for r in runs:
        if worker.TAG_TRIAL in r.data.tags:
            by_trial.setdefault(r.data.tags[worker.TAG_TRIAL], []).append(r)
    for t in finished:
        finished_runs = [r for r in by_trial[str(t.number)] if r.info.status == "FINISHED"]
        (r,) = finished_runs
        assert r.info.run_id == t.user_attrs[worker.ATTR_RUN]
        assert r.data.tags[worker.TAG_STATE] == t.state.name
        assert r.data.tags[worker.TAG_FLAGS].startswith("-S train.alpha=")
        assert r.data.tags[worker.PARENT_TAG]
        assert r.data.tags[worker.TAG_EXP] == t.user_attrs[worker.ATTR_EXP]
        assert r.data.params[TRIAL_KEY] == "200"
        assert "val_accuracy" in r.data.metrics
        assert not [k for k in r.data.metrics if "test" in k], r.data.metrics
    trial_exps = sorted(e for e in experiments if not e.endswith("-best"))
    assert trial_exps == sorted(t.user_attrs[worker.ATTR_EXP] for t in finished)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]


@pytest.mark.e2e
def test_two_processes_share_a_study_of_dvc_experiments_then_best_and_reproduce(
    tmp_path: Path,
) -> None:
    """Two workers in one clone (sqlite); then `--best` as a real experiment evaluated once on
    the test set, `mnistflow reproduce` of a trial, `dvc exp apply` of a trial."""
    import optuna
    from mlflow.tracking import MlflowClient

    repo, env = tiny_tune_repo(tmp_path, "repo")
    start = time.perf_counter()
    procs = [
        subprocess.Popen([MNISTFLOW, "tune"], cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=1200)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    print(f"6 trials (DVC experiments) on 2 local workers: {time.perf_counter() - start:.1f} s")
    study = optuna.load_study(study_name="mnist-mlp-tune", storage=f"sqlite:///{repo}/optuna.db")
    workers = {t.user_attrs.get(worker.ATTR_WORKER) for t in study.trials}
    assert len(workers) == 2, workers
    uri = f"sqlite:///{repo}/mlflow.db"
    check_study(study, trial_runs(uri, "mnist-mlp-tune"), 6, dvc_experiments(repo, env))
    # a third worker finds the study complete and runs nothing
    third = run([MNISTFLOW, "tune"], repo, env)
    assert "already has" in third.stderr

    # a trial's run reruns with identical metrics (train on the same rows, val_accuracy)
    best_trial = study.best_trial
    trial_run = best_trial.user_attrs[worker.ATTR_RUN]
    again = run([MNISTFLOW, "reproduce", trial_run], repo, env)
    assert "result: identical" in again.stdout, again.stdout + again.stderr[-3000:]
    assert "val_accuracy" in again.stdout

    # --best: a named experiment on the full training set, evaluated once on the test set
    run([MNISTFLOW, "tune", "--best"], repo, env)
    assert "mnist-mlp-tune-best" in dvc_experiments(repo, env)
    metrics = fileio.read_json(repo / "outputs/evaluate/metrics.json")
    assert "test_accuracy" in metrics
    assert load_params(repo / "params.yaml")["encode"]["validation_rows"] == 0
    client = MlflowClient(uri)
    evaluated = trial_runs(uri, "mnist-mlp")
    assert [r.data.metrics["test_accuracy"] for r in evaluated] == [
        pytest.approx(metrics["test_accuracy"], abs=1e-6)
    ]
    report = (repo / "reports/tune/mnist-mlp-tune/report.md").read_text()
    assert f"{metrics['test_accuracy']:.4f}" in report
    assert f"Best trial **#{best_trial.number}**" in report
    (parent,) = [
        r for r in trial_runs(uri, "mnist-mlp-tune") if worker.TAG_PARENT_OF in r.data.tags
    ]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/history.png", "report/importances.png", "report/report.md"} <= logged
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(
        metrics["test_accuracy"], abs=1e-6
    )
    assert parent.data.metrics["best_val_accuracy"] == best_trial.value

    # `dvc exp apply` restores a trial: its params, the validation split, no test metrics
    run(["dvc", "exp", "apply", best_trial.user_attrs[worker.ATTR_EXP]], repo, env)
    applied = load_params(repo / "params.yaml")
    assert applied["encode"]["validation_rows"] == 200
    assert applied["train"]["alpha"] == best_trial.params["train.alpha"]
    assert fileio.read_json(repo / "outputs/evaluate/metrics.json") == {"test_set": "not evaluated"}
    assert fileio.read_json(repo / "outputs/train/metrics.json")["val_accuracy"] == round(
        best_trial.value, 8
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("tune", "message"),
    [
        (
            {"space": {"train.alpah": {"type": "float", "low": 0.1, "high": 1.0}}},
            "'tune.space.train.alpah': 'train.alpah' is not a key",
        ),
        ({"objective": "test_accuracy"}, "'tune.objective' names a test-set metric"),
    ],
)
def test_bad_tune_params_fail_before_any_work(tmp_path: Path, tune: dict, message: str) -> None:
    def edit(p: dict) -> None:
        p["tune"].update(tune)

    repo = copy_repo(tmp_path / "repo", edit)
    proc = run([MNISTFLOW, "tune"], repo, workspace_env(), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (repo / "optuna.db").exists()
    assert not (repo / "mlflow.db").exists()
    # the pipeline's first stage refuses the same file
    check = run(["dvc", "repro", "check_params"], repo, workspace_env(), check=False)
    assert check.returncode != 0
    assert message in check.stdout + check.stderr


def optuna_database(team) -> str:
    """A database ``optuna`` in the team server's throw-away cluster; its SQLAlchemy URL."""
    from mnistflow.tracking import postgres

    port = int((team.pg_dir / "data" / "postmaster.pid").read_text().splitlines()[3])
    cluster = postgres.Cluster(team.pg_dir, port)
    return cluster.create_database("optuna")


@pytest.mark.e2e
def test_two_clones_share_a_postgres_study_and_survive_a_killed_worker(
    team_server: TeamServer, tmp_path: Path
) -> None:
    import optuna
    from optuna.trial import TrialState

    url = storage.storage_url(validate(load_params(REPO_ROOT / "params.yaml")).tune, tmp_path,
                              optuna_database(team_server))  # fmt: skip
    tune = {"n_trials": 6, "heartbeat_interval": 1, "grace_period": 4, "pruner": "none"}
    # 80 epochs: the kill below lands mid-fit, while the stage reports epochs to the trial
    clones = [tiny_tune_repo(tmp_path, f"clone{i}", max_iter=80, **tune) for i in (1, 2)]
    procs = []
    for repo, env in clones:
        env = {
            **team_server.client_env(env),
            storage.STORAGE_ENV: url,
            "MNISTFLOW_HEARTBEAT_S": "1",
        }
        log = (repo / "worker.log").open("w")
        procs.append(subprocess.Popen([MNISTFLOW, "tune"], cwd=repo, env=env, stderr=log))
    victim, survivor = procs
    # wait until the victim finished one trial and is in the middle of another one's fit
    deadline = time.monotonic() + 900
    killed_trial = None
    while killed_trial is None:
        assert time.monotonic() < deadline, "the first worker never ran two trials"
        assert victim.poll() is None, (clones[0][0] / "worker.log").read_text()[-3000:]
        try:
            study = optuna.load_study(study_name="mnist-mlp-tune", storage=url)
        except KeyError:
            time.sleep(0.5)
            continue
        mine = [
            t
            for t in study.get_trials()
            if t.user_attrs.get(worker.ATTR_WORKER, "").endswith(f":{victim.pid}")
        ]
        if any(t.state == TrialState.COMPLETE for t in mine):
            running = [
                t
                for t in mine
                if t.state == TrialState.RUNNING and 1 <= len(t.intermediate_values) < 60
            ]
            if running:
                killed_trial = running[0].number
                os.kill(victim.pid, signal.SIGKILL)
        time.sleep(0.1)
    victim.wait()
    assert survivor.wait(timeout=1200) == 0, (clones[1][0] / "worker.log").read_text()[-3000:]

    study = optuna.load_study(study_name="mnist-mlp-tune", storage=url)
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed_trial].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed_trial]
    assert len(retries) == 1
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs[worker.ATTR_WORKER].endswith(f":{survivor.pid}")
    assert retries[0].params == trials[killed_trial].params
    contributors = {
        t.user_attrs[worker.ATTR_WORKER] for t in trials.values() if t.state == TrialState.COMPLETE
    }
    assert len(contributors) == 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", team_server.user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", team_server.password)
        runs = trial_runs(team_server.uri, "mnist-mlp-tune")
    # each clone holds the experiments of the trials its worker ran; the killed trial has none
    experiments = [e for repo, env in clones for e in dvc_experiments(repo, env)]
    assert len(experiments) == len(set(experiments))
    assert trials[killed_trial].user_attrs[worker.ATTR_EXP] not in experiments
    check_study(study, runs, 6, experiments)  # also: no run left RUNNING
    # the killed trial's run: its train stage saw the worker gone at the next epoch and
    # ended the run FAILED (or a liveness sweep did)
    (dead,) = [r for r in runs if r.data.tags.get(worker.TAG_TRIAL) == str(killed_trial)]
    assert dead.info.status in ("FAILED", "KILLED")
