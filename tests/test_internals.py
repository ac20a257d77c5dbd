"""Other libraries' private names are touched in one module only, at checked versions."""

from __future__ import annotations

import ast
import sqlite3
import tomllib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from packaging.version import Version
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from mnistflow import internals
from tests.helpers import REPO_ROOT

SRC = REPO_ROOT / "src" / "mnistflow"
# Names with a leading underscore that are public API of their library (documented).
PUBLIC_UNDERSCORED = {"_exit", "_replace", "_asdict", "_fields", "_make"}


def private_uses(path: Path) -> list[str]:
    """``name._private`` accesses on anything but self/cls, and imports of private names or
    modules of other libraries, as ``file:line text``."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            base = node.value
            own = isinstance(base, ast.Name) and base.id in {"self", "cls"}
            if not own and not node.attr.startswith("__") and node.attr not in PUBLIC_UNDERSCORED:
                name = node.attr
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            theirs = not node.module.startswith("mnistflow")
            parts = node.module.split(".") + [a.name for a in node.names]
            if theirs and any(p.startswith("_") and not p.startswith("__") for p in parts):
                name = node.module
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith(("sklearn.", "mlflow."))
            and "._" in node.value
        ):
            name = node.value
        if name is not None:
            where = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
            found.append(f"{where}:{node.lineno} {name}")
    return found


@pytest.mark.unit
def test_the_reader_finds_private_uses(tmp_path: Path) -> None:
    """The oracle below is only as good as its reader: it must see each kind of use."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from mlflow.store.db.utils import _get_latest_schema_revision\n"
        "model._optimizer.learning_rate = 1\n"
        "T = 'sklearn.neural_network._stochastic_optimizers.AdamOptimizer'\n"
        "self._mine = os._exit\n"
    )
    assert sorted(u.split(" ")[1] for u in private_uses(sample)) == [
        "_optimizer",
        "mlflow.store.db.utils",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    ]


@pytest.mark.unit
def test_no_private_names_of_other_libraries_outside_internals() -> None:
    uses = [
        use
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "internals.py"
        for use in private_uses(path)
    ]
    assert uses == []
    assert private_uses(SRC / "internals.py"), "internals.py itself is read"


@pytest.mark.unit
@pytest.mark.parametrize("library", sorted(internals.CHECKED))
def test_installed_versions_are_the_checked_ones(library: str) -> None:
    """Fails on an upgrade: rerun the suite on the new version, then move CHECKED and the
    lower bound in pyproject.toml together."""
    low, high = internals.CHECKED[library]
    assert Version(low) <= Version(version(library)) <= Version(high)


@pytest.mark.unit
@pytest.mark.parametrize("library", sorted(internals.CHECKED))
def test_pyproject_lower_bounds_are_the_checked_versions(library: str) -> None:
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {d.split(">=")[1] for d in deps if d.split(">=")[0].split("[")[0] == library}
    assert bounds == {internals.CHECKED[library][0]}


def tiny() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.random((60, 5))
    return X, (X[:, 0] > 0.5).astype(int)


@pytest.mark.unit
def test_each_epoch_calls_the_hook_once_per_epoch_and_leaves_a_plain_model() -> None:
    X, y = tiny()
    model = MLPClassifier((4,), max_iter=3, random_state=0)
    losses: list[float] = []
    hook = internals.each_epoch(model, lambda: losses.append(model.loss_))
    with pytest.warns(ConvergenceWarning), hook:
        model.fit(X, y)
    assert losses == model.loss_curve_  # the hook saw each epoch's loss, in order
    assert "_update_no_improvement_count" not in vars(model)


@pytest.mark.unit
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_a_zero_step_size_freezes_the_weights(solver: str) -> None:
    X, y = tiny()
    model = MLPClassifier((4,), solver=solver, momentum=0.0, random_state=0)  # no carried step
    model.partial_fit(X, y, classes=[0, 1])
    before = [c.copy() for c in model.coefs_]
    internals.set_step_size(model, 0.0)
    model.partial_fit(X, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.coefs_, strict=True))
    internals.set_step_size(model, 0.1)
    model.partial_fit(X, y)
    assert not np.array_equal(before[0], model.coefs_[0])


