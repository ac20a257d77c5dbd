"""The human report of the latest run, as markdown text (pure).

:func:`render` is deterministic (same params and data, same text): it is committed as
``reports/latest/report.md``. What is per run by nature (run id, fit time, store location)
is in :func:`run_section`, appended only to the copy logged to the MLflow run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mnistflow.modeling.metrics import Evaluation
from mnistflow.reporting.misclassified import CAPTION_KEY


def headline_why(headline: str, n_classes: int) -> str:
    """Why the headline metric is what it is, for one-hot targets (any dataset)."""
    if headline == "argmax":
        return (
            f"With one-hot targets scikit-learn trains {n_classes} independent yes/no outputs, "
            "and its `predict` keeps every class scoring over 0.5: a row can get no class or "
            "several. The headline takes the class with the highest output for every row "
            "(argmax), which always answers exactly one class, like a person labelling the "
            "image would. The original exact-match score (the predicted set must be exactly "
            "the true class) is reported beside it."
        )
    return (
        f"The headline is the original exact-match score: with one-hot targets scikit-learn "
        f"predicts {n_classes} independent outputs and a row only counts as right when the set "
        "of classes over 0.5 is exactly the true class; rows with no class or several count "
        "as wrong. The argmax accuracy (highest output wins) is reported beside it."
    )


def architecture(
    hidden_layer_sizes: Sequence[int],
    activation: str,
    solver: str,
    members: int = 1,
    views: int = 1,
) -> str:
    """The model in a few words, e.g. ``MLP 100-50-25 (relu, adam)``.

    ``hidden_layer_sizes`` are the fitted model's. A model merged from ``members`` nets with
    ``views`` test-time views each is named by one net's shape and how it was merged, e.g.
    ``MLP 1200-300 (relu, adam) with 5 test-time views, merged into one MLP 6000-1500`` or
    ``2 x MLP 1200 (relu, adam), merged into one MLP 2400``; sizes that ``members * views``
    does not divide are shown as they are.
    """
    sizes = list(hidden_layer_sizes)
    copies = members * views
    if copies == 1 or any(n % copies for n in sizes):
        return f"MLP {_shape(sizes)} ({activation}, {solver})"
    net = f"MLP {_shape([n // copies for n in sizes])} ({activation}, {solver})"
    if members > 1:
        net = f"{members} x {net}"
    if views > 1:
        net += f" with {views} test-time views{' each' if members > 1 else ''}"
    return f"{net}, merged into one MLP {_shape(sizes)}"


def _shape(sizes: Sequence[int]) -> str:
    return "-".join(str(n) for n in sizes)


@dataclass(frozen=True)
class RunLinks:
    """Where the run lives in MLflow (per run, machine-specific)."""

    run_id: str
    commit: str  # git_commit of the run (its tag), "unknown" outside git
    experiment_id: str
    experiment_name: str
    tracking_uri: str
    ui_command: str
    run_url: str


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


@dataclass(frozen=True)
class ReportInput:
    """What the committed report says about one evaluated run (all deterministic).

    Attributes:
        ev: the evaluation.
        class_names: display names, by class index.
        baseline: the dataset's reference accuracy (evaluate.baseline_accuracy.<dataset>).
        labels: encode.labels of the run ("onehot" or "index").
        dataset: the dataset name (data.dataset), the report's only name for the data.
        model: the model in a few words (:func:`architecture`).
        n_iter: epochs run.
        ignored: warnings about ignored train settings.
        figures: title -> PNG file name relative to the report.
        misclassified_csv: path of the full table of misclassified images.
        run_info: path of the file naming the MLflow run (paths.run_info).
        experiment_name: the MLflow experiment.
        numerics: the floating-point environment of the fit, one sentence
            (``mnistflow.numerics.describe``).
    """

    ev: Evaluation
    class_names: Sequence[str]
    baseline: float
    labels: str
    dataset: str
    model: str
    n_iter: int
    ignored: Sequence[str]
    figures: Mapping[str, str]
    misclassified_csv: str
    run_info: str
    experiment_name: str
    numerics: str


def render(inp: ReportInput) -> str:
    """Markdown for one evaluated run (:class:`ReportInput` says what each part is)."""
    ev, class_names, baseline, dataset = inp.ev, inp.class_names, inp.baseline, inp.dataset
    labels, ignored, figures = inp.labels, inp.ignored, inp.figures
    delta = ev.accuracy - baseline
    lines = [
        f"# {dataset}: test accuracy {_pct(ev.accuracy)} ({ev.headline})",
        "",
        f"- **Headline ({ev.headline}) accuracy: {_pct(ev.accuracy)}** on {ev.n_test} test "
        f"images; {'+' if delta >= 0 else ''}{100 * delta:.2f} points against the "
        f"{_pct(baseline)} baseline of {dataset} (`evaluate.baseline_accuracy.{dataset}`).",
        f"- Argmax accuracy: {_pct(ev.accuracy_argmax)}; exact-match accuracy: "
        f"{_pct(ev.accuracy_exact_match)}.",
        f"- Rows with no predicted class: {ev.rows_no_class}; with several: {ev.rows_multi_class}.",
        f"- Model: {inp.model}; training: {inp.n_iter} epochs; targets: {labels}.",
        f"- Numerics: {inp.numerics}.",
        "",
    ]
    if labels == "onehot":
        lines += ["Why this headline: " + headline_why(ev.headline, len(class_names)), ""]
    else:
        lines += [
            "With class-index targets the model predicts exactly one class per row, so "
            "argmax and exact-match accuracy are the same.",
            "",
        ]
    if ignored:
        lines += ["## Settings that had no effect", ""]
        lines += [f"- {w}" for w in ignored]
        lines.append("")
    lines += [
        "## Per class",
        "",
        "| class | precision | recall | F1 | test images |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, name in enumerate(class_names):
        lines.append(
            f"| {name} | {ev.precision[k]:.4f} | {ev.recall[k]:.4f} | {ev.f1[k]:.4f} | "
            f"{ev.support[k]} |"
        )
    lines += ["", "## Most confused pairs (both directions)", ""]
    if ev.pairs:
        lines += [
            "| pair (a ↔ b) | errors | a predicted as b | b predicted as a |",
            "|---|---:|---:|---:|",
        ]
        for p in ev.pairs:
            a, b = class_names[p.a], class_names[p.b]
            lines.append(f"| {a} ↔ {b} | {p.total} | {p.a_as_b} | {p.b_as_a} |")
    else:
        lines.append("No confusions.")
    lines += ["", "## Figures", ""]
    for title, name in figures.items():
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    lines += [
        f"Every misclassified test image ({int(ev.wrong.sum())}, counted by the headline "
        f"metric) is listed in `{inp.misclassified_csv}` with its PNG path. {CAPTION_KEY}",
        "",
        "## MLflow",
        "",
        f"The run is in experiment `{inp.experiment_name}`; its id is in `{inp.run_info}`, the one "
        "per-run file of the pipeline. Its copy of this report adds the fit time and a link; "
        "open the store with `mnistflow ui` (or `make ui`).",
        "",
    ]
    return "\n".join(lines)


def run_section(links: RunLinks, fit_time_s: float, time_figure: str | None = None) -> str:
    """Markdown appended to the MLflow run's copy of the report: what differs per run, with
    the accuracy-against-time figure (``time_figure``, a PNG beside it) when there is one."""
    lines = [
        "## This run",
        "",
        f"- Run `{links.run_id}` in experiment `{links.experiment_name}` "
        f"(id {links.experiment_id}), store `{links.tracking_uri}`; commit `{links.commit}`.",
        f"- Fit time: {fit_time_s:.1f} s (wall clock; not in the DVC outputs).",
        f"- Open it: `{links.ui_command}` (or `make ui`), then {links.run_url}. The UI's "
        "first page is a GenAI overview; the runs table is at `#/experiments/"
        f"{links.experiment_id}/runs` (sidebar: *Model training*).",
        "",
    ]
    if time_figure is not None:
        lines += [
            "### Accuracy against training time",
            "",
            "Early-stopping score after each epoch (held-out training rows; sklearn's score, "
            "exact match for one-hot targets) and the test accuracy (headline), measured "
            "once at the end of the fit.",
            "",
            f"![Accuracy against training time]({time_figure})",
            "",
        ]
    return "\n".join(lines)
