"""The real services on free ports, run by the local platform (``mlplat``) and stopped after the session.

Each fixture sets the Airflow connection(s) that point operators at its service. Further platform
settings come from ``MLPLAT_*`` variables (e.g. ``MLPLAT_MLFLOW_DB_URL``, ``MLPLAT_MODEL_SERVER_COMMAND``).
A service missing on the machine skips the test (fails under ``CI=true``); one that cannot start
fails the test with the last lines of its log.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.ci import unavailable
from airflow_provider_mlplat.testing.services import free_port, running_platform


@contextmanager
def platform_services(home: Path, services: tuple[str, ...], **settings: Any) -> Iterator[Any]:
    """
    The local platform running ``services`` on free ports under ``home``, stopped afterwards.

    :param home: state folder.
    :param services: which services to run.
    :param settings: further :class:`mlplat.platform.Settings` fields.
    """
    try:
        from mlplat.platform import Platform, Settings
    except ImportError as err:
        unavailable(
            f"{', '.join(services)} need the local platform, which is not installed (pip install mlplat): {err}"
        )
    from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatServiceUnavailable

    try:  # a binary or command that is not installed: a missing service
        Platform(Settings.from_env(home=home, services=services)).services()
    except MLPlatConfigError as err:
        unavailable(str(err))
    with ExitStack() as stack:
        try:
            platform = stack.enter_context(running_platform(home, services, **settings))
        except (MLPlatConfigError, MLPlatServiceUnavailable) as err:
            failure = f"{', '.join(services)} did not start: {err}"
        else:
            failure = ""
        if failure:  # outside the except block: the report shows the log tail once, no chained traceback
            pytest.fail(failure, pytrace=False)
        yield platform


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend); yields its URL and sets ``mlflow_default``."""
    with platform_services(tmp_path_factory.mktemp("mlplat-mlflow"), ("mlflow",)) as platform:
        uri = f"http://127.0.0.1:{platform.settings.mlflow_port}"
        set_connection("mlflow_default", conn_type="mlflow", host=uri)
        yield uri


@dataclass(frozen=True)
class RayCluster:
    """A running local Ray head: its dashboard address, auth token and the environment drivers need."""

    address: str
    token: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> Iterator[RayCluster]:
    """A real local Ray head (dashboard + Job API, token auth); sets ``ray_default``."""
    with platform_services(tmp_path_factory.mktemp("mlplat-ray"), ("ray",)) as platform:
        address = f"http://127.0.0.1:{platform.settings.ray_dashboard_port}"
        token = platform.secrets()["ray_auth_token"]
        set_connection("ray_default", conn_type="ray", host=address, password=token)
        yield RayCluster(address=address, token=token, env=platform.ray_env())


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus and Pushgateway; Prometheus scrapes the model server at ``model_server_port``."""

    url: str
    pushgateway_url: str
    model_server_port: int


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory) -> Iterator[Prometheus]:
    """Prometheus and the Pushgateway; sets ``prometheus_default`` (with its ``pushgateway_url``)."""
    port = free_port()  # the model_server fixture serves there
    home = tmp_path_factory.mktemp("mlplat-prometheus")
    with platform_services(home, ("prometheus", "pushgateway"), model_server_port=port) as platform:
        set_connection("prometheus_default", **platform.connections()["prometheus_default"])
        s = platform.settings
        yield Prometheus(
            f"http://127.0.0.1:{s.prometheus_port}", f"http://127.0.0.1:{s.pushgateway_port}", port
        )


@dataclass(frozen=True)
class ModelServer:
    """The running KServe model server: its URL, inference log folder and deployment state file."""

    platform: Any
    url: str
    inference_log: Path
    state_file: Path


@pytest.fixture(scope="session")
def model_server(mlflow_server, prometheus, tmp_path_factory) -> Iterator[ModelServer]:
    """
    The local KServe model server, loading models from the session's MLflow and scraped by the
    session's Prometheus (a rollout's canary analysis reads its metrics there); sets ``kserve_default``.
    """
    home = tmp_path_factory.mktemp("mlplat-model-server")
    mlflow_port = int(mlflow_server.rsplit(":", 1)[1])
    ports = {"mlflow_port": mlflow_port, "model_server_port": prometheus.model_server_port}
    with platform_services(home, ("model-server",), **ports) as platform:
        set_connection("kserve_default", **platform.connections()["kserve_default"])
        yield ModelServer(
            platform=platform,
            url=f"http://127.0.0.1:{prometheus.model_server_port}",
            inference_log=platform.home / "inference-log",
            state_file=platform.home / "serving" / "deployments.json",
        )
