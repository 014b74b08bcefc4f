"""The platform_check DAG tests real connections from Airflow tasks."""

from __future__ import annotations

import pytest

from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.services import free_port

pytestmark = pytest.mark.integration


def test_platform_check_passes_against_running_services(run_dag, mlflow_server, ray_cluster):
    result = run_dag("platform_check", conf={"connections": ["mlflow_default", "ray_default"]})
    assert result.state == "success", result.states
    assert result.states == {
        "connections_to_check": "success",
        "check_connection[0]": "success",
        "check_connection[1]": "success",
    }
    assert result.xcoms["check_connection[0]"]["conn_type"] == "mlflow"
    assert result.xcoms["check_connection[1]"]["message"].startswith("Ray 2.")


def test_platform_check_fails_the_task_of_a_service_that_does_not_answer(run_dag, mlflow_server):
    set_connection("mlflow_nowhere", conn_type="mlflow", host=f"http://127.0.0.1:{free_port()}")
    result = run_dag("platform_check", conf={"connections": ["mlflow_default", "mlflow_nowhere"]})
    assert result.state == "failed"
    assert result.states["check_connection[0]"] == "success"
    assert result.states["check_connection[1]"] == "failed"


def test_ray_hook_rejects_a_wrong_token(ray_cluster):
    from airflow_provider_mlplat.hooks.ray import RayHook

    set_connection("ray_wrong_token", conn_type="ray", host=ray_cluster.address, password="not-the-token")
    ok, message = RayHook("ray_wrong_token").test_connection()
    assert ok is False
    assert "401" in message or "nauthorized" in message or "token" in message.lower()
