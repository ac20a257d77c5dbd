"""``mnistflow leaderboard``: the command line of :mod:`mnistflow.reporting.leaderboard`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mnistflow.config import LeaderboardConfig, config, load_params
from mnistflow.modeling.metrics import HEADLINE
from mnistflow.reporting.leaderboard import of_dataset, shape_table, write_leaderboard
from mnistflow.tracking.liveness import sweep
from mnistflow.tracking.query import fetch_top_runs
from mnistflow.tracking.store import check_server, store_settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow leaderboard`` (files and store come from params.yaml)."""
    parser.add_argument(
        "--all-columns",
        action="store_true",
        help="also fit time, is_baseline, dvc_exp_name, start time and run id",
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """``mnistflow leaderboard``: the best ``leaderboard.top`` runs of params.yaml's dataset
    (ranked by the store) into leaderboard files."""
    params = load_params(args.params)
    out = config(params, "leaderboard", LeaderboardConfig)
    store = store_settings(params)
    check_server(store.tracking_uri)  # a refused password: one line, exit 4, nothing written
    sweep(store.tracking_uri, store.experiment_name)  # no dead run ranked as RUNNING
    runs = fetch_top_runs(store.tracking_uri, store.experiment_name, store.dataset, out.top)
    board = shape_table(
        of_dataset(runs, store.dataset), store.baseline_accuracy, store.dataset, out.top
    )
    write_leaderboard(
        board, store.experiment_name, Path(out.markdown), Path(out.figure), args.all_columns
    )
    if len(board.ranked):
        best = board.ranked.iloc[0]
        log.info("best: %s (%s) %s=%.4f", best["run"], best["run_id"], HEADLINE, best[HEADLINE])
    return 0
