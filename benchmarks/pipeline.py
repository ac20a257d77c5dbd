"""Benchmark the pipeline against a bare script, in a throw-away copy of this working tree.

Prints a markdown table: cold `dvc repro` vs the bare script, no-op `dvc repro`, `dvc status`
with the PNG tree present, a one-param change (which stages ran, time), and each stage's time
and peak memory when run on its own. Usage: python benchmarks/pipeline.py [--mirror DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistflow.experiments.presets import load_preset
from mnistflow.util.workspace import copy_working_tree

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "unpack", "encode", "train", "evaluate")


@dataclass
class Measured:
    """Wall time, peak RSS (the process tree's largest) and output of one command."""

    seconds: float
    peak_mb: float
    output: str


def measure(args: list[str], cwd: Path, env: dict[str, str]) -> Measured:
    """Run a command to completion and return its wall time and peak resident memory."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{text[-4000:]}")
    return Measured(seconds, usage.ru_maxrss / 1024, text)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (``--set``), values parsed as YAML (as ``dvc exp run -S`` does)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        out[key] = yaml.safe_load(value)
    return out


def preset_overrides(preset: str, items: list[str]) -> dict[str, Any]:
    """The dotted overrides of ``presets/<preset>.yaml`` with the ``--set`` pairs on top."""
    return {**load_preset(REPO / "presets" / f"{preset}.yaml"), **parse_set(items)}


def bench_env(mirror: str | None) -> tuple[dict[str, str], list[str]]:
    """Environment for a benchmark workspace (its own MLflow store) and the dvc command."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME")
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    if mirror:
        env["MNIST_MIRROR"] = str(Path(mirror).resolve())
    return env, [str(Path(sys.executable).parent / "dvc")]


def stages_run(output: str) -> list[str]:
    """Names of the stages `dvc repro` actually ran (not skipped or restored)."""
    return re.findall(r"Running stage '([^']+)'", output)


def main() -> None:
    """Run every measurement once and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--mirror", default=os.environ.get("MNIST_MIRROR", str(REPO.parent / "shared/mnist"))
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()
    mirror = Path(args.mirror).resolve()

    tmp = Path(tempfile.mkdtemp(prefix="mnistflow-bench-"))
    ws = copy_working_tree(REPO, tmp / "ws")
    env, dvc = bench_env(str(mirror))
    rows: list[tuple[str, str, str, str]] = []

    bare = measure([sys.executable, str(REPO / "benchmarks/bare.py"), str(mirror)], ws, env)
    cold = measure([*dvc, "repro"], ws, env)
    ratio = cold.seconds / bare.seconds
    rows.append(("bare script (load gz, fit, predict)", f"{bare.seconds:.1f} s", "", ""))
    rows.append(("cold `dvc repro`, all 5 stages", f"{cold.seconds:.1f} s", "", ""))
    rows.append(("cold repro / bare", f"{ratio:.2f}", "<= 1.5", _ok(ratio <= 1.5)))

    noop = [measure([*dvc, "repro"], ws, env).seconds for _ in range(3)]
    rows.append(
        (
            "no-op `dvc repro` (median of 3)",
            f"{statistics.median(noop):.2f} s",
            "<= 1.5 s",
            _ok(statistics.median(noop) <= 1.5),
        )
    )
    status = measure([*dvc, "status"], ws, env)
    rows.append(("`dvc status` with the 70k PNG tree present", f"{status.seconds:.2f} s", "", ""))

    params = ws / "params.yaml"
    params.write_text(re.sub(r"(?m)^(  alpha:) 0\.0001", r"\1 0.0002", params.read_text()))
    change = measure([*dvc, "repro"], ws, env)
    ran = stages_run(change.output)
    rows.append(
        (
            "one train param changed: stages run",
            ", ".join(ran),
            # check_params validates the whole params.yaml, so any edit reruns it (~0.3 s)
            "check_params, train, evaluate",
            _ok(ran == ["check_params", "train", "evaluate"]),
        )
    )
    rows.append(
        (
            "one train param changed / bare",
            f"{change.seconds / bare.seconds:.2f} ({change.seconds:.1f} s)",
            "<= 1.1",
            _ok(change.seconds / bare.seconds <= 1.1),
        )
    )

    stage_env = {**env, "PYTHONPATH": "src"}
    for stage in STAGES:
        run = measure([sys.executable, f"stages/{stage}.py"], ws, stage_env)
        rows.append(
            (
                f"stage `{stage}` alone: time, peak RSS",
                f"{run.seconds:.1f} s, {run.peak_mb:.0f} MB",
                "<= 1536 MB",
                _ok(run.peak_mb <= 1536),
            )
        )

    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| measure | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(c.ljust(w) for c, w in zip(r, width, strict=True))} |" for r in rows]
    sys.stdout.write("\n".join(lines) + f"\n\nmachine: {os.cpu_count()} cores; workspace {ws}\n")
    if not args.keep:
        shutil.rmtree(tmp)


def _ok(met: bool) -> str:
    return "yes" if met else "NO"


if __name__ == "__main__":
    main()
