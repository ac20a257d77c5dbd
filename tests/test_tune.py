"""``mnistflow tune``: the search space (schema, trial -> overrides -> experiment flags), a
trial in-process (the training rows only, encodings cached, validation scores, pruning), and
real studies: two worker processes of one command running trials at the same moment (then
``--promote`` and ``--best`` as real DVC experiments), two clones against PostgreSQL with a
worker SIGKILLed mid-trial, one BLAS thread per worker without the numerics pin, and bad
params refused before any work."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from mnistflow.config import (
    CategoricalDim,
    ParamsError,
    load_params,
    tune_space,
    validate,
)
from mnistflow.tuning import objective, space, storage, worker
from mnistflow.util import fileio
from tests.helpers import (
    BASELINE_TRAIN,
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
    assert BASELINE_TRAIN["hidden_layer_sizes"] in [list(c) for c in layers.choices]


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


@pytest.mark.unit
def test_a_runs_flags_give_back_the_trials_overrides(params: dict) -> None:
    from mnistflow.tuning.rerun import overrides_from_flags

    over = {"train.alpha": 1.5e-05, "train.hidden_layer_sizes": [256, 128],
            "encode.scaling": "standardize", "train.batch_size": 64}  # fmt: skip
    assert overrides_from_flags(" ".join(space.set_flags(over))) == over


@pytest.mark.unit
def test_the_parallel_coordinates_place_each_value_on_its_axis(
    params: dict, tmp_path: Path
) -> None:
    from mnistflow.tuning import report

    dims = tune_space(params)
    assert space.unit_position(dims["train.alpha"], 1e-4) == pytest.approx(0.5)  # log scale
    assert space.unit_position(dims["train.hidden_layer_sizes"], [512]) == 1.0
    assert space.unit_position(dims["train.hidden_layer_sizes"], "[256, 128]") == 0.5
    assert space.axis_labels(dims["train.alpha"]) == ["1e-06", "0.01"]
    trials = [
        dict(zip(dims, row, strict=True))
        for row in (
            (1e-5, 1e-3, 64, "[512]", "divide255"),
            (1e-3, 1e-4, 300, "[100, 50, 25]", "standardize"),
        )
    ]
    target = report.parallel_figure(
        list(dims),
        [[space.unit_position(d, t[k]) for k, d in dims.items()] for t in trials],
        [0.95, 0.97],
        [space.axis_labels(d) for d in dims.values()],
        tmp_path / "parallel.png",
    )
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


# --- unit: a trial in-process -------------------------------------------------------------------


class _PruneAtEpoch2:
    """A pruner that prunes every trial at its second epoch."""

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= 2


def _rows(tmp_path: Path, n: int = 60) -> objective.TrainingRows:
    """Training arrays in an npz file that holds no test arrays at all, loaded."""
    x, y = synthetic_digits(n, seed=3)
    path = fileio.save_npz(tmp_path / "arrays.npz", x_train=x, y_train=y)
    return objective.load_training_rows(path)


def _small(params: dict, **train: object) -> dict:
    params["train"].update({"hidden_layer_sizes": [8], "max_iter": 6, **train})
    params["encode"]["workers"] = 1
    return params


@pytest.mark.unit
def test_a_worker_reads_only_the_training_rows_and_encodes_once_per_setting(
    params: dict, tmp_path: Path
) -> None:
    rows = _rows(tmp_path)  # the file has no x_test/y_test: the worker never needs them
    splits = objective.EncodedSplits(rows, 20, 10)
    base = objective.trial_params(validate(_small(params)), {})
    first = splits.get(base.encode)
    assert first.X_train.shape == (40, 784)
    # the held-out side is the last 20 training rows, encoded with the fit rows' encoding
    np.testing.assert_array_equal(first.X_test, first.encoding.apply(rows.x[40:]))
    assert list(first.y_test.argmax(axis=1)) == list(rows.y[40:])
    again = objective.trial_params(validate(_small(params)), {"train.alpha": 0.5})
    assert splits.get(again.encode) is first  # another train value: the same encoded arrays
    other = objective.trial_params(validate(_small(params)), {"encode.scaling": "standardize"})
    assert splits.get(other.encode) is not first
    with pytest.raises(ParamsError, match=r"tune\.holdout_size"):
        objective.EncodedSplits(rows, 31, 10)
    with pytest.raises(objective.TuneDataError, match="dvc repro unpack"):
        objective.load_training_rows(tmp_path / "missing.npz")


@pytest.mark.unit
@pytest.mark.parametrize("online", [False, True])
def test_an_in_process_trial_scores_every_epoch_and_stops_when_pruned(
    params: dict, tmp_path: Path, online: bool
) -> None:
    """Each epoch's score is the argmax accuracy of the model on the held-out rows (checked
    with sklearn's own predict_proba); a pruned trial stops at its epoch, with or without
    train.online_augment."""
    import optuna

    rows = _rows(tmp_path)
    splits = objective.EncodedSplits(rows, 20, 10)
    chosen = objective.trial_params(
        validate(_small(params, online_augment=online)), {"train.alpha": 0.001}
    )
    full = objective.fit_trial(chosen, splits)
    assert full.n_iter == 6
    assert len(full.holdout_accuracy) == 6
    encoded = splits.get(chosen.encode)
    expected = np.mean(full.model.predict_proba(encoded.X_test).argmax(axis=1) == rows.y[40:])
    assert full.holdout_accuracy[-1] == pytest.approx(expected)

    study = optuna.create_study(direction="maximize", pruner=_PruneAtEpoch2())
    trial = study.ask()

    def on_score(epoch: int, accuracy: float) -> bool:
        trial.report(accuracy, epoch)
        return trial.should_prune()

    pruned = objective.fit_trial(chosen, splits, on_score=on_score)
    assert pruned.n_iter == 2  # of 6
    assert sorted(study.trials[0].intermediate_values) == [1, 2]
    assert pruned.holdout_accuracy == full.holdout_accuracy[:2]  # the same fit, stopped early


@pytest.mark.unit
def test_storage_url_precedence(params: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = validate(params).tune
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    assert storage.storage_url(cfg, Path("/r")) == "sqlite:////r/optuna.db"
    monkeypatch.setenv(storage.STORAGE_ENV, "postgresql://u:p@h:5432/optuna")
    assert storage.storage_url(cfg, Path("/r")) == "postgresql+psycopg://u:p@h:5432/optuna"
    assert storage.storage_url(cfg, Path("/r"), "sqlite:////x.db") == "sqlite:////x.db"


@pytest.mark.unit
def test_a_lost_connection_is_told_from_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Optuna raises when PostgreSQL goes away: its StorageInternalError from
    SQLAlchemy's OperationalError (or an error raised while handling one); not a bug."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    from mnistflow.util.errors import UserError

    lost = OperationalError("SELECT 1", {}, Exception("the database system is shutting down"))
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = lost  # `raise … from exc`, as Optuna's session wrapper does
    assert storage.connection_lost(wrapped) is lost
    during = UnboundLocalError("updated_state")  # Optuna's own, raised while handling it
    during.__context__ = wrapped
    assert storage.connection_lost(during) is lost
    bad_data = IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert storage.connection_lost(optuna.exceptions.StorageInternalError("x")) is None
    assert storage.connection_lost(bad_data) is None
    assert storage.connection_lost(ValueError("a bug")) is None
    monkeypatch.delenv(storage.OUTAGE_ENV, raising=False)
    assert storage.outage_wait_s() == storage.OUTAGE_WAIT_S
    monkeypatch.setenv(storage.OUTAGE_ENV, "2.5")
    assert storage.outage_wait_s() == 2.5
    monkeypatch.setenv(storage.OUTAGE_ENV, "-1")
    with pytest.raises(UserError, match=r"\$MNISTFLOW_OPTUNA_OUTAGE_S must be .*'-1'"):
        storage.outage_wait_s()


@pytest.mark.unit
def test_worker_count_from_the_option_the_environment_or_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mnistflow.cli.tune import WORKERS_ENV, workers_wanted
    from mnistflow.util.errors import UserError

    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert workers_wanted(None) == len(os.sched_getaffinity(0))
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert workers_wanted(None) == 3
    assert workers_wanted(5) == 5
    with pytest.raises(UserError, match=r"--workers must be a positive number.*0"):
        workers_wanted(0)
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(UserError, match=rf"\${WORKERS_ENV} must be .*'many'"):
        workers_wanted(None)


# --- e2e: real studies ---------------------------------------------------------------------------


def tiny_tune_repo(
    base: Path, name: str, max_iter: int = 25, **tune: object
) -> tuple[Path, dict[str, str]]:
    """A repo copy on tiny data with a two-key space, after `dvc repro unpack`. The training
    loss never counts as stalled (``tol`` 0), so every fit runs ``max_iter`` epochs."""
    mirror = base / "tiny-mirror"
    files = write_idx_dataset(mirror, n_train=600, n_test=100) if not mirror.exists() else None
    files = files or fileio.read_json(base / "files.json")
    fileio.write_json(base / "files.json", files)

    def edit(p: dict) -> None:
        train = {"hidden_layer_sizes": [16], "max_iter": max_iter, "tol": 0.0}
        use_tiny_dataset(files, train=train)(p)
        space = {
            "train.alpha": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
            "train.hidden_layer_sizes": {"type": "categorical", "choices": [[16], [32, 16]]},
        }
        p["tune"].update(
            {"holdout_size": 200, "n_trials": 6, "pruner_warmup_epochs": 5, "space": space}
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


def check_study(study, runs: list, n_trials: int, uri: str) -> None:
    """Unique trial numbers, enough finished trials; each finished trial has exactly one
    FINISHED run, nested under the study's parent, whose params are the trial's values,
    whose overrides reproduce them, with the dataset digest and one ``holdout_accuracy`` per
    epoch the trial reported to Optuna; no test metric in any trial run; no run RUNNING."""
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    client = MlflowClient(uri)
    trials = study.get_trials(deepcopy=False)
    assert len({t.number for t in trials}) == len(trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= n_trials
    (parent,) = [r for r in runs if worker.TAG_PARENT_OF in r.data.tags]
    by_trial: dict[str, list] = {}
    for r in runs:
        if worker.TAG_TRIAL in r.data.tags:
            by_trial.setdefault(r.data.tags[worker.TAG_TRIAL], []).append(r)
    for t in finished:
        (r,) = [r for r in by_trial[str(t.number)] if r.info.status == "FINISHED"]
        assert r.info.run_id == t.user_attrs[worker.ATTR_RUN]
        assert r.data.tags[worker.TAG_STATE] == t.state.name
        assert r.data.tags[worker.PARENT_TAG] == parent.info.run_id
        for key, value in t.params.items():  # Optuna's record of the values: the oracle
            assert r.data.params[key] == str(value)
            assert f"-S {key}=" in r.data.tags[worker.TAG_FLAGS]
        assert r.data.params[worker.PARAM_OVERRIDES] == r.data.tags[worker.TAG_FLAGS]
        assert r.data.params["tune.holdout_size"] == "200"
        assert "encode.scaling" in r.data.params
        assert "data.dataset" in r.data.params
        (dataset,) = r.inputs.dataset_inputs
        assert dataset.dataset.digest == r.data.tags["dataset_sha256"][:36]
        history = client.get_metric_history(r.info.run_id, "holdout_accuracy")
        assert {m.step: m.value for m in history} == t.intermediate_values
        assert not [k for k in r.data.metrics if "test" in k], r.data.metrics
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]


def start_pool(repo: Path, env: dict[str, str], workers: int) -> subprocess.Popen:
    """`mnistflow tune --workers N` with its (and its workers') stderr in ``repo/tune.log``:
    a pipe nobody reads while the test polls would fill up and stop the workers."""
    with (repo / "tune.log").open("w") as log:
        return subprocess.Popen(
            [MNISTFLOW, "tune", "--workers", str(workers)], cwd=repo, env=env, stderr=log
        )


def running_at_once(url: str, proc: subprocess.Popen, deadline_s: float = 600) -> set[str]:
    """Poll the Optuna storage until two trials of different workers are RUNNING, mid-fit
    (an epoch reported), at the same moment; return those workers (the storage, not the
    workers' logs, is the oracle)."""
    import optuna
    from optuna.trial import TrialState
    from sqlalchemy.exc import SQLAlchemyError

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            study = optuna.load_study(study_name="mnist-mlp-tune", storage=url)
        except (KeyError, SQLAlchemyError):  # the study or its tables do not exist yet
            time.sleep(0.2)
            continue
        while proc.poll() is None:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            owners = {
                t.user_attrs.get(worker.ATTR_WORKER) for t in running if t.intermediate_values
            }
            if len(owners) >= 2:
                return owners
            time.sleep(0.05)
    return set()


@pytest.mark.e2e
def test_two_workers_run_trials_at_once_then_promote_and_best(tmp_path: Path) -> None:
    """`mnistflow tune --workers 2` in one clone (sqlite): both workers have a RUNNING trial
    at the same moment; every trial is one MLflow run; then `--promote N` and `--best` as
    real `dvc exp run`s, evaluated once on the test set."""
    import optuna
    from mlflow.tracking import MlflowClient

    repo, env = tiny_tune_repo(tmp_path, "repo", max_iter=60)
    url = f"sqlite:///{repo}/optuna.db"
    start = time.perf_counter()
    proc = start_pool(repo, env, 2)
    both = running_at_once(url, proc)
    proc.wait(timeout=1200)
    err = (repo / "tune.log").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert len(both) == 2, err[-3000:]
    print(f"6 trials on 2 local workers: {time.perf_counter() - start:.1f} s")
    study = optuna.load_study(study_name="mnist-mlp-tune", storage=url)
    workers = {t.user_attrs.get(worker.ATTR_WORKER) for t in study.trials}
    assert workers == both
    uri = f"sqlite:///{repo}/mlflow.db"
    check_study(study, trial_runs(uri, "mnist-mlp-tune"), 6, uri)
    assert dvc_experiments(repo, env) == []  # trials are runs, not experiments
    # another worker finds the study complete and runs nothing
    third = run([MNISTFLOW, "tune", "--workers", "1"], repo, env)
    assert "already has" in third.stderr

    # a trial reruns in-process with identical metrics, a pruned one to its epoch
    best_trial = study.best_trial
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    for t in [best_trial, *pruned[:1]]:
        again = run([MNISTFLOW, "reproduce", t.user_attrs[worker.ATTR_RUN]], repo, env)
        assert "result: identical" in again.stdout, again.stdout + again.stderr[-3000:]
        assert f"holdout_accuracy of each of {len(t.intermediate_values)} epochs" in again.stdout
    print(f"pruned trials: {len(pruned)}")
    tampered = best_trial.user_attrs[worker.ATTR_RUN]
    client = MlflowClient(uri)
    client.log_metric(tampered, "holdout_accuracy", 0.123, step=len(best_trial.intermediate_values))
    differ = run([MNISTFLOW, "reproduce", tampered], repo, env, check=False)
    assert differ.returncode == 1, differ.stdout + differ.stderr[-3000:]
    assert "result: NOT identical" in differ.stdout
    assert "holdout_accuracy" in differ.stdout.split("result:")[1]

    # --promote: any trial (here not the best) as a real experiment with its params
    other = next(t for t in study.trials if t.number != best_trial.number and t.params)
    run([MNISTFLOW, "tune", "--promote", str(other.number)], repo, env)
    assert f"mnist-mlp-tune-t{other.number}" in dvc_experiments(repo, env)
    promoted = load_params(repo / "params.yaml")  # `dvc exp run` leaves them in the workspace
    assert promoted["train"]["alpha"] == other.params["train.alpha"]
    assert str(promoted["train"]["hidden_layer_sizes"]).replace(" ", "") == other.params[
        "train.hidden_layer_sizes"
    ].replace(" ", "")
    assert "test_accuracy" in fileio.read_json(repo / "outputs/evaluate/metrics.json")
    missing = run([MNISTFLOW, "tune", "--promote", "999"], repo, env, check=False)
    assert missing.returncode == storage.StudyError.exit_code
    assert "no trial #999" in missing.stderr

    # --best: a named experiment on the full training set, evaluated once on the test set
    run([MNISTFLOW, "tune", "--best"], repo, env)
    assert "mnist-mlp-tune-best" in dvc_experiments(repo, env)
    metrics = fileio.read_json(repo / "outputs/evaluate/metrics.json")
    assert load_params(repo / "params.yaml")["train"]["alpha"] == best_trial.params["train.alpha"]
    evaluated = trial_runs(uri, "mnist-mlp")  # the two experiments' pipeline runs
    assert len(evaluated) == 2
    assert metrics["test_accuracy"] in [
        pytest.approx(r.data.metrics["test_accuracy"], abs=1e-6) for r in evaluated
    ]
    report = (repo / "reports/tune/mnist-mlp-tune/report.md").read_text()
    assert f"{metrics['test_accuracy']:.4f}" in report
    assert f"Best trial **#{best_trial.number}**" in report
    # every trial run records the worker's floating-point environment; one machine, one print
    trial_fps = {
        r.data.tags["numerics.fingerprint"]
        for r in trial_runs(uri, "mnist-mlp-tune")
        if worker.TAG_TRIAL in r.data.tags
    }
    assert len(trial_fps) == 1
    assert f"ran under numerics fingerprint `{trial_fps.pop()}`" in report
    (parent,) = [
        r for r in trial_runs(uri, "mnist-mlp-tune") if worker.TAG_PARENT_OF in r.data.tags
    ]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/history.png", "report/importances.png", "report/parallel.png",
            "report/report.md"} <= logged  # fmt: skip
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(
        metrics["test_accuracy"], abs=1e-6
    )
    assert parent.data.metrics["best_val_accuracy"] == best_trial.value


@pytest.mark.e2e
def test_a_worker_runs_one_blas_thread_without_the_numerics_pin(tmp_path: Path) -> None:
    """Under MNISTFLOW_NUMERICS=native the pin sets no thread count, and OpenBLAS would start
    one thread per core (the control); a worker still records one BLAS thread on its trial."""
    repo, env = tiny_tune_repo(tmp_path, "repo", max_iter=2, n_trials=1)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
    env.update({"MNISTFLOW_NUMERICS": "native", "MNISTFLOW_NUMERICS_PRESET": "{}"})
    probe = (
        "import mnistflow, numpy, threadpoolctl; print(max(lib['num_threads'] for lib in "
        "threadpoolctl.threadpool_info() if lib['user_api'] == 'blas'))"
    )
    if int(run([sys.executable, "-c", probe], repo, env).stdout) == 1:
        pytest.skip("OpenBLAS starts one thread here anyway (one core)")
    run([MNISTFLOW, "tune", "--workers", "1"], repo, env)
    (trial,) = [
        r for r in trial_runs(f"sqlite:///{repo}/mlflow.db", "mnist-mlp-tune")
        if worker.TAG_TRIAL in r.data.tags
    ]  # fmt: skip
    assert trial.data.tags["numerics.mode"] == "native"
    assert trial.data.tags["numerics.blas_threads"] == "1"


@pytest.mark.e2e
def test_a_stopped_pool_leaves_no_trial_and_no_run_running(tmp_path: Path) -> None:
    """SIGTERM to `mnistflow tune --workers 2` mid-fit: it stops its workers and exits 143;
    both trials are FAIL in the storage, their MLflow runs KILLED."""
    import optuna
    from optuna.trial import TrialState

    repo, env = tiny_tune_repo(tmp_path, "repo", max_iter=5000, pruner="none")
    url = f"sqlite:///{repo}/optuna.db"
    proc = start_pool(repo, env, 2)
    both = running_at_once(url, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    err = (repo / "tune.log").read_text()
    assert len(both) == 2, err[-3000:]
    assert proc.returncode == 143, err[-3000:]
    trials = optuna.load_study(study_name="mnist-mlp-tune", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2, err[-3000:]
    runs = trial_runs(f"sqlite:///{repo}/mlflow.db", "mnist-mlp-tune")
    by_id = {r.info.run_id: r.info.status for r in runs}
    assert [by_id[t.user_attrs[worker.ATTR_RUN]] for t in trials] == ["KILLED"] * 2
    assert "RUNNING" not in by_id.values()


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
    from mnistflow.ops import postgres

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
    # 80 epochs: the kill below lands mid-fit, while the worker reports epochs to the trial
    clones = [tiny_tune_repo(tmp_path, f"clone{i}", max_iter=80, **tune) for i in (1, 2)]
    procs = []
    for repo, env in clones:
        env = {
            **team_server.client_env(env),
            storage.STORAGE_ENV: url,
            "MNISTFLOW_HEARTBEAT_S": "1",
        }
        log = (repo / "worker.log").open("w")
        cmd = [MNISTFLOW, "tune", "--workers", "1"]
        procs.append(subprocess.Popen(cmd, cwd=repo, env=env, stderr=log))
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
        check_study(study, runs, 6, team_server.uri)  # also: no run left RUNNING
    # the killed trial's run died with its worker: the survivor's liveness sweep ended it
    (dead,) = [r for r in runs if r.data.tags.get(worker.TAG_TRIAL) == str(killed_trial)]
    assert dead.info.status in ("FAILED", "KILLED")
    # and says what the study says of its trial: failed as stale by the survivor
    assert dead.data.tags[worker.TAG_STATE] == "FAIL"


@pytest.mark.unit
def test_the_study_report_says_when_trials_ran_under_several_fingerprints() -> None:
    from mnistflow.tuning.report import numerics_line

    assert (
        numerics_line({"aaa": 3}) == "All 3 complete trials ran under numerics fingerprint `aaa`."
    )
    mixed = numerics_line({"aaa": 3, "bbb": 1})
    assert "2 numerics fingerprints" in mixed
    assert "`aaa`: 3" in mixed
    assert "`bbb`: 1" in mixed


def running_without_heartbeat(url: str) -> set[int]:
    """RUNNING trials with no row in Optuna's heartbeat table (SQL on the database)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    query = sqlalchemy.text(
        "SELECT t.number FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
        " WHERE t.state = 'RUNNING' AND h.trial_id IS NULL"
    )
    try:
        with engine.connect() as connection:
            return {row[0] for row in connection.execute(query)}
    finally:
        engine.dispose()


@pytest.mark.e2e
@pytest.mark.parametrize(("down_s", "wait_s"), [(3, None), (12, 3)], ids=["survived", "gave-up"])
def test_a_postgres_restart_mid_study_leaves_no_trial_or_run_running(
    tmp_path: Path, down_s: int, wait_s: int | None
) -> None:
    """`mnistflow tune --workers 2` on a PostgreSQL study: `pg_ctl stop -m fast` once a trial
    finished and another runs mid-fit, `pg_ctl start` `down_s` later. Within the workers' wait
    ($MNISTFLOW_OPTUNA_OUTAGE_S) they carry on; past it they stop with one line, exit 4, and
    the same command run again resumes. The oracles are Optuna's storage (`load_study`) and the
    MLflow store (`search_runs`): `tune.n_trials` finished trials, every trial the outage cut
    FAIL (with a finished retry of it when the workers carried on), none and no run RUNNING."""
    import optuna
    from optuna.trial import TrialState

    from tests.services import scratch_cluster

    tune = {"n_trials": 8, "heartbeat_interval": 1, "grace_period": 4}
    repo, env = tiny_tune_repo(tmp_path, "repo", max_iter=60, **tune)
    with scratch_cluster("mnistflow-optuna-restart-") as (_, cluster):
        url = storage.storage_url(validate(load_params(repo / "params.yaml")).tune, repo,
                                  cluster.create_database("optuna"))  # fmt: skip
        env = {**env, storage.STORAGE_ENV: url}
        if wait_s is not None:
            env[storage.OUTAGE_ENV] = str(wait_s)
        proc = start_pool(repo, env, 2)
        deadline = time.monotonic() + 600
        running_then: set[int] = set()
        while not running_then:
            assert time.monotonic() < deadline, "no trial finished while another ran"
            assert proc.poll() is None, (repo / "tune.log").read_text()[-3000:]
            try:
                trials = optuna.load_study(study_name="mnist-mlp-tune", storage=url).trials
            except (KeyError, optuna.exceptions.StorageInternalError):
                time.sleep(0.2)
                continue
            mid_fit = {
                t.number for t in trials if t.state == TrialState.RUNNING and t.intermediate_values
            }
            if mid_fit and any(t.state == TrialState.COMPLETE for t in trials):
                running_then = mid_fit
            time.sleep(0.05)
        cluster.stop()  # pg_ctl stop -m fast: every connection of the workers is cut
        time.sleep(down_s)
        cluster.start(cluster.port)
        back = datetime.now()  # naive local time, as Optuna stores datetime_start
        code = proc.wait(timeout=900)
        log = (repo / "tune.log").read_text()
        print(f"PostgreSQL down {down_s} s with trials {sorted(running_then)} mid-fit; "
              f"the pool exited {code}")  # fmt: skip
        if wait_s is None:
            assert code == 0, log[-3000:]
            assert "the Optuna storage answers again" in log
        else:
            assert code == storage.StudyError.exit_code, log[-3000:]
            errors = [line for line in log.splitlines() if " ERROR " in line]
            assert errors, log[-3000:]
            for line in errors:  # each worker's one line, then the pool's exit line
                assert "lost the Optuna storage" in line or "exited 4" in line, line
            assert "Traceback" not in log.split("MNISTFLOW_OPTUNA_OUTAGE_S) for it")[-1]
            rerun = run([MNISTFLOW, "tune", "--workers", "2"], repo, env)
            print(f"the rerun: {rerun.stderr.count('finished with value')} more trials")
        study = optuna.load_study(study_name="mnist-mlp-tune", storage=url)
        trials = study.get_trials()
        left = {t.number for t in trials if t.state == TrialState.RUNNING}
        if wait_s is None:
            assert not left, log[-3000:]
        else:  # the one known gap, asserted from the database itself: a trial whose first
            # heartbeat never reached it is never stale to Optuna, so it stays RUNNING
            assert left == running_without_heartbeat(url), log[-3000:]
        failed = {t.number for t in trials if t.state == TrialState.FAIL}
        assert failed, f"the outage cut no trial: {log[-3000:]}"
        # cut by the outage: started before the database was back (the ones mid-fit when it
        # was stopped, and any a worker had just asked for)
        assert all(trials[n].datetime_start < back for n in failed), failed
        retried = {
            t.system_attrs["failed_trial"]: t for t in trials if "failed_trial" in t.system_attrs
        }
        assert set(retried) <= failed
        if wait_s is None:
            assert set(retried) == failed
        for number, retry in retried.items():
            if trials[number].params:  # cut before it drew them: nothing to repeat
                assert retry.params == trials[number].params
        uri = f"sqlite:///{repo}/mlflow.db"
        runs = trial_runs(uri, "mnist-mlp-tune")
        check_study(study, runs, 8, uri)  # n_trials finished, each with its run; none RUNNING
        for number in failed:  # the cut trial's run (none if cut before it started): ended
            # FAILED, or its fit had finished and the outage cut off its result
            for r in [r for r in runs if r.data.tags.get(worker.TAG_TRIAL) == str(number)]:
                if r.info.status == "FINISHED":
                    assert r.data.tags[worker.TAG_STATE] == "FAIL", r.data.tags
                else:
                    assert r.info.status == "FAILED", r.info
