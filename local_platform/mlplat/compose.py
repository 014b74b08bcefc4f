"""The container stack (docker-compose.yaml) from inside its network: its init service and its demo."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlplat.platform import ALL_SERVICES, Endpoints, connections, import_connections, prometheus_config

if TYPE_CHECKING:
    from mlplat.airflow_api import AirflowRestClient

#: the state volume the Airflow workers, Ray nodes, model server and demo share
HOME = Path("/mlplat")
#: Prometheus's config volume, written by the init service
PROMETHEUS_CONFIG = Path("/etc/mlplat-prometheus/prometheus.yml")


def endpoints() -> Endpoints:
    """
    The services by their compose names; Feast's online store in Redis, its batch engine on the Ray
    cluster (a Celery worker container is a Ray node with no CPUs of its own: its tasks drive Ray
    Data as a local driver, and the work runs on the Ray worker nodes).
    """
    return Endpoints(
        home=HOME,
        mlflow="http://mlflow:5000",
        ray_dashboard="http://ray-head:8265",
        ray_token=os.environ["RAY_AUTH_TOKEN"],
        model_server="http://model-server:8090",
        prometheus="http://prometheus:9090",
        pushgateway="http://pushgateway:9091",
        feast_online_store={"type": "redis", "connection_string": "redis:6379,db=1"},  # db 0: Celery
        feast_batch_engine={"type": "ray.engine", "ray_address": "ray-head:6379"},
    )


class ComposeStack:
    """The container stack, as the demo (:func:`mlplat.demo.run_demo`) drives it from inside the network."""

    home = HOME
    service_names = ALL_SERVICES

    def connections(self) -> dict[str, dict[str, Any]]:
        """The connections the init service wrote."""
        return connections(endpoints())

    def airflow_client(self) -> AirflowRestClient:
        """A REST client of the api-server, logged in as admin."""
        from mlplat.airflow_api import AirflowRestClient

        return AirflowRestClient(
            "http://airflow-api-server:8080", "admin", os.environ["MLPLAT_ADMIN_PASSWORD"]
        )

    def links(self) -> dict[str, str]:
        """The ports the stack publishes on the host's 127.0.0.1."""
        defaults = {"airflow": 8080, "mlflow": 5000, "ray_dashboard": 8265, "prometheus": 9090}
        port = {name: os.environ.get(f"MLPLAT_{name.upper()}_PORT", str(p)) for name, p in defaults.items()}
        return {
            "airflow": f"http://127.0.0.1:{port['airflow']}",
            "mlflow": f"http://127.0.0.1:{port['mlflow']}",
            "ray": f"http://127.0.0.1:{port['ray_dashboard']}",
            "prometheus": f"http://127.0.0.1:{port['prometheus']}",
        }


def init() -> None:
    """Folders on the state volume, the admin password file, Prometheus's config, Airflow's DB and connections."""
    for sub in ("data", "feast", "artifacts", "inference-log", "serving"):
        (HOME / sub).mkdir(parents=True, exist_ok=True)
    passwords = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    passwords.touch(mode=0o600)
    passwords.write_text(json.dumps({"admin": os.environ["MLPLAT_ADMIN_PASSWORD"]}))
    PROMETHEUS_CONFIG.write_text(prometheus_config("localhost:9090", "model-server:8090", "pushgateway:9091"))
    env = dict(os.environ)
    from mlplat.platform import airflow_cli

    airflow_cli(env, "db", "migrate")
    import_connections(connections(endpoints()), Path(env["AIRFLOW_HOME"]) / "connections.json", env)
    print(
        "migrated Airflow's database; wrote the connections, the admin password file and Prometheus's config"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m mlplat.compose init|demo``."""
    command = (argv if argv is not None else sys.argv[1:] or [""])[0]
    if command == "init":
        init()
        return 0
    if command == "demo":
        from mlplat.demo import run_demo

        return run_demo(ComposeStack())
    print("usage: python -m mlplat.compose init|demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
