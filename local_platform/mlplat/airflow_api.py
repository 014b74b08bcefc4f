"""A few calls of Airflow 3's REST API (``/api/v2``) with retries: what `mlplat demo` drives DAGs with."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable

FINISHED = {"success", "failed"}


class AirflowRestClient:
    """
    A few calls of the Airflow 3 REST API (``/api/v2``), with a bearer token from ``/auth/token``.

    :param base_url: API server URL.
    :param username: simple auth manager user.
    :param password: its password.
    """

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url, self.username, self.password = base_url.rstrip("/"), username, password
        self._http: Any = None

    @property
    def http(self):
        """An httpx client holding the token (created on first use)."""
        if self._http is None:
            import httpx

            token = httpx.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=30,
            )
            token.raise_for_status()
            self._http = _retrying_client(
                base_url=f"{self.base_url}/api/v2",
                headers={"Authorization": f"Bearer {token.json()['access_token']}"},
                timeout=30,
            )
        return self._http

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """
        Wait until the dag processor has parsed a DAG; return its details.

        :param dag_id: the DAG.
        :param timeout: seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            response = self.http.get(f"/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            if time.monotonic() > deadline:
                raise MLPlatServiceUnavailable(f"DAG {dag_id!r} was not parsed within {timeout:.0f} s")
            time.sleep(1)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        """
        Pause or unpause a DAG.

        :param dag_id: the DAG.
        :param paused: the new state.
        """
        self.http.patch(f"/dags/{dag_id}", json={"is_paused": paused}).raise_for_status()

    def set_variable(self, key: str, value: Any) -> None:
        """
        Create or replace an Airflow Variable (JSON-encoded).

        :param key: variable name.
        :param value: any JSON value.
        """
        body = {"key": key, "value": json.dumps(value)}
        response = self.http.patch(f"/variables/{key}", json=body)
        if response.status_code == 404:
            response = self.http.post("/variables", json=body)
        response.raise_for_status()

    def run_ids(self, dag_id: str) -> list[str]:
        """
        The ids of a DAG's runs.

        :param dag_id: the DAG.
        """
        response = self.http.get(f"/dags/{dag_id}/dagRuns", params={"limit": 1000})
        response.raise_for_status()
        return [run["dag_run_id"] for run in response.json()["dag_runs"]]

    def upstream_asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """
        The asset events that triggered a run (none for a manual run).

        :param dag_id: the DAG.
        :param run_id: the run.
        """
        response = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/upstreamAssetEvents")
        response.raise_for_status()
        return response.json()["asset_events"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """
        A task's XCom value (its return value by default).

        :param dag_id: the DAG.
        :param run_id: the run.
        :param task_id: the task.
        :param key: XCom key.
        """
        url = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        response = self.http.get(url, params={"deserialize": True, "stringify": False})
        response.raise_for_status()
        return response.json()["value"]

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """
        Unpause a DAG and start a run now; return the run id.

        :param dag_id: the DAG.
        :param conf: run configuration (params).
        """
        self.set_paused(dag_id, False)
        body = {"logical_date": datetime.now(UTC).isoformat(), "conf": conf or {}}
        response = self.http.post(f"/dags/{dag_id}/dagRuns", json=body)
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        """
        Wait until a run finishes; return it with its task instances under ``"tasks"``.

        :param dag_id: the DAG.
        :param run_id: the run.
        :param timeout: seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            run = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()
            if run["state"] in FINISHED or time.monotonic() > deadline:
                break
            time.sleep(1)
        tis = self.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        run["tasks"] = tis
        return run


def _retrying_client(**kwargs: Any):
    """
    An httpx client that retries a request up to 4 times (1-8 s apart) on a transport error or a 5xx:
    with the SQLite metadata DB, the API server answers 500 or not at all while a lock is held.

    :param kwargs: ``httpx.Client`` arguments.
    """
    import httpx
    import tenacity

    class Client(httpx.Client):
        @tenacity.retry(
            retry=tenacity.retry_if_exception_type(httpx.TransportError)
            | tenacity.retry_if_result(lambda response: response.status_code >= 500),
            stop=tenacity.stop_after_attempt(4),
            wait=tenacity.wait_exponential(min=1, max=8),
            retry_error_callback=lambda state: (
                state.outcome.result()
            ),  # the last answer, for raise_for_status
            reraise=True,
        )
        def send(self, request, **kw):
            return super().send(request, **kw)

    return Client(**kwargs)
