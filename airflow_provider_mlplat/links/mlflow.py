"""Extra links from MLflow tasks to the MLflow UI: the run and the model version they worked on."""

from __future__ import annotations

from airflow_provider_mlplat.links.base import XComStoredLink


class MLflowRunLink(XComStoredLink):
    """Link to the MLflow run a task logged to or read metrics from."""

    name = "MLflow run"


class MLflowModelVersionLink(XComStoredLink):
    """Link to the registered model version a task evaluated, promoted or waited for."""

    name = "MLflow model version"
