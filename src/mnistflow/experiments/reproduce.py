"""``mnistflow reproduce <run-id>``: rerun a logged MLflow run and compare its metrics.

The run's logged params are written back into the params.yaml of the commit it was made
with, in a temporary git worktree of that commit that shares this repository's DVC cache
(so the data need not be fetched again). There the data stages run (restored from DVC's run
cache when possible; download, whose output persists and so is never run-cached, takes this
clone's raw files as its mirror when no other is set), the data hash is checked against the
run's ``dataset_sha256`` tag, and train and evaluate run for real (``--force
--no-run-cache``), logging a new run to the same MLflow store tagged ``reproduces=<run-id>``
(the BLAS thread count, which changes the last digits of a fit, is the param
``train.threads`` and so restored with the others). Both runs carry the fingerprint of
their floating-point environment (:mod:`mnistflow.numerics`), which tells a real difference
from another CPU's kernels.

Exit 0 if every logged metric (wall-clock times aside) is identical; 1 if something differs
under the same numerics fingerprint (a real difference: code, data, params, a bug), or the
rerun failed, or its params or data differ; 7 if only metrics differ and the two runs were
made under different fingerprints (or the logged run has none); 2 if the run cannot be looked
up or reproduced.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnistflow import numerics
from mnistflow.config import SECTIONS, ParamsError, Paths, config, dataset_spec, load_params
from mnistflow.data.download import MIRROR_ENV, MIRROR_ENV_ALIAS
from mnistflow.tracking.provenance import REPRODUCES_ENV, REPRODUCES_TAG
from mnistflow.tracking.store import absolute_uri
from mnistflow.util import fileio
from mnistflow.util.dvc import dvc
from mnistflow.util.errors import UserError
from mnistflow.util.git import git, git_or_none
from mnistflow.util.workspace import find_root

log = logging.getLogger(__name__)

EXIT_IDENTICAL, EXIT_DIFFERENT, EXIT_OTHER_NUMERICS = 0, 1, 7
# Wall-clock measurements differ between any two runs; they say nothing about the model.
TIMING_METRIC = re.compile(r"(_time_s|_seconds)$")
# MLflow's system metrics (CPU, memory, disk, network) describe the machine, not the model.
SYSTEM_METRIC_PREFIX = "system/"
PER_CLASS_METRIC = re.compile(r"^(?P<group>.+_class_)\d+$")
# Variables describing the *calling* DVC run; the rerun must not look like an experiment.
DVC_RUN_ENV = ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE")


class ReproduceError(UserError):
    """The run cannot be looked up or reproduced (exit status 2)."""


@dataclass(frozen=True)
class LoggedRun:
    """What MLflow holds about one run."""

    run_id: str
    status: str
    experiment_id: str
    params: dict[str, str]
    metrics: dict[str, float]  # the latest value of each key (the last epoch for stepped ones)
    tags: dict[str, str]


@dataclass(frozen=True)
class MetricRow:
    """One line of the comparison: a metric (or a per-class group) logged vs rerun."""

    name: str
    logged: float | None
    rerun: float | None
    identical: bool
    count: int = 1  # metrics folded into this row (per-class groups)


def fetch_run(uri: str, run_id: str) -> LoggedRun:
    """Read a run's params, latest metrics and tags through MLflow's client API.

    Raises:
        ReproduceError: no such run in the store.
    """
    # Imported here: mlflow takes seconds to import, and `mnistflow --help` should not wait.
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(uri).get_run(run_id)
    except MlflowException as exc:
        raise ReproduceError(f"no MLflow run {run_id!r} in {uri}: {exc.message}") from exc
    return LoggedRun(
        run_id=run.info.run_id,
        status=run.info.status,
        experiment_id=run.info.experiment_id,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
    )


def effective_params(run: LoggedRun) -> dict[str, str]:
    """The run's params as they were when its metrics were logged.

    MLflow params cannot change; when evaluate was rerun with another value, tracking kept
    the first value as the param and recorded the new one as tag ``changed.<key>``.
    """
    out = dict(run.params)
    for tag, value in run.tags.items():
        if tag.startswith("changed.") and tag[len("changed.") :] in out:
            out[tag[len("changed.") :]] = value
    return out


def settings(logged: Mapping[str, str]) -> dict[str, str]:
    """The logged params that are params.yaml settings: dotted ``section.key`` names.

    A run has other params too: MLflow logs a pyfunc model's ``model_config`` (e.g.
    ``n_classes``) as params of the run; those are not settings to restore.
    """
    return {key: value for key, value in logged.items() if "." in key}


def parse_logged_value(raw: str, current: Any) -> Any:
    """A logged param string back as a params.yaml value.

    Args:
        raw: the logged string (``str()`` of the value: ``"[100, 50]"``, ``"True"``, ``"1e-05"``).
        current: the value at the same key in the commit's params.yaml (guides numbers).

    Returns:
        ``yaml.safe_load(raw)``, or ``raw`` if that fails; a number where params.yaml has a
        number and YAML 1.1 read a string (it reads ``1e-05`` as a string).
    """
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    numeric = isinstance(current, int | float) and not isinstance(current, bool)
    if isinstance(value, str) and numeric:
        try:
            number = float(raw)
        except ValueError:
            return value
        return int(number) if isinstance(current, int) and number.is_integer() else number
    return value


def restore_params(base: Mapping[str, Any], logged: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``base`` (a params.yaml mapping) with every logged ``a.b.c`` key set.

    Raises:
        ReproduceError: a logged key that is not a setting of ``base``, or a restored value
            the config classes reject.
    """
    restored = yaml.safe_load(yaml.safe_dump(dict(base)))  # a deep copy of plain data
    for key in sorted(logged):
        node = restored
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ReproduceError(
                    f"logged param {key!r} is not a key of the commit's params.yaml "
                    f"(no '{'.'.join(parts[: depth + 1])}'): cannot restore it"
                )
            if depth < len(parts) - 1:
                node = node[part]
        if isinstance(node[parts[-1]], dict):
            raise ReproduceError(f"logged param {key!r} names a whole section of params.yaml")
        node[parts[-1]] = parse_logged_value(logged[key], node[parts[-1]])
    validate(restored, {key.split(".")[0] for key in logged})
    return restored


