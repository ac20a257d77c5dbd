"""The study report of ``mnistflow tune --best``: history and importance figures, markdown."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from mnistflow.util import fileio

log = logging.getLogger(__name__)


def _save(fig: Figure, target: Path) -> Path:
    FigureCanvasAgg(fig)
    return fileio.write_atomic(
        target, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    )


def history_figure(
    numbers: Sequence[int], values: Sequence[float], baseline: float, target: Path
) -> Path:
    """Hold-out accuracy of each complete trial and the best so far, baseline marked."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.scatter(numbers, values, s=14, label="trial (holdout_accuracy)")
    best, running = [], float("-inf")
    for value in values:
        running = max(running, value)
        best.append(running)
    ax.step(numbers, best, where="post", color="C1", label="best so far")
    ax.axhline(baseline, color="grey", linestyle="--", label=f"baseline {baseline:.2f} (test)")
    ax.set_xlabel("trial")
    ax.set_ylabel("hold-out accuracy")
    ax.legend(loc="lower right")
    return _save(fig, target)


def importance_figure(importances: Mapping[str, float], target: Path) -> Path:
    """Horizontal bars of Optuna's parameter importances (fANOVA)."""
    fig = Figure(figsize=(7, 0.5 + 0.5 * max(1, len(importances))))
    ax = fig.add_subplot()
    keys = list(importances)[::-1]
    ax.barh(keys, [importances[k] for k in keys])
    ax.set_xlabel("importance (fANOVA)")
    fig.subplots_adjust(left=0.35)
    return _save(fig, target)


def numerics_line(fingerprints: Mapping[str, int]) -> str:
    """Whether the trials' scores compare to the last digit: one floating-point environment."""
    if len(fingerprints) == 1:
        ((fp, n),) = fingerprints.items()
        return f"All {n} complete trials ran under numerics fingerprint `{fp}`."
    shares = ", ".join(f"`{fp}`: {n}" for fp, n in sorted(fingerprints.items()))
    return (
        f"The complete trials ran under {len(fingerprints)} numerics fingerprints ({shares}): "
        "their scores differ in the last digits by machine as well as by params."
    )


def parallel_figure(
    keys: Sequence[str],
    positions: Sequence[Sequence[float]],
    values: Sequence[float],
    labels: Sequence[Sequence[str]],
    target: Path,
) -> Path:
    """Parallel coordinates: one line per complete trial across the searched keys, each axis
    from 0 to 1 (``positions``, labelled with ``labels`` spread evenly along it), coloured by
    the trial's hold-out accuracy, the best drawn last."""
    fig = Figure(figsize=(2.5 + 1.8 * len(keys), 4.5))
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    low, high = min(values), max(values)
    norm = Normalize(low, high if high > low else low + 1e-9)
    for row, value in sorted(zip(positions, values, strict=True), key=lambda p: p[1]):
        ax.plot(range(len(keys)), row, color=cmap(norm(value)), alpha=0.8, linewidth=1.2)
    for i, texts in enumerate(labels):
        ax.axvline(i, color="grey", linewidth=0.8)
        for j, text in enumerate(texts):
            y = j / (len(texts) - 1) if len(texts) > 1 else 0.5
            ax.annotate(text, (i, y), xytext=(4, 0), textcoords="offset points", fontsize=7,
                        va="center")  # fmt: skip
    ax.set_xticks(range(len(keys)), keys, rotation=15, fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(keys) - 0.4)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="hold-out accuracy")
    fig.subplots_adjust(left=0.04, bottom=0.18)
    return _save(fig, target)


def markdown(
    study: str,
    counts: Mapping[str, int],
    best: Mapping[str, Any],
    baseline: float,
    flags: Sequence[str],
    importances: Mapping[str, float] | None,
    test_accuracy: float | None,
    fingerprints: Mapping[str, int],
) -> str:
    """The report text. ``best``: number, value (val accuracy), params (overrides);
    ``fingerprints``: complete trials per numerics fingerprint (mnistflow.numerics)."""
    lines = [
        f"# Study `{study}`",
        "",
        "Trials: " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())),
        "",
        f"Best trial **#{best['number']}**: hold-out accuracy **{best['value']:.4f}** "
        f"(held-out training rows; baseline {baseline:.2f} is a test accuracy).",
        "",
        numerics_line(fingerprints),
        "",
        "| key | best value |",
        "|---|---|",
        *[f"| `{k}` | `{v}` |" for k, v in best["params"].items()],
        "",
        "Test accuracy of the best configuration (the DVC experiment, evaluated once): "
        + (
            f"**{test_accuracy:.4f}** ({test_accuracy - baseline:+.4f} vs the {baseline:.2f} "
            "baseline)"
            if test_accuracy is not None
            else "not run (`--no-exp`)"
        ),
        "",
        "Reproduce: `dvc exp run " + " ".join(flags) + "`",
        "",
        "![optimisation history](history.png)",
        "",
    ]
    lines += ["![parallel coordinates of the complete trials](parallel.png)", ""]
    if importances:
        lines += ["![parameter importances](importances.png)", ""]
    else:
        lines += ["Parameter importances need at least two complete trials that differ.", ""]
    return "\n".join(lines)
