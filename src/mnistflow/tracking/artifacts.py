"""Names of the artifacts a pipeline run logs that other commands read back (no MLflow import,
so the command line stays fast)."""

from __future__ import annotations

# The fitted encoding (scaling statistics) of a run: what prediction needs besides the model.
ENCODING_ARTIFACT = "encode/stats.npz"
