"""The ``AirflowPlugin`` the provider registers through the ``airflow.plugins`` entry point."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_mlplat.ui.app import URL_PREFIX, app

CATEGORY = "ML platform"


def _service_view(name: str, service: str) -> dict[str, str]:
    return {"name": name, "href": f"{URL_PREFIX}/open/{service}", "destination": "nav", "category": CATEGORY}


class MLPlatUIPlugin(AirflowPlugin):
    """The Models view in the Airflow UI, and links to MLflow, Ray, Prometheus and Grafana."""

    name = "mlplat"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "ML platform"}]
    external_views = [
        {
            "name": "Models",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": CATEGORY,
            "url_route": "mlplat-models",
        },
        _service_view("MLflow", "mlflow"),
        _service_view("Ray dashboard", "ray"),
        _service_view("Prometheus", "prometheus"),
        _service_view("Grafana", "grafana"),
    ]
