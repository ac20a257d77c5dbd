"""Leaderboard of the MLflow runs of a dataset: a markdown table and a figure.

``fetch_top_runs`` reads the best runs through MLflow's client API (never the store's files);
``shape_table`` turns them into the ranked table and is pure, so it is testable without MLflow;
``to_markdown`` and ``plot`` render it; ``write_leaderboard`` writes both files atomically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mnistflow import numerics
from mnistflow.modeling.metrics import HEADLINE
from mnistflow.tracking.artifacts import DATASET_TAG
from mnistflow.util import fileio

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

# Params a person sweeps, in display order: the first columns of the params that differ
# between runs, and the ones "Same in every run" names.
KEY_PARAMS = (
    "data.dataset",
    "train.hidden_layer_sizes",
    "train.activation",
    "train.solver",
    "train.alpha",
    "train.learning_rate_init",
    "train.batch_size",
    "train.max_iter",
    "train.early_stopping",
    "encode.scaling",
    "encode.labels",
    "encode.deskew",
    "encode.augment.copies",
)


@dataclass(frozen=True)
class Leaderboard:
    """The shaped leaderboard.

    Attributes:
        ranked: runs with a headline accuracy, best first (columns: :data:`SHOWN` with the
            params that differ between runs after delta, then :data:`MORE`).
        incomplete: runs without a headline accuracy (failed, killed, still running).
        common: key params with the same value in every run (not repeated as columns).
        varying: the logged params whose values differ between runs, key params first.
        baseline_accuracy: the reference accuracy of the configured dataset (the figure's line;
            the delta of a run that logged none of its own).
        dataset: the configured dataset (``data.dataset``), the one ``baseline_accuracy`` is of.
    """

    ranked: pd.DataFrame
    incomplete: pd.DataFrame
    common: dict[str, str]
    baseline_accuracy: float
    dataset: str = ""
    varying: tuple[str, ...] = ()  # params that differ between runs: columns after delta
    top: int | None = None  # at most this many runs in each table (None: every run)


# The markdown table's columns, params that differ between runs after delta; MORE only with
# `mnistflow leaderboard --all-columns` (the run id is in the "Best" line either way).
SHOWN = ("rank", "run", HEADLINE, "delta", "dataset", "commit", "numerics", "status")
MORE = ("fit_time_s", "is_baseline", "dvc_exp_name", "started", "run_id")
# Logged params that are not a run's configuration to compare: the dataset has its column,
# and each dataset's baseline differs between datasets by definition.
NOT_COMPARED = ("data.dataset", "evaluate.baseline_accuracy")


def columns(board: Leaderboard, frame: pd.DataFrame, all_columns: bool = False) -> list[str]:
    """The columns of ``frame`` (ranked or incomplete) a table shows, in order."""
    wanted = [*SHOWN[:4], *board.varying, *SHOWN[4:], *(MORE if all_columns else ())]
    return [c for c in wanted if c in frame.columns]


def _spelling(values: pd.Series) -> pd.Series:
    """Param values as text with one spelling of booleans, params.yaml's (MLflow logs a
    Python bool as "True"/"False"; tags and params.yaml say true/false)."""
    text = values.fillna("—").astype(str)
    return text.replace({"True": "true", "False": "false"})


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    """A column of ``runs``, or all-missing if no run has it."""
    if name in runs.columns:
        return runs[name]
    return pd.Series([np.nan] * len(runs), index=runs.index, dtype=object)


def _number(values: pd.Series) -> pd.Series:
    """Numbers from metric or string-valued param columns (missing/unparsable → NaN)."""
    return pd.to_numeric(values, errors="coerce").astype(float)


def _own_baseline(runs: pd.DataFrame) -> pd.Series:
    """Each run's logged baseline: ``evaluate.baseline_accuracy.<its data.dataset>`` (runs of
    before per-dataset baselines: ``evaluate.baseline_accuracy``); NaN where none is logged."""
    own = _number(_column(runs, "params.evaluate.baseline_accuracy"))
    datasets = _column(runs, "params.data.dataset")
    for name in datasets.dropna().unique():
        logged = _number(_column(runs, f"params.evaluate.baseline_accuracy.{name}"))
        own = own.fillna(logged.where(datasets == name))
    return own


def of_dataset(runs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The runs of ``dataset`` (tag ``dataset``, else param ``data.dataset``), the ones that
    compete: a leaderboard ranks the runs of one dataset, against that dataset's baseline."""
    of_run = _column(runs, f"tags.{DATASET_TAG}").fillna(_column(runs, "params.data.dataset"))
    return runs[of_run == dataset]


