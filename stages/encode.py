"""DVC stage ``encode``: arrays → float32 features, encoded targets and the fitted encoding."""

from __future__ import annotations

import logging
import sys

from mnistflow.data.encode import encode_info, encode_splits
from mnistflow.stage_config import stage_config
from mnistflow.util.entrypoint import run_main
from mnistflow.util.fileio import load_npz, save_npz, write_json

log = logging.getLogger("mnistflow.stages.encode")


def main() -> None:
    """Read params, encode the unpacked arrays, write features, encoding stats and info."""
    params = stage_config("encode")
    paths, cfg = params.paths, params.encode

    encoded = encode_splits(load_npz(paths.arrays), cfg, len(params.dataset.classes))
    save_npz(paths.train_features, X=encoded.X_train, y=encoded.y_train)
    save_npz(paths.test_features, X=encoded.X_test, y=encoded.y_test)
    save_npz(paths.encode_stats, **encoded.encoding.to_arrays())
    write_json(paths.encode_info, encode_info(params.dataset_name, params.dataset, cfg, encoded))
    log.info(
        "features: train %s, test %s (%s, labels %s)",
        encoded.X_train.shape,
        encoded.X_test.shape,
        encoded.encoding.describe(),
        cfg.labels,
    )


if __name__ == "__main__":
    sys.exit(run_main(main, "stage encode"))
