"""``mnistflow best``: the command line of :mod:`mnistflow.experiments.presets`."""

from __future__ import annotations

import argparse
import logging

from mnistflow.config import load_params
from mnistflow.experiments.presets import PRESETS_DIR, apply_preset, load_preset, set_flags
from mnistflow.util.dvc import dvc
from mnistflow.util.workspace import find_root

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``mnistflow best``."""
    parser.add_argument("--preset", default="best", help="preset name in presets/ (default best)")
    parser.add_argument("--name", help="DVC experiment name (default: the preset's name)")
    parser.add_argument("--queue", action="store_true", help="queue it instead of running now")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """Run (or queue) the preset as a DVC experiment; return dvc's exit code."""
    overrides = load_preset(PRESETS_DIR / f"{args.preset}.yaml")
    apply_preset(load_params(args.params), overrides)  # fail before dvc starts
    cmd = ["exp", "run", "-n", args.name or args.preset, *set_flags(overrides)]
    if args.queue:
        cmd.append("--queue")
    return dvc(cmd, find_root(), check=False).returncode