@pytest.mark.unit
@pytest.mark.parametrize(("solver", "expected"), [("adam", 2 * 2), ("sgd", 2)])
def test_optimizer_state_is_the_live_moments_of_each_layer(solver: str, expected: int) -> None:
    """Adam: first and second moment per weight array; sgd: one velocity per array. They are
    the optimizer's own arrays: zeroing one in place changes the next update."""
    X, y = tiny()
    model = MLPClassifier((4,), solver=solver, random_state=0)
    model.partial_fit(X, y, classes=[0, 1])
    state = internals.optimizer_state(model)
    weights = [*model.coefs_, *model.intercepts_]
    assert len(state) == expected * len(weights) // 2
    assert [a.shape for a in state[: len(weights)]] == [w.shape for w in weights]
    assert any(np.abs(a).sum() > 0 for a in state)  # a fitted epoch left moments behind
    twin = MLPClassifier((4,), solver=solver, random_state=0)
    twin.partial_fit(X, y, classes=[0, 1])
    for a in internals.optimizer_state(twin):
        a[...] = 0
    model.partial_fit(X, y)
    twin.partial_fit(X, y)
    assert not np.array_equal(model.coefs_[0], twin.coefs_[0])


@pytest.mark.unit
def test_stalled_epochs_count_as_sklearn_stops_on_tol() -> None:
    """With tol huge no epoch after the first (which improves on an infinite best loss)
    counts as better: sklearn's count grows by one per partial_fit, the optimizer (adam)
    then gives up, and a reset starts the count afresh."""
    X, y = tiny()
    model = MLPClassifier((4,), tol=1e9, n_iter_no_change=100, random_state=0)
    for _ in range(3):
        model.partial_fit(X, y, classes=[0, 1])
    assert internals.stalled_epochs(model) == 2
    assert internals.optimizer_gives_up(model, "test")
    internals.reset_stalled_epochs(model)
    assert internals.stalled_epochs(model) == 0


@pytest.mark.e2e
def test_mlflow_schema_head_is_the_revision_of_a_new_store(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # MLflow creates the store
    with sqlite3.connect(db) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert internals.mlflow_schema_head() == revision


@pytest.mark.unit
def test_in_place_adam_is_sklearns_adam_bit_for_bit() -> None:
    """Oracle: sklearn's own AdamOptimizer on a twin model. After a first epoch (which makes
    the optimizer), two more epochs with and without the in-place updates leave the same
    weights, moments, step count and loss, bit for bit (float32 data, as the online fit)."""
    rng = np.random.default_rng(1)
    X = rng.random((300, 20), dtype=np.float32)
    y = rng.integers(0, 3, 300)
    model = MLPClassifier((16, 8), batch_size=32, alpha=1e-3, random_state=0)
    twin = MLPClassifier((16, 8), batch_size=32, alpha=1e-3, random_state=0)
    for m in (model, twin):
        m.partial_fit(X, y, classes=[0, 1, 2])
    for _ in range(2):
        with internals.in_place_adam(model):
            model.partial_fit(X, y)
        twin.partial_fit(X, y)

    def state(m: MLPClassifier) -> list[np.ndarray]:
        return [*m.coefs_, *m.intercepts_, *internals.optimizer_state(m)]

    assert model.coefs_[0].dtype == np.float32
    assert all(np.array_equal(a, b) for a, b in zip(state(model), state(twin), strict=True))
    assert model._optimizer.t == twin._optimizer.t == 3 * 10  # 300 rows / 32: 10 batches
    assert model.loss_ == twin.loss_
    assert "update_params" not in vars(model._optimizer)  # pickles as sklearn's optimizer


@pytest.mark.unit
def test_in_place_adam_leaves_other_solvers_and_new_models_alone() -> None:
    X, y = tiny()
    sgd = MLPClassifier((4,), solver="sgd", max_iter=2)
    with pytest.warns(ConvergenceWarning):
        sgd.fit(X, y)
    with internals.in_place_adam(sgd):
        assert "update_params" not in vars(sgd._optimizer)
    new = MLPClassifier((4,))
    with internals.in_place_adam(new):
        new.partial_fit(X, y, classes=[0, 1])  # makes sklearn's optimizer, unpatched
    assert "update_params" not in vars(new._optimizer)
