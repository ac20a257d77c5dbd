"""Classification metrics on arrays (pure): accuracies, confusion, confused pairs, and the
names they are recorded under (DVC metrics file and MLflow alike)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# sklearn is imported in the functions that use it: the CLI reads HEADLINE, and importing
# sklearn for a name costs each `mnistflow` command about a second.

# The headline metric's one name, in MLflow, the DVC metrics file, reports and leaderboards.
HEADLINE = "test_accuracy"
# A tuning trial's objective: argmax accuracy on held-out *training* rows (never the test set)
HOLDOUT_ACCURACY = "holdout_accuracy"


def true_classes(y: np.ndarray) -> np.ndarray:
    """Class indices (n,) from one-hot rows (n, k) or from indices (n,)."""
    if y.ndim == 2:
        if not np.all(y.sum(axis=1) == 1):
            raise ValueError("one-hot targets must have exactly one 1 per row")
        return np.argmax(y, axis=1).astype(np.int64)
    return y.astype(np.int64)


def check_test_labels(
    y_true: np.ndarray, labels: np.ndarray, n_encoded: int, n_names: int, source: str
) -> None:
    """Raise ValueError unless encode's test classes ``y_true`` equal unpack's ``labels`` and
    encode's class count ``n_encoded`` equals the dataset's ``n_names`` class names.

    ``source`` names the files compared, for the message.
    """
    if n_encoded != n_names:
        raise ValueError(f"{source}: {n_encoded} encoded classes, but {n_names} class names")
    if not np.array_equal(y_true, np.asarray(labels).astype(np.int64)):
        raise ValueError(f"{source} disagree on the test labels: re-run the pipeline (dvc repro)")


def one_hot(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Bool indicator (n, n_classes) of class indices."""
    out = np.zeros((classes.shape[0], n_classes), dtype=bool)
    out[np.arange(classes.shape[0]), classes] = True
    return out


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of rows where the predicted class equals the true class (0 for no rows)."""
    from sklearn import metrics as skm

    return float(skm.accuracy_score(y_true, y_pred)) if y_true.size else 0.0


def exact_match_accuracy(y_true: np.ndarray, pred_sets: np.ndarray) -> float:
    """Share of rows whose predicted class set is exactly {true class}: sklearn's subset
    accuracy on indicator rows, i.e. ``MLPClassifier.score`` with one-hot targets."""
    from sklearn import metrics as skm

    truth = one_hot(y_true, pred_sets.shape[1])
    return float(skm.accuracy_score(truth, pred_sets)) if y_true.size else 0.0


def set_sizes(pred_sets: np.ndarray) -> tuple[int, int]:
    """Rows with no predicted class and rows with several, from a bool indicator (n, k)."""
    counts = pred_sets.sum(axis=1)
    return int(np.sum(counts == 0)), int(np.sum(counts > 1))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class; every
    class has its row and column, also when it never occurs."""
    from sklearn import metrics as skm

    labels = np.arange(n_classes)
    return skm.confusion_matrix(y_true, y_pred, labels=labels).astype(np.int64)


