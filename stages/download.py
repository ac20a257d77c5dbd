"""DVC stage ``download``: fetch the selected dataset's files into ``paths.raw_dir``."""

from __future__ import annotations

import logging
import sys

from mnistflow.data.download import download_dataset, env_mirror
from mnistflow.stage_config import stage_config
from mnistflow.util.entrypoint import run_main
from mnistflow.util.workspace import find_root

log = logging.getLogger("mnistflow.stages.download")


def main() -> None:
    """Read params, download and verify every file of ``data.dataset``."""
    params = stage_config("download")
    paths, name, spec, cfg = params.paths, params.dataset_name, params.dataset, params.download
    files = download_dataset(spec, paths.path("raw_dir"), cfg, env_mirror(), find_root())
    log.info("dataset %s: %d files verified in %s", name, len(files), paths.raw_dir)


if __name__ == "__main__":
    sys.exit(run_main(main, "stage download"))
