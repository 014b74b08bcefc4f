"""MLflow tracking and registry hook."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING

from airflow_provider_mlplat.hooks.base import MLPlatHook, scoped_env

if TYPE_CHECKING:
    from mlflow import MlflowClient


class MLflowHook(MLPlatHook):
    """
    Talks to an MLflow tracking server and model registry.

    The connection's host is the tracking URI; login + password give basic auth, a password alone
    is a bearer token. Credentials only enter the process environment inside :meth:`credentials`.

    :param mlflow_conn_id: Airflow connection id of type ``mlflow``.
    """

    conn_name_attr = "mlflow_conn_id"
    conn_type = "mlflow"
    default_conn_name = "mlflow_default"
    hook_name = "MLflow"

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__(conn_id=mlflow_conn_id)

    @property
    def tracking_uri(self) -> str:
        """The tracking URI from the connection's host."""
        host = self.connection.host or ""
        if not host:
            raise ValueError(
                f"connection {self.conn_id!r} has no host: set the tracking URI, e.g. http://127.0.0.1:5000"
            )
        return host.rstrip("/")

    @property
    def registry_uri(self) -> str:
        """The registry URI (defaults to the tracking URI)."""
        return self.extra("registry_uri") or self.tracking_uri

    @contextmanager
    def credentials(self) -> Iterator[None]:
        """Expose the connection's credentials to MLflow's REST client for one block only."""
        login, password = self.connection.login, self.connection.password
        yield_env: dict[str, str | None] = {
            "MLFLOW_TRACKING_USERNAME": login if login and password else None,
            "MLFLOW_TRACKING_PASSWORD": password if login and password else None,
            "MLFLOW_TRACKING_TOKEN": password if password and not login else None,
        }
        with scoped_env(yield_env):
            yield

    @cached_property
    def client(self) -> MlflowClient:
        """The MLflow client for this connection (cached)."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def get_conn(self) -> MlflowClient:
        """Return the cached :class:`mlflow.MlflowClient`."""
        return self.client

    def probe(self) -> str:
        """List one experiment: proves the server answers and accepts the credentials."""
        # a connection test answers at once: no retries with backoff (the default waits minutes)
        fail_fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
        with self.credentials(), scoped_env(fail_fast):
            experiments = self.client.search_experiments(max_results=1)
        return f"MLflow at {self.tracking_uri} answered ({len(experiments)} experiment(s) listed)"
