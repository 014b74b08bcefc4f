"""`mlplat demo`: run the platform's main job through the Airflow REST API and print what happened."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable

if TYPE_CHECKING:
    from airflow_provider_mlplat.platform import Platform

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
            self._http = httpx.Client(
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

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """
        Unpause a DAG and start a run now; return the run id.

        :param dag_id: the DAG.
        :param conf: run configuration (params).
        """
        self.http.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
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


def run_demo(platform: Platform) -> int:
    """
    Run the reference pipelines that exist on a running platform and print a timeline.

    :param platform: a platform that is up.
    """
    s = platform.settings
    if "airflow" not in s.services:
        print("the demo runs DAGs: start the platform with the airflow service", file=sys.stderr)
        return 2
    api = AirflowRestClient(
        f"http://127.0.0.1:{s.airflow_port}", "admin", platform.secrets()["airflow_admin_password"]
    )
    connections = sorted(platform.connections())
    print("\nDemo: platform_check (tests every platform connection from an Airflow task)")
    api.wait_for_dag("platform_check")
    run_id = api.trigger("platform_check", {"connections": connections})
    run = api.wait_for_run("platform_check", run_id)
    for ti in sorted(run["tasks"], key=lambda t: (t["task_id"], t["map_index"])):
        label = ti.get("rendered_map_index") or (ti["map_index"] if ti["map_index"] >= 0 else "")
        print(f"  {ti['task_id']:<22} {label!s:<16} {ti['state']:<8} {ti.get('duration') or 0:.1f} s")
    print(f"  run {run_id}: {run['state']}")
    print(f"\nAirflow: http://127.0.0.1:{s.airflow_port}/dags/platform_check")
    if "mlflow" in s.services:
        print(f"MLflow:  http://127.0.0.1:{s.mlflow_port}")
    if "ray" in s.services:
        print(f"Ray:     http://127.0.0.1:{s.ray_dashboard_port}")
    return 0 if run["state"] == "success" else 1
