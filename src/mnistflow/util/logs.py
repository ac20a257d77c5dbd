"""Logging set-up for the command-line entry points (never at import time)."""

from __future__ import annotations

import logging
import os


def configure(level: str | None = None) -> None:
    """Send log records to stderr; level from the argument, ``MNISTFLOW_LOG`` or INFO."""
    logging.basicConfig(
        level=(level or os.environ.get("MNISTFLOW_LOG", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