def shape_table(
    runs: pd.DataFrame, baseline_accuracy: float, dataset: str = "", top: int | None = None
) -> Leaderboard:
    """Rank runs by headline accuracy (pure).

    The delta is the run's own ``delta_to_baseline`` metric, else its accuracy minus the
    baseline it logged for its dataset, else minus ``baseline_accuracy``.
    Ties are broken by shorter fit time, then earlier start.

    Args:
        runs: rows as returned by :func:`fetch_runs`.
        baseline_accuracy: the configured dataset's reference accuracy
            (:meth:`mnistflow.config.EvaluateConfig.baseline_for`).
        dataset: the configured dataset's name, for the texts.
        top: keep the best ``top`` ranked runs and the newest ``top`` incomplete ones (the
            params that differ are those of the runs kept); None: every run.

    Returns:
        The leaderboard.
    """
    if top is not None:
        runs = _kept(runs, top)
    accuracy = _number(_column(runs, f"metrics.{HEADLINE}"))
    own_baseline = _own_baseline(runs)
    delta = _number(_column(runs, "metrics.delta_to_baseline"))
    delta = delta.fillna(accuracy - own_baseline.fillna(baseline_accuracy))
    table = pd.DataFrame(
        {
            "run": _column(runs, "run_name").fillna("").astype(str),
            HEADLINE: accuracy,
            "delta": delta,
            "fit_time_s": _number(_column(runs, "metrics.fit_time_s")),
        },
        index=runs.index,
    )
    logged = [c.removeprefix("params.") for c in runs.columns if c.startswith("params.")]
    logged = [p for p in logged if not p.startswith(NOT_COMPARED)]
    ordered = [p for p in KEY_PARAMS if p in logged] + sorted(set(logged) - set(KEY_PARAMS))
    common: dict[str, str] = {}
    varying: list[str] = []
    for name in ordered:
        logged_values = runs[f"params.{name}"].dropna()
        if logged_values.nunique() > 1:  # a run that did not log it does not make it differ
            table[name] = _spelling(runs[f"params.{name}"])
            varying.append(name)
        elif name in KEY_PARAMS and len(logged_values):  # no run at all: nothing in common
            common[name] = _spelling(logged_values).iloc[0]
    of_run = _column(runs, f"tags.{DATASET_TAG}").fillna(_column(runs, "params.data.dataset"))
    table["dataset"] = of_run.fillna("—").astype(str)
    commit = _column(runs, "tags.git_commit").fillna("—").astype(str)
    dirty = _column(runs, "tags.git_dirty") == "true"
    table["commit"] = commit.where(commit == "unknown", commit.str[:7]) + dirty.map(
        {True: "-dirty", False: ""}
    )
    # The floating-point environment's fingerprint (mnistflow.numerics): runs compare to the
    # last digit only under one fingerprint; "unpinned" marks the CPU's own kernels.
    fingerprint = _column(runs, f"tags.{numerics.FINGERPRINT_TAG}").fillna("—").astype(str)
    unpinned = _column(runs, f"tags.{numerics.TAG_PREFIX}pinned") == "false"
    table["numerics"] = fingerprint + unpinned.map({True: " unpinned", False: ""})
    table["status"] = _column(runs, "status").fillna("").astype(str)
    table["is_baseline"] = _column(runs, "tags.is_baseline").fillna("—").astype(str)
    table["dvc_exp_name"] = _column(runs, "tags.dvc_exp_name").fillna("").astype(str)
    started = pd.to_datetime(_column(runs, "start_time"), utc=True, errors="coerce")
    table["started"] = started.dt.strftime("%Y-%m-%d %H:%M").fillna("")
    table["run_id"] = _column(runs, "run_id").astype(str)
    table["_start"] = started

    has_accuracy = table[HEADLINE].notna()
    ranked = table[has_accuracy].sort_values(
        [HEADLINE, "fit_time_s", "_start"], ascending=[False, True, True], na_position="last"
    )
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    incomplete = table[~has_accuracy].sort_values("_start", ascending=False, na_position="last")
    incomplete = incomplete.drop(columns=[HEADLINE, "delta", "fit_time_s"])
    return Leaderboard(
        ranked=ranked.drop(columns="_start").reset_index(drop=True),
        incomplete=incomplete.drop(columns="_start").reset_index(drop=True),
        common=common,
        baseline_accuracy=baseline_accuracy,
        dataset=dataset,
        varying=tuple(varying),
        top=top,
    )