def changed(base: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two params mappings."""
    out = []
    for key in sorted(set(base) | set(new)):
        a, b = base.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(changed(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def validate(params: Mapping[str, Any], sections: set[str]) -> None:
    """Validate the restored ``sections`` (and the dataset, if ``data`` is one) of params.

    Raises:
        ReproduceError: with the mnistflow.config message naming the key.
    """
    try:
        for name in sorted(sections):
            if name in SECTIONS:
                config(params, name, SECTIONS[name])
        if "data" in sections:
            dataset_spec(params)
    except ParamsError as exc:
        raise ReproduceError(f"restored params are invalid: {exc}") from exc


def compare_metrics(logged: Mapping[str, float], rerun: Mapping[str, float]) -> list[MetricRow]:
    """Compare every logged metric (timings and system metrics aside) with the rerun's; equal
    means equal floats.

    Per-class metrics (``f1_class_0`` ... ``f1_class_9``) are folded into one row per group
    when all are identical; a group with a difference lists each member.
    """
    keys = sorted(
        k for k in logged if not TIMING_METRIC.search(k) and not k.startswith(SYSTEM_METRIC_PREFIX)
    )
    rows: list[MetricRow] = []
    groups: dict[str, list[MetricRow]] = {}
    for key in keys:
        new = rerun.get(key)
        old = logged[key]
        same = new is not None and (old == new or (math.isnan(old) and math.isnan(new)))
        row = MetricRow(key, old, new, same)
        match = PER_CLASS_METRIC.match(key)
        if match:
            groups.setdefault(match["group"], []).append(row)
        else:
            rows.append(row)
    for group, members in sorted(groups.items()):
        if all(m.identical for m in members):
            rows.append(MetricRow(f"{group}* ({len(members)})", None, None, True, len(members)))
        else:
            rows.extend(members)
    return rows


def format_table(rows: list[MetricRow]) -> str:
    """A fixed-width text table of the comparison."""

    def cell(value: float | None) -> str:
        return "-" if value is None else repr(float(value))

    def delta(row: MetricRow) -> str:
        if row.identical or row.logged is None or row.rerun is None:
            return ""
        return f"{row.rerun - row.logged:+.3g}"

    lines = [("metric", "logged", "rerun", "delta", "")]
    for row in rows:
        if row.count > 1:
            lines.append((row.name, "(all)", "(all)", "", "identical"))
        else:
            verdict = "identical" if row.identical else "DIFFERENT"
            lines.append((row.name, cell(row.logged), cell(row.rerun), delta(row), verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


@contextmanager
def worktree(repo: Path, commit: str, keep: bool) -> Iterator[Path]:
    """A detached git worktree of ``commit`` in a new temporary folder; removed afterwards.

    Args:
        repo: the git repository.
        commit: the commit to check out.
        keep: leave the worktree in place (and say where) instead of removing it.
    """
    path = Path(tempfile.mkdtemp(prefix="mnistflow-reproduce-"))
    git(["worktree", "add", "--detach", str(path), commit], repo)
    try:
        yield path
    finally:
        if keep:
            log.info(
                "kept the reproduction workspace %s (remove: git worktree remove --force)", path
            )
        else:
            git(["worktree", "remove", "--force", str(path)], repo, check=False)
            shutil.rmtree(path, ignore_errors=True)  # what git left (nothing, normally)
            git(["worktree", "prune"], repo)


def rerun_env(uri: str, run_id: str) -> dict[str, str]:
    """The environment of the rerun: the same store, tagged as a reproduction of ``run_id``.

    The BLAS thread count needs nothing here: it is the logged param ``train.threads``.
    """
    env = {k: v for k, v in os.environ.items() if k not in DVC_RUN_ENV}
    env["MLFLOW_TRACKING_URI"] = uri
    env[REPRODUCES_ENV] = run_id
    # the stage commands call `python`: the interpreter running us, with our packages
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def check_run(run: LoggedRun, repo: Path) -> str:
    """Check the run can be reproduced here; return its commit.

    Raises:
        ReproduceError: not finished, no commit or data hash tag, or a commit this
            repository does not have.
    """
    if run.status != "FINISHED":
        raise ReproduceError(f"run {run.run_id} is {run.status}; only FINISHED runs have metrics")
    missing = [t for t in ("git_commit", "dataset_sha256") if not run.tags.get(t)]
    if missing:
        raise ReproduceError(f"run {run.run_id} has no tag {', '.join(missing)}")
    commit = run.tags["git_commit"]
    if commit == "unknown" or git_or_none(["cat-file", "-e", f"{commit}^{{commit}}"], repo) is None:
        raise ReproduceError(
            f"run {run.run_id} was made at commit {commit}, which the git repository {repo} "
            "does not have (fetch it, or reproduce in the repository it came from)"
        )
    if run.tags.get("git_dirty") != "false":
        log.warning(
            "!!! run %s was made on a DIRTY working tree (git_dirty=%s) at commit %s: the code "
            "it ran may differ from that commit (its logged params are restored regardless; "
            "a `dvc exp run -S ...` run is dirty for its params.yaml alone)",
            run.run_id,
            run.tags.get("git_dirty"),
            commit[:12],
        )
    return commit


def reproduce(run_id: str, cwd: Path, uri: str, keep: bool) -> int:
    """Reproduce run ``run_id`` of the store ``uri`` from the repository at ``cwd``.

    Returns:
        0 if the rerun's metrics are identical, 1 if not (or the data differs).

    Raises:
        UserError: lookup or setup failure (ReproduceError, TrackingError, GitError...).
    """
    from mnistflow.tuning.rerun import reproduce_trial
    from mnistflow.tuning.worker import TAG_TRIAL

    repo = find_root(cwd)
    uri = absolute_uri(uri, cwd)
    run = fetch_run(uri, run_id)
    if TAG_TRIAL in run.tags:  # fitted by a tuning worker: rerun the way it ran
        return reproduce_trial(run, repo, uri)
    commit = check_run(run, repo)
    cache_dir = dvc(["cache", "dir"], repo, capture=True).stdout.strip()
    env = rerun_env(uri, run_id)
    with worktree(repo, commit, keep) as work:
        base = load_params(work / "params.yaml")
        params = restore_params(base, settings(effective_params(run)))
        if params != base:  # left as committed otherwise: the rerun's tree stays clean
            fileio.write_text(work / "params.yaml", yaml.safe_dump(params, sort_keys=False))
            log.info(
                "params.yaml: restored the run's values of %s", ", ".join(changed(base, params))
            )
        dvc(["cache", "dir", "--local", cache_dir], work, env)
        paths = config(params, "paths", Paths)
        raw = repo / paths.raw_dir
        if not (env.get(MIRROR_ENV) or env.get(MIRROR_ENV_ALIAS)) and raw.is_dir():
            # DVC's run cache skips download (its output persists), so the worktree would
            # fetch the files again; this clone's copies (pulled from the DVC remote) serve
            # as a mirror: download checks each file's sha256 as for any mirror.
            env[MIRROR_ENV] = str(raw)
            log.info("download: this clone's %s serves as the mirror", paths.raw_dir)

        # The data: restored from the shared cache / run cache where DVC can.
        dvc(["repro", "encode"], work, env)
        data_hash = fileio.read_json(work / paths.encode_info)["dataset_sha256"]
        if data_hash != run.tags["dataset_sha256"]:
            log.error(
                "the data differs: dataset_sha256 is %s now, the run logged %s",
                data_hash,
                run.tags["dataset_sha256"],
            )
            return EXIT_DIFFERENT
        log.info("data identical (dataset_sha256 %s)", data_hash[:16])

        # Train and evaluate for real: never restored from the run cache.
        dvc(["repro", "--force", "--no-run-cache", "--downstream", "train"], work, env)
        new_id = fileio.read_json(work / paths.run_info)["run_id"]

    rerun = fetch_run(uri, new_id)
    if rerun.tags.get(REPRODUCES_TAG) != run_id:
        log.warning(
            "rerun %s has no tag %s=%s: train does not read %s yet",
            new_id,
            REPRODUCES_TAG,
            run_id,
            REPRODUCES_ENV,
        )
    problems = []
    if rerun.status != "FINISHED":
        problems.append(f"the rerun ended {rerun.status}")
    if new_id == run_id:
        problems.append("the rerun logged into the original run instead of a new one")
    if rerun.tags.get("dataset_sha256") != run.tags["dataset_sha256"]:
        problems.append("the rerun logged another dataset_sha256")
    mismatched_params = sorted(
        k for k, v in effective_params(run).items() if effective_params(rerun).get(k) != v
    )
    if mismatched_params:
        problems.append(f"params differ: {', '.join(mismatched_params)}")
    rows = compare_metrics(run.metrics, rerun.metrics)
    header = f"run {run_id} (commit {commit[:12]}) reproduced as run {new_id}"
    return print_result(header, rows, problems, run.tags, rerun.tags)


def print_result(
    header: str,
    rows: list[MetricRow],
    problems: list[str],
    logged: Mapping[str, str],
    rerun: Mapping[str, str],
) -> int:
    """Print ``header``, the comparison table and the verdict; return the exit code.

    Args:
        header: the first line (which run was reproduced as which).
        rows: the metric comparison.
        problems: differences that are not metrics (status, params, data).
        logged, rerun: the two runs' tags, for :func:`judge`.
    """
    code, verdict = judge(problems, [r.name for r in rows if not r.identical], logged, rerun)
    sys.stdout.write(f"{header}\n{format_table(rows)}\nresult: {verdict}\n")
    return code


def judge(
    problems: list[str],
    different: list[str],
    logged: Mapping[str, str],
    rerun: Mapping[str, str],
) -> tuple[int, str]:
    """The exit code and the one-line verdict of a reproduction.

    Args:
        problems: differences that are not metrics (status, params, data).
        different: the metrics whose values differ.
        logged, rerun: the two runs' tags (``numerics.*`` say where they were computed).
    """
    if not problems and not different:
        return EXIT_IDENTICAL, "identical"
    if different:
        problems = [*problems, f"metrics differ: {', '.join(different)}"]
    text = "NOT identical: " + "; ".join(problems)
    if len(problems) == 1 and different:  # numbers alone: the environment may explain them
        cause = numerics.difference_cause(logged, rerun)
        code = EXIT_DIFFERENT if numerics.same_environment(logged, rerun) else None
        return (code if code is not None else EXIT_OTHER_NUMERICS), f"{text}; {cause}"
    return EXIT_DIFFERENT, text
