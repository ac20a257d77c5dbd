"""The one place that touches other libraries' private names, each checked against a version.

scikit-learn's ``MLPClassifier`` has no public per-epoch callback, no public way to change the
step size of a running optimizer or to reach its moments, and no public stop signal from
``partial_fit``; MLflow has no public "newest schema revision" to compare a half-created
sqlite store with; skops needs the private optimizer classes an ``MLPClassifier`` pickles.
Everything else in ``src/`` uses public APIs only (``tests/test_internals.py`` reads the code
to prove it).

Each use below is checked against the versions in :data:`CHECKED` (the locked ones, which are
also the lower bounds in ``pyproject.toml``): ``tests/test_internals.py`` fails on any other
installed version, so an upgrade is a deliberate step (rerun the tests, move the bound), not
a silent change of behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by the tracking store too: no NumPy before the numerics pin
    from sklearn.neural_network import MLPClassifier

# library -> (lowest, highest) version these uses are tested with (both inclusive)
CHECKED = {"scikit-learn": ("1.9.1", "1.9.1"), "mlflow": ("3.17.2", "3.17.2")}

# Beyond skops' defaults, the only types an MLPClassifier (adam / sgd solver) holds.
SKOPS_TRUSTED_TYPES = [
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
]


@contextmanager
def each_epoch(model: MLPClassifier, hook: Callable[[], None]) -> Iterator[None]:
    """Call ``hook()`` after every epoch of ``model.fit`` (stochastic solvers).

    sklearn calls ``_update_no_improvement_count`` once per epoch, right after recording the
    epoch's loss (and validation score); an instance attribute shadows it while the block
    runs and is removed afterwards, so the fitted model pickles as a plain MLPClassifier.
    ``hook`` may raise to stop the fit after that epoch.
    """
    original = model._update_no_improvement_count

    def per_epoch(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        hook()
        return result

    model._update_no_improvement_count = per_epoch  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model._update_no_improvement_count


def stalled_epochs(model: MLPClassifier) -> int:
    """Epochs in a row without improvement, as sklearn's stop on ``tol`` counts them."""
    return int(model._no_improvement_count)


def reset_stalled_epochs(model: MLPClassifier) -> None:
    """Start sklearn's count of epochs without improvement afresh."""
    model._no_improvement_count = 0


def optimizer_gives_up(model: MLPClassifier, reason: str) -> bool:
    """Ask the optimizer, as ``fit`` does after ``n_iter_no_change`` stalled epochs, whether
    to stop (sgd 'adaptive' divides its rate by 5 instead, until it is below 1e-6)."""
    return bool(model._optimizer.trigger_stopping(reason, False))


def set_step_size(model: MLPClassifier, rate: float) -> None:
    """The step size of the next epoch on the running optimizer (adam derives its step from
    ``learning_rate_init`` at every update, sgd uses ``learning_rate``, which only its
    'invscaling'/'adaptive' schedules change)."""
    optimizer = model._optimizer
    if model.solver == "adam":
        optimizer.learning_rate_init = rate
    else:
        optimizer.learning_rate = rate


@contextmanager
def in_place_adam(model: MLPClassifier) -> Iterator[None]:
    """While the block runs, the running adam optimizer of ``model`` updates the weights and
    its moments in place: the same operations in the same order and precision as sklearn's
    ``AdamOptimizer`` (bit for bit: the tests compare both), without the new arrays sklearn
    allocates for every moment and step of every batch (measured: 4.5 s instead of 4.8 s
    per epoch of a one-layer 1200-unit net).

    A no-op for other solvers and before the first ``partial_fit`` (no optimizer yet). An
    instance attribute shadows ``update_params`` while the block runs and is removed after,
    so the model pickles as a plain MLPClassifier.
    """
    optimizer = getattr(model, "_optimizer", None)
    if model.solver != "adam" or optimizer is None:
        yield
        return
    import numpy as np  # here, not at the top: the tracking store imports this module

    def update_params(params: list[Any], grads: list[Any]) -> None:
        # sklearn: t += 1; ms = b1*m + (1-b1)*g; vs = b2*v + (1-b2)*g**2;
        # learning_rate = init*sqrt(1-b2**t)/(1-b1**t); param += -learning_rate*m/(sqrt(v)+eps)
        opt = optimizer
        opt.t += 1
        b1, b2 = opt.beta_1, opt.beta_2
        opt.learning_rate = opt.learning_rate_init * np.sqrt(1 - b2**opt.t) / (1 - b1**opt.t)
        step = -opt.learning_rate  # a NumPy float64: the step below is float64, as sklearn's
        for param, m, v, grad in zip(params, opt.ms, opt.vs, grads, strict=True):
            tmp = np.multiply(grad, 1 - b1)
            m *= b1
            m += tmp
            np.square(grad, out=tmp)
            tmp *= 1 - b2
            v *= b2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp += opt.epsilon
            update = np.multiply(m, step)
            update /= tmp
            param += update

    optimizer.update_params = update_params
    try:
        yield
    finally:
        del optimizer.update_params


def forget_optimizer(model: MLPClassifier) -> None:
    """Drop the fitted ``model``'s optimizer (a net merged from others: its moments would not
    fit the new shapes); a later ``partial_fit`` starts a new one, as after ``fit``."""
    if hasattr(model, "_optimizer"):
        del model._optimizer


def optimizer_state(model: MLPClassifier) -> list[Any]:
    """The running optimizer's arrays that carry over between epochs: adam's first and
    second moments, sgd's velocities (updated in place, as the weights are)."""
    optimizer = model._optimizer
    if model.solver == "adam":
        return [*optimizer.ms, *optimizer.vs]
    return list(optimizer.velocities)


def mlflow_schema_head() -> str:
    """The schema revision this MLflow creates and verifies a database store against."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())
