"""DVC stage ``encode``: arrays → float32 features, encoded targets and the fitted encoding.

With ``encode.validation_rows`` > 0 (a tuning trial) the last training rows go to
paths.val_features and paths.test_features is written empty: the test set is never encoded.
Otherwise paths.val_features is empty.
"""

from __future__ import annotations

import logging
import sys

from mnistflow.config import load_config
from mnistflow.data.encode import encode_info, encode_splits, split_validation
from mnistflow.util.entrypoint import run_main
from mnistflow.util.fileio import load_npz, save_npz, write_json

log = logging.getLogger("mnistflow.stages.encode")


def main() -> None:
    """Read params, encode the unpacked arrays, write features, encoding stats and info."""
    params = load_config()
    paths, cfg = params.paths, params.encode

    arrays = load_npz(paths.arrays)
    trial = cfg.validation_rows > 0
    if trial:
        arrays = split_validation(arrays, cfg.validation_rows)  # no test arrays from here on
    encoded = encode_splits(arrays, cfg, len(params.dataset.classes))
    held = {"X": encoded.X_test, "y": encoded.y_test}  # validation rows in a trial, else test
    empty = {"X": encoded.X_test[:0], "y": encoded.y_test[:0]}
    save_npz(paths.train_features, X=encoded.X_train, y=encoded.y_train)
    save_npz(paths.val_features, **(held if trial else empty))
    save_npz(paths.test_features, **(empty if trial else held))
    save_npz(paths.encode_stats, **encoded.encoding.to_arrays())
    info = encode_info(params.dataset_name, params.dataset, cfg, encoded)
    if trial:
        info |= {"n_test": 0, "validation_rows": cfg.validation_rows}
    write_json(paths.encode_info, info)
    log.info(
        "features: train %s, %s %s (%s, labels %s)",
        encoded.X_train.shape,
        "validation" if trial else "test",
        encoded.X_test.shape,
        encoded.encoding.describe(),
        cfg.labels,
    )


if __name__ == "__main__":
    sys.exit(run_main(main, "stage encode"))