def _kept(runs: pd.DataFrame, top: int) -> pd.DataFrame:
    """The best ``top`` runs with a headline accuracy (shape_table's order) and the newest
    ``top`` without one."""
    accuracy = _number(_column(runs, f"metrics.{HEADLINE}"))
    order = pd.DataFrame(
        {
            "accuracy": accuracy,
            "fit": _number(_column(runs, "metrics.fit_time_s")),
            "start": pd.to_datetime(_column(runs, "start_time"), utc=True, errors="coerce"),
        },
        index=runs.index,
    )
    has = order["accuracy"].notna()
    best = order[has].sort_values(
        ["accuracy", "fit", "start"], ascending=[False, True, True], na_position="last"
    )
    newest = order[~has].sort_values("start", ascending=False, na_position="last")
    return runs.loc[best.index[:top].append(newest.index[:top])]


def _cell(value: object) -> str:
    """A markdown table cell: numbers formatted, pipes escaped."""
    if isinstance(value, float):
        return "—" if np.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|") or "—"


def _markdown_table(frame: pd.DataFrame, formats: dict[str, str]) -> list[str]:
    """Lines of a markdown table; ``formats`` maps a column to a format spec."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---:" if c in formats else "---" for c in frame.columns) + "|"
    # column by column: iterrows builds a Series per row (0.2 s of 1,000 runs)
    columns = []
    for column in frame.columns:
        spec = formats.get(column)
        columns.append(
            [
                format(value, spec)
                if spec and isinstance(value, float) and not np.isnan(value)
                else _cell(value)
                for value in frame[column].tolist()
            ]
        )
    return [header, rule] + [
        "| " + " | ".join(cells) + " |" for cells in zip(*columns, strict=True)
    ]


def to_markdown(
    board: Leaderboard, experiment_name: str, figure: str | None, all_columns: bool = False
) -> str:
    """The leaderboard as a markdown document.

    Args:
        board: the shaped leaderboard.
        experiment_name: shown in the title.
        figure: the figure's path relative to the markdown file, or None for no image link.
        all_columns: also the columns of :data:`MORE` (fit time, is_baseline, ...).

    Returns:
        Markdown text ending with a newline.
    """
    ranked = board.ranked
    of = f", dataset `{board.dataset}`" if board.dataset else ""
    lines = [f"# Leaderboard: MLflow experiment `{experiment_name}`{of}", ""]
    total = len(ranked) + len(board.incomplete)
    shown = (
        f"{total} runs, {len(ranked)} with a headline accuracy (`{HEADLINE}`), ranked best first"
        if board.top is None
        else f"The best {len(ranked)} runs by headline accuracy (`{HEADLINE}`; at most "
        f"`leaderboard.top` = {board.top}, the store ranks them)"
    )
    lines.append(
        f"{shown}. Δ is each run's delta to the baseline of its dataset "
        f"(`evaluate.baseline_accuracy.<dataset>`; {board.dataset or 'configured'}: "
        f"{board.baseline_accuracy:.4f}). Columns between delta and dataset: the params "
        "that differ between runs. A run is named after what made it: its DVC experiment, "
        "or `baseline@<commit>` (the committed params), or the params it changed."
    )
    if len(ranked):
        best = ranked.iloc[0]
        lines += [
            "",
            f"**Best:** `{best['run']}` ({best['run_id']}): {best[HEADLINE]:.4f} "
            f"({best['delta']:+.4f}).",
        ]
    if board.common:
        same = ", ".join(f"`{k}={v}`" for k, v in board.common.items())
        lines += ["", f"Same in every run: {same}."]
    lines.append("")
    if len(ranked):
        lines += _markdown_table(
            ranked[columns(board, ranked, all_columns)],
            {HEADLINE: ".4f", "delta": "+.4f", "fit_time_s": ".1f", "rank": "d"},
        )
    else:
        lines.append("No run has a headline accuracy yet.")
    if len(board.incomplete):
        newest = "" if board.top is None else f" (the newest {board.top} at most)"
        lines += [
            "",
            f"## Runs without a headline accuracy (failed, killed or running){newest}",
            "",
        ]
        incomplete = board.incomplete
        lines += _markdown_table(incomplete[columns(board, incomplete, all_columns)], {})
    if figure is not None:
        lines += ["", f"![accuracy against fit time]({figure})"]
    return "\n".join(lines) + "\n"


def plot(board: Leaderboard, experiment_name: str) -> Figure:
    """Accuracy against fit time: one point per ranked run, the baseline as a line.

    Runs of the baseline configuration are drawn as stars; the best run is annotated.
    """
    from matplotlib.figure import Figure  # here: importing matplotlib slows every CLI command

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    ranked = board.ranked
    timed = ranked[ranked["fit_time_s"].notna()]
    is_base = timed["is_baseline"] == "true"
    for points, style in (
        (timed[~is_base], {"marker": "o", "s": 40, "color": "tab:blue", "label": "run"}),
        (
            timed[is_base],
            {"marker": "*", "s": 180, "color": "tab:orange", "label": "baseline config"},
        ),
    ):
        if len(points):  # an empty group would still put its marker in the legend
            ax.scatter(points["fit_time_s"], points[HEADLINE], **style)
    ax.axhline(
        board.baseline_accuracy,
        color="tab:red",
        linestyle="--",
        label=f"{board.dataset} baseline accuracy {board.baseline_accuracy:.2f}".lstrip(),
    )
    if len(timed):
        best = timed.iloc[0]  # ranked is sorted best first
        ax.annotate(
            f"best: {best['run']}\n{best[HEADLINE]:.4f}",
            (best["fit_time_s"], best[HEADLINE]),
            xytext=(-12, -30),  # below left: the best run is usually the slow right edge
            textcoords="offset points",
            ha="right",
            arrowprops={"arrowstyle": "->"},
        )
    else:
        ax.text(
            0.5, 0.5, "no run with accuracy and fit time yet", transform=ax.transAxes, ha="center"
        )
    untimed = len(ranked) - len(timed)
    note = f" ({untimed} runs without fit time not shown)" if untimed else ""
    ax.set_title(f"{experiment_name}: {HEADLINE} against fit time{note}")
    ax.set_xlabel("fit time (s)")
    ax.set_ylabel(HEADLINE)
    low, high = ax.get_ylim()
    ax.set_ylim(low, min(high, 1.0))  # an accuracy: the axis stops at 1
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def write_leaderboard(
    board: Leaderboard,
    experiment_name: str,
    markdown: Path,
    figure: Path,
    all_columns: bool = False,
) -> None:
    """Write the markdown table (``all_columns``: see :func:`to_markdown`) and the PNG
    figure, each atomically."""
    relative = os.path.relpath(figure.resolve(), markdown.resolve().parent)
    fig = plot(board, experiment_name)
    with fileio.atomic_path(figure) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    text = to_markdown(board, experiment_name, Path(relative).as_posix(), all_columns)
    fileio.write_text(markdown, text)
    log.info("wrote %s and %s (%d ranked runs)", markdown, figure, len(board.ranked))
