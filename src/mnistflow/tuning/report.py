"""The study report of ``mnistflow tune --best``: history and importance figures, markdown."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
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
    """Validation accuracy of each complete trial and the best so far, baseline marked."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.scatter(numbers, values, s=14, label="trial (val_accuracy)")
    best, running = [], float("-inf")
    for value in values:
        running = max(running, value)
        best.append(running)
    ax.step(numbers, best, where="post", color="C1", label="best so far")
    ax.axhline(baseline, color="grey", linestyle="--", label=f"baseline {baseline:.2f} (test)")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
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
        f"Best trial **#{best['number']}**: validation accuracy **{best['value']:.4f}** "
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
    if importances:
        lines += ["![parameter importances](importances.png)", ""]
    else:
        lines += ["Parameter importances need at least two complete trials that differ.", ""]
    return "\n".join(lines)
