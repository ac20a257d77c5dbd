"""``mnistflow tune``: the search space (schema, trial -> overrides), the objective's data
(training rows only), and real studies: two processes on one sqlite file, two clones against
PostgreSQL with a worker SIGKILLed mid-trial, and bad params refused before any work."""

from __future__ import annotations

import copy
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnistflow.config import (
    CategoricalDim,
    EncodeConfig,
    ParamsError,
    TrainConfig,
    load_params,
    tune_space,
    validate,
)
from mnistflow.tuning import objective, space, storage, worker
from mnistflow.util import fileio
from tests.helpers import (
    REPO_ROOT,
    copy_repo,
    run,
    synthetic_digits,
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
    train, encode = objective.trial_configs(params, over)
    assert train.hidden_layer_sizes == (256, 128)
    assert encode.scaling == "standardize"
    assert params["train"]["hidden_layer_sizes"] == [100, 50, 25]  # the original is untouched


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


# --- unit: the objective sees training rows only ------------------------------------------------


@pytest.mark.unit
def test_objective_loads_training_rows_only_and_holds_out_the_last(tmp_path: Path) -> None:
    x = np.arange(20 * 28 * 28, dtype=np.uint8).reshape(20, 28, 28)
    y = (np.arange(20) % 10).astype(np.uint8)
    path = fileio.save_npz(
        tmp_path / "arrays.npz", x_train=x, y_train=y, x_test=x[:3] * 0, y_test=y[:3]
    )
    images = objective.load_training_images(path)
    assert not hasattr(images, "x_test")
    assert images.x.shape == (20, 28, 28)
    cfg = EncodeConfig.from_section(load_params(REPO_ROOT / "params.yaml")["encode"], "encode")
    split = objective.split_and_encode(images, 5, cfg, 10)
    assert split.X_fit.shape == (15, 784)
    assert split.X_val.shape == (5, 784)
    assert list(split.labels_val) == list(y[15:])
    with pytest.raises(ParamsError, match=r"tune\.validation_size"):
        objective.validation_cut(20, 11)
    with pytest.raises(objective.TuneDataError, match="dvc repro unpack"):
        objective.load_training_images(tmp_path / "missing.npz")


@pytest.mark.unit
def test_objective_with_online_augmentation_distorts_the_fit_rows_each_epoch() -> None:
    images, labels = synthetic_digits(80, seed=2)
    params = load_params(REPO_ROOT / "params.yaml")
    encode = EncodeConfig.from_section(params["encode"], "encode")
    split = objective.split_and_encode(objective.TrainingImages(images, labels), 20, encode, 10)
    assert split.online.encoding.scaling == encode.scaling
    assert split.online.image_shape == (28, 28)
    online_split = dataclasses.replace(
        split,
        online=dataclasses.replace(split.online, background=False),  # no process: unit
    )
    raw = params["train"] | {"hidden_layer_sizes": [8], "max_iter": 3}
    losses: dict[bool, list[float]] = {False: [], True: []}
    for online in (False, True):
        cfg = TrainConfig.from_section(raw | {"online_augment": online}, "train")
        final = objective.fit_and_score(
            cfg, online_split, lambda _e, loss, _v, o=online: losses[o].append(loss)
        )
        assert len(losses[online]) == 3
        assert 0 <= final <= 1
    assert losses[True] != losses[False]  # the online fit trained on other images


@pytest.mark.unit
def test_storage_url_precedence(params: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = validate(params).tune
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    assert storage.storage_url(cfg, Path("/r")) == "sqlite:////r/optuna.db"
    monkeypatch.setenv(storage.STORAGE_ENV, "postgresql://u:p@h:5432/optuna")
    assert storage.storage_url(cfg, Path("/r")) == "postgresql+psycopg://u:p@h:5432/optuna"
    assert storage.storage_url(cfg, Path("/r"), "sqlite:////x.db") == "sqlite:////x.db"


# --- e2e: real studies ---------------------------------------------------------------------------


def tiny_tune_repo(base: Path, name: str, **tune: object) -> tuple[Path, dict[str, str]]:
    """A repo copy on tiny data with a two-key space, after `dvc repro unpack`."""
    mirror = base / "tiny-mirror"
    files = write_idx_dataset(mirror, n_train=600, n_test=100) if not mirror.exists() else None
    files = files or fileio.read_json(base / "files.json")
    fileio.write_json(base / "files.json", files)

    def edit(p: dict) -> None:
        use_tiny_dataset(files, train={"hidden_layer_sizes": [16], "max_iter": 25})(p)
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


def check_study(study, runs: list, n_trials: int) -> None:
    """Unique trial numbers, enough finished trials, one FINISHED run per finished trial."""
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
        (r,) = by_trial[str(t.number)]
        assert r.info.status == "FINISHED"
        assert r.info.run_id == t.user_attrs[worker.ATTR_RUN]
        assert r.data.tags[worker.TAG_STATE] == t.state.name
        assert r.data.tags[worker.TAG_FLAGS].startswith("-S train.alpha=")
        assert r.data.tags[worker.PARENT_TAG]
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]


@pytest.mark.e2e
def test_two_processes_share_a_study_on_local_sqlite(tmp_path: Path) -> None:
    import optuna

    repo, env = tiny_tune_repo(tmp_path, "repo")
    start = time.perf_counter()
    procs = [
        subprocess.Popen([MNISTFLOW, "tune"], cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-3000:] + errs[1][-3000:]
    print(f"6 trials on 2 local workers: {time.perf_counter() - start:.1f} s")
    study = optuna.load_study(study_name="mnist-mlp-tune", storage=f"sqlite:///{repo}/optuna.db")
    workers = {t.user_attrs.get(worker.ATTR_WORKER) for t in study.trials}
    assert len(workers) == 2, workers
    check_study(study, trial_runs(f"sqlite:///{repo}/mlflow.db", "mnist-mlp-tune"), 6)
    # a third worker finds the study complete and runs nothing
    third = run([MNISTFLOW, "tune"], repo, env)
    assert "already has" in third.stderr
    best = run([MNISTFLOW, "tune", "--best", "--no-exp"], repo, env)
    report = (repo / "reports/tune/mnist-mlp-tune/report.md").read_text()
    assert "Reproduce: `dvc exp run -S train.alpha=" in report, best.stderr[-2000:]
    assert (repo / "reports/tune/mnist-mlp-tune/history.png").stat().st_size > 1000


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
    tune = {"n_trials": 10, "heartbeat_interval": 1, "grace_period": 4, "pruner": "none"}
    clones = [tiny_tune_repo(tmp_path, f"clone{i}", **tune) for i in (1, 2)]
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
    # wait until the victim finished one trial and is in the middle of another
    deadline = time.monotonic() + 300
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
                t for t in mine if t.state == TrialState.RUNNING and worker.ATTR_RUN in t.user_attrs
            ]
            if running:
                killed_trial = running[0].number
                os.kill(victim.pid, signal.SIGKILL)
        time.sleep(0.2)
    victim.wait()
    assert survivor.wait(timeout=600) == 0, (clones[1][0] / "worker.log").read_text()[-3000:]

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
    check_study(study, runs, 10)  # also: no run left RUNNING (the survivor swept at its end)
    (dead,) = [r for r in runs if r.data.tags.get(worker.TAG_TRIAL) == str(killed_trial)]
    assert dead.info.status == "FAILED"
    assert "liveness" in dead.data.tags["mnistflow.ended_by"]


class _PruneAtEpoch2:
    """A pruner that prunes every trial at its second epoch."""

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= 2


@pytest.mark.unit
def test_a_pruned_trial_stops_early_and_its_run_ends_tagged(params: dict, tmp_path: Path) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    from mnistflow.tracking import store

    x = np.random.default_rng(0).integers(0, 255, size=(60, 28, 28), dtype=np.uint8)
    images = objective.TrainingImages(x, (np.arange(60) % 10).astype(np.uint8))
    params["tune"]["validation_size"] = 20
    params["train"].update(hidden_layer_sizes=[8], max_iter=10)
    params["tune"]["space"] = {"train.alpha": {"type": "float", "low": 1e-4, "high": 1e-2}}
    parsed = validate(params)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = store.ensure_experiment(uri, "t", tmp_path)
    tracking = worker.Tracking(uri, exp, "t", worker.parent_run(uri, exp, "s"))
    study = optuna.create_study(direction="maximize", pruner=_PruneAtEpoch2())
    study.optimize(worker.Objective(parsed, tune_space(params), images, tracking, "s"), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert max(trial.intermediate_values) == 2  # stopped at epoch 2 of 10
    run = MlflowClient(uri).get_run(trial.user_attrs[worker.ATTR_RUN])
    assert run.info.status == "FINISHED"
    assert run.data.tags[worker.TAG_STATE] == "PRUNED"
    assert run.data.tags[worker.PARENT_TAG] == tracking.parent_run_id
    assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "val_accuracy")) == 2
