"""DVC experiment queue glue: wait for ``dvc queue start`` to finish and report failures.

Reads the queue through DVC's Python API (what ``dvc queue status`` prints), so no table
parsing; the failed experiments' logs come from ``dvc queue logs <name>``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from mnistflow.util.dvc import dvc
from mnistflow.util.errors import UserError

log = logging.getLogger(__name__)

RUNNING = "Running"
QUEUED = "Queued"
FAILED = "Failed"
SUCCESS = "Success"


class QueueError(UserError):
    """The queue cannot finish (no worker, timeout) or experiments in it failed."""


@dataclass(frozen=True)
class QueueTask:
    """One task of the experiment queue, as ``dvc queue status`` lists it."""

    rev: str  # the stash commit of the queued experiment
    name: str  # the experiment name ('' if DVC has none yet)
    status: str  # Running | Queued | Failed | Success | Unknown

    @property
    def label(self) -> str:
        """The name, else the short rev: what ``dvc queue logs`` accepts."""
        return self.name or self.rev[:7]


def queue_tasks(root: Path) -> list[QueueTask]:
    """Every task of the queue at ``root``: running, queued and done (until removed)."""
    from dvc.repo import Repo  # here: importing dvc takes a second, `--help` should not wait

    with Repo(str(root)) as repo:
        return [
            QueueTask(rev=t["rev"], name=t.get("name") or "", status=t["status"])
            for t in repo.experiments.celery_queue.status()
        ]


def worker_count(root: Path) -> int:
    """Queue workers answering now (busy or idle)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return len(repo.experiments.celery_queue.worker_status())


def counts(tasks: list[QueueTask]) -> dict[str, int]:
    """``{status: number of tasks}``."""
    out: dict[str, int] = {}
    for task in tasks:
        out[task.status] = out.get(task.status, 0) + 1
    return out


def wait_for_queue(
    root: Path, poll_s: float, timeout_s: float | None, no_worker_grace_s: float
) -> list[QueueTask]:
    """Block until no task is queued or running; return the final task list.

    Args:
        root: the repository whose queue to watch.
        poll_s: seconds between looks at the queue.
        timeout_s: give up after this many seconds (None: wait for ever).
        no_worker_grace_s: give up when tasks stay queued, none runs and no worker answers
            for this long (``dvc queue start`` was never run, or its workers died).

    Raises:
        QueueError: timeout, or queued tasks without a worker.
    """
    start = time.monotonic()
    idle_since: float | None = None
    last: dict[str, int] | None = None
    while True:
        tasks = queue_tasks(root)
        now_counts = counts(tasks)
        if now_counts != last:
            log.info(
                "queue: %s",
                ", ".join(f"{n} {s.lower()}" for s, n in sorted(now_counts.items())) or "empty",
            )
            last = now_counts
        running, queued = now_counts.get(RUNNING, 0), now_counts.get(QUEUED, 0)
        if not running and not queued:
            return tasks
        now = time.monotonic()
        if queued and not running and worker_count(root) == 0:
            idle_since = now if idle_since is None else idle_since
            if now - idle_since >= no_worker_grace_s:
                raise QueueError(
                    f"{queued} experiment(s) queued but no queue worker is running in {root}; "
                    "start them with `dvc queue start -j 2`"
                )
        else:
            idle_since = None
        if timeout_s is not None and now - start >= timeout_s:
            raise QueueError(
                f"queue still has {running} running and {queued} queued experiment(s) after "
                f"{timeout_s:.0f} s"
            )
        time.sleep(poll_s)


def task_log(root: Path, task: QueueTask) -> str:
    """The output of the task's run (``dvc queue logs``), or why it is unavailable."""
    proc = dvc(["queue", "logs", task.label], root, capture=True, check=False)
    return proc.stdout if proc.returncode == 0 else f"(dvc queue logs failed: {proc.stderr})"


def failure_report(root: Path, tasks: list[QueueTask], tail_lines: int) -> str | None:
    """A message naming each failed experiment with the end of its log; None if none failed."""
    failed = [t for t in tasks if t.status == FAILED]
    if not failed:
        return None
    parts = [
        f"{len(failed)} of {len(tasks)} experiment(s) in the queue failed: "
        + ", ".join(t.label for t in failed)
    ]
    for task in failed:
        lines = task_log(root, task).rstrip().splitlines()[-tail_lines:]
        parts.append(f"--- {task.label} (last {len(lines)} lines of `dvc queue logs {task.label}`)")
        parts.extend(lines)
    parts.append(
        "The queue keeps failures from earlier runs too; once dealt with, clear them with "
        "`dvc queue remove --failed`."
    )
    return "\n".join(parts)


def wait_queue(
    root: Path, poll_s: float, timeout_s: float | None, no_worker_grace_s: float, tail_lines: int
) -> int:
    """``mnistflow wait-queue``: wait for the queue, then report; returns the exit status.

    Returns:
        0 if every experiment in the queue succeeded, 1 if any failed (each named, with the
        end of its log), 2 if the queue cannot finish (no worker, timeout).
    """
    try:
        tasks = wait_for_queue(root, poll_s, timeout_s, no_worker_grace_s)
    except QueueError as exc:
        log.error("%s", exc)
        return 2
    report = failure_report(root, tasks, tail_lines)
    if report is not None:
        log.error("%s", report)
        return 1
    log.info("all %d experiment(s) in the queue succeeded; see `dvc exp show`", len(tasks))
    return 0
