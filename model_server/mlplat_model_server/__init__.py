"""The local KServe model server: MLflow models by version, canary split, metrics, inference log."""
