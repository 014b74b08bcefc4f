"""The local KServe model server runtime: MLflow models by version, canary split, metrics, inference log."""
