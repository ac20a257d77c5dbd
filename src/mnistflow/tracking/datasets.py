"""The data a run used, as an MLflow dataset input: name, content digest, source, shape.

MLflow keeps a dataset's digest in a 36-character column (``datasets.digest``; PostgreSQL
enforces it, sqlite does not), so the digest is the first 36 hex digits of the SHA-256 and
the full SHA-256 is an input tag ``mnistflow.dataset_sha256``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from mnistflow.util.signals import signals_deferred

log = logging.getLogger(__name__)

DIGEST_CHARS = 36  # width of MLflow's datasets.digest column
SHA_TAG = "mnistflow.dataset_sha256"


def dataset_digest(sha256: str) -> str:
    """The MLflow digest of a dataset whose content hash is ``sha256`` (pure)."""
    return sha256[:DIGEST_CHARS]


def meta_dataset(name: str, sha256: str, source: str, shape: Sequence[int]) -> Any:
    """An ``mlflow.data`` MetaDataset: no data, the digest, the source and a tensor schema."""
    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    with warnings.catch_warnings():
        # a plain path matches two equivalent local source types; MLflow warns and picks one
        warnings.simplefilter("ignore", UserWarning)
        resolved = resolve_dataset_source(source)
    schema = Schema([TensorSpec(np.dtype("float32"), (-1, *shape[1:]), name="features")])
    return MetaDataset(
        source=resolved,
        name=name,
        digest=dataset_digest(sha256),
        schema=schema,
    )


def log_dataset(
    name: str, sha256: str, source: str, shape: Sequence[int], context: str = "training"
) -> None:
    """Log the dataset as an input of the active run (inside ``runs.mlflow_run``)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    dataset = meta_dataset(name, sha256, source, shape)
    for attempt in (1, 2):
        try:
            with signals_deferred():  # as runs.Run's writes: no commit cut in half
                mlflow.log_input(dataset, context=context, tags={SHA_TAG: sha256})
            break
        except MlflowException as exc:
            # Two runs logging a new dataset at once (two tune workers' first trials): the
            # store's get-or-create inserts it twice and the loser gets a unique-key error
            # (PostgreSQL behind a server: "duplicate key ... dataset_pk"). The dataset now
            # exists, so the second attempt links it.
            if attempt == 2 or not _lost_insert_race(str(exc)):
                raise
            log.debug("dataset %s was created by another run at the same moment; linking it", name)
    log.info("logged dataset %s (digest %s) as %s input", name, dataset_digest(sha256), context)


def _lost_insert_race(message: str) -> bool:
    """Whether a store error is a unique-key violation on the datasets table."""
    text = message.lower()
    duplicate = "duplicate key" in text or "unique constraint failed" in text
    return duplicate and "dataset" in text
