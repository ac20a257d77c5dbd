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

    with signals_deferred():  # as runs.Run's writes: no commit cut in half
        mlflow.log_input(
            meta_dataset(name, sha256, source, shape), context=context, tags={SHA_TAG: sha256}
        )
    log.info("logged dataset %s (digest %s) as %s input", name, dataset_digest(sha256), context)