def per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class index (0 where undefined)."""
    from sklearn import metrics as skm

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(n_classes), zero_division=0
    )
    return {
        "precision": np.asarray(precision, dtype=np.float64),
        "recall": np.asarray(recall, dtype=np.float64),
        "f1": np.asarray(f1, dtype=np.float64),
        "support": np.asarray(support, dtype=np.int64),
    }


@dataclass(frozen=True)
class ConfusedPair:
    """Two classes mixed up in either direction: ``a`` < ``b``."""

    a: int
    b: int
    a_as_b: int  # true a predicted b
    b_as_a: int  # true b predicted a

    @property
    def total(self) -> int:
        """Errors in both directions."""
        return self.a_as_b + self.b_as_a


def confused_pairs(cm: np.ndarray, top: int) -> list[ConfusedPair]:
    """The ``top`` unordered class pairs with the most errors (both directions summed).

    Ties are broken by class order so the result is deterministic; pairs without errors are
    left out.
    """
    k = cm.shape[0]
    pairs = [
        ConfusedPair(a, b, int(cm[a, b]), int(cm[b, a]))
        for a in range(k)
        for b in range(a + 1, k)
        if cm[a, b] + cm[b, a] > 0
    ]
    pairs.sort(key=lambda p: (-p.total, p.a, p.b))
    return pairs[:top]


@dataclass(frozen=True)
class Evaluation:
    """Everything evaluate reports about one model on the test set."""

    headline: str  # "argmax" | "exact_match"
    accuracy: float  # the headline accuracy
    accuracy_argmax: float
    accuracy_exact_match: float
    rows_no_class: int
    rows_multi_class: int
    n_test: int
    confusion: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    pairs: list[ConfusedPair]
    y_true: np.ndarray
    y_pred: np.ndarray  # argmax class
    wrong: np.ndarray  # bool mask of errors under the headline metric


def evaluate(
    y_true: np.ndarray, scores: np.ndarray, pred_sets: np.ndarray, headline: str, top_pairs: int
) -> Evaluation:
    """All metrics for class indices ``y_true`` against scores and predicted sets.

    Args:
        y_true: true class indices (n,).
        scores: per-class scores (n, k).
        pred_sets: predicted class sets, bool (n, k).
        headline: "argmax" or "exact_match": which accuracy is the headline and which rows
            count as misclassified.
        top_pairs: how many confused pairs to list.
    """
    if headline not in ("argmax", "exact_match"):
        raise ValueError(f"unknown headline metric {headline!r}")
    n_classes = scores.shape[1]
    y_pred = np.argmax(scores, axis=1).astype(np.int64)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    pc = per_class(y_true, y_pred, n_classes)
    no_class, multi = set_sizes(pred_sets)
    exact_ok = np.all(pred_sets == one_hot(y_true, n_classes), axis=1)
    acc_argmax = accuracy(y_true, y_pred)
    acc_exact = exact_match_accuracy(y_true, pred_sets)
    return Evaluation(
        headline=headline,
        accuracy=acc_argmax if headline == "argmax" else acc_exact,
        accuracy_argmax=acc_argmax,
        accuracy_exact_match=acc_exact,
        rows_no_class=no_class,
        rows_multi_class=multi,
        n_test=int(y_true.shape[0]),
        confusion=cm,
        precision=pc["precision"],
        recall=pc["recall"],
        f1=pc["f1"],
        support=pc["support"],
        pairs=confused_pairs(cm, top_pairs),
        y_true=y_true,
        y_pred=y_pred,
        wrong=(y_pred != y_true) if headline == "argmax" else ~exact_ok,
    )


def describe(ev: Evaluation) -> str:
    """The evaluation in one line (the evaluate stage's log): headline, both accuracies and
    the rows with no predicted class or several."""
    return (
        f"{HEADLINE} {ev.accuracy:.4f} ({ev.headline}); argmax {ev.accuracy_argmax:.4f}, "
        f"exact match {ev.accuracy_exact_match:.4f}; rows with no class {ev.rows_no_class}, "
        f"several {ev.rows_multi_class}"
    )


def headline_key(headline: str) -> str:
    """The metric name of a headline choice: ``test_accuracy_argmax`` or ``..._exact_match``."""
    return f"{HEADLINE}_{headline}"


def summary(ev: Evaluation, baseline: float) -> dict[str, float | int]:
    """The run's scalar metrics under their one set of names, shared by the DVC metrics file
    and MLflow (``HEADLINE`` is the headline accuracy, whichever that is)."""
    return {
        HEADLINE: ev.accuracy,
        headline_key("argmax"): ev.accuracy_argmax,
        headline_key("exact_match"): ev.accuracy_exact_match,
        "baseline": baseline,
        "delta_to_baseline": ev.accuracy - baseline,
        "rows_no_class": ev.rows_no_class,
        "rows_multi_class": ev.rows_multi_class,
        "n_test": ev.n_test,
    }


def _rounded(value: float | int) -> float | int:
    return round(value, 6) if isinstance(value, float) else value


# The DVC metrics file's keys, in the order `dvc exp show` shows its columns: the headline
# first. The baseline is a param (evaluate.baseline_accuracy), per-class scores are a plot.
DVC_METRICS = (
    HEADLINE,
    headline_key("argmax"),
    headline_key("exact_match"),
    "delta_to_baseline",
    "n_test",
    "rows_no_class",
    "rows_multi_class",
)


def metrics_dict(ev: Evaluation, baseline: float) -> dict[str, float | int]:
    """The DVC metrics file: the headline figures of :func:`summary` (6 decimals) in the
    order of :data:`DVC_METRICS`. Deterministic: no timing."""
    values = summary(ev, baseline)
    return {k: _rounded(values[k]) for k in DVC_METRICS}


PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support")


def per_class_rows(
    ev: Evaluation, classes: list[str]
) -> list[tuple[str, float, float, float, int]]:
    """One row per class (its name, precision, recall, F1 to 6 decimals, support): the
    per-class plot's table."""
    return [
        (
            name,
            round(float(ev.precision[k]), 6),
            round(float(ev.recall[k]), 6),
            round(float(ev.f1[k]), 6),
            int(ev.support[k]),
        )
        for k, name in enumerate(classes)
    ]


def mlflow_metrics(ev: Evaluation, baseline: float) -> dict[str, float]:
    """The MLflow metrics of an evaluation: :func:`summary` and flat per-class names
    (``precision_class_<k>``, ``recall_class_<k>``, ``f1_class_<k>``)."""
    out = {k: float(v) for k, v in summary(ev, baseline).items()}
    for k in range(len(ev.f1)):
        out[f"precision_class_{k}"] = float(ev.precision[k])
        out[f"recall_class_{k}"] = float(ev.recall[k])
        out[f"f1_class_{k}"] = float(ev.f1[k])
    return out
