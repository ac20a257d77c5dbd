"""``mnistflow doctor``: the store, the experiment, its RUNNING runs and which are dead.

A run is dead when its process was killed without ending it (SIGKILL, the OOM killer, a
lost machine): see :mod:`mnistflow.tracking.liveness`. Exit 0 when no dead run remains
(``--fix`` marks them FAILED), 1 when dead runs remain.
"""

from __future__ import annotations

import argparse
import sys
import time

from mnistflow.config import load_params
from mnistflow.tracking import liveness
from mnistflow.tracking.store import TrackingError, redact, store_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow doctor``."""
    parser.add_argument(
        "--fix", action="store_true", help="mark the dead runs FAILED (tag mnistflow.ended_by)"
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="heartbeat age after which a run of another host is dead "
        f"(default: {liveness.STALE_INTERVALS} x the run's heartbeat interval)",
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow doctor [--fix]``: report (and end) dead runs; 1 if any remain."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    store = store_settings(load_params(args.params))
    out = sys.stdout
    out.write(f"store: {redact(store.tracking_uri)}\n")
    client = MlflowClient(store.tracking_uri)
    try:
        experiment = client.get_experiment_by_name(store.experiment_name)
        if experiment is None:
            out.write(f"experiment: {store.experiment_name!r} does not exist yet: healthy\n")
            return 0
        out.write(f"experiment: {experiment.name!r} (id {experiment.experiment_id})\n")
        now = time.time()
        running = list(liveness.running_runs(client, [experiment.experiment_id]))
        dead = liveness.find_dead_runs(client, [experiment.experiment_id], now, args.stale_after)
        out.write(f"RUNNING runs: {len(running)}, dead: {len(dead)}\n")
        reasons = {d.run_id: d.reason for d in dead}
        for run in running:
            tags = run.data.tags
            beat = tags.get(liveness.TAG_HEARTBEAT)
            age = f"{now - float(beat):.0f} s ago" if beat else "none"
            state = f"DEAD: {reasons[run.info.run_id]}" if run.info.run_id in reasons else "alive"
            out.write(
                f"  {run.info.run_id} {run.info.run_name or ''} host={tags.get(liveness.TAG_HOST)}"
                f" pid={tags.get(liveness.TAG_PID)} heartbeat={age}: {state}\n"
            )
        if dead and args.fix:
            ended = liveness.mark_failed(client, dead)
            out.write(f"marked {len(ended)} dead run(s) FAILED\n")
            return 0
    except MlflowException as exc:
        raise TrackingError(f"{store.tracking_uri}: {exc}") from exc
    if dead:
        out.write("dead runs remain: run `mnistflow doctor --fix` to mark them FAILED\n")
        return 1
    return 0
