"""Names of the artifacts a pipeline run logs that other commands read back (no MLflow import,
so the command line stays fast)."""

from __future__ import annotations

# The fitted encoding (scaling statistics) of a run: what prediction needs besides the model.
ENCODING_ARTIFACT = "encode/stats.npz"

# The logged model (serving.logged_model): its name, which the registry registers and predict and
# serve load, and the keys of what it carries.
MODEL_ARTIFACT = "model"
MODEL_ESTIMATOR = "sklearn-model"  # artifact: an MLflow sklearn model folder, skops format
MODEL_ENCODING = "encoding"  # artifact: the run's Encoding.to_arrays() as .npz
MODEL_N_CLASSES = "n_classes"  # model_config key: width of the probability columns

# The tag naming a run's dataset (data.dataset, from encode's info): runs of one dataset
# compete with each other only (leaderboard, register), and predict and serve refuse a model
# of another dataset than params.yaml's.
DATASET_TAG = "dataset"
