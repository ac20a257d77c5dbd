"""mnistflow: a reproducible MNIST experiment workflow (DVC stages, scikit-learn MLP, MLflow)."""

__version__ = "0.1.0"
