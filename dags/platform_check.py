"""
### Platform check

Calls every platform connection the way the Airflow UI's *Test* button does (each provider hook's
`test_connection()`): MLflow, Ray, Feast, KServe, ... A failed check fails its mapped task with
the service's answer. `mlplat demo` runs this first; trigger it after pointing the connections at a
real cluster to see that every service answers.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task


@dag(
    schedule=None,
    catchup=False,
    tags=["mlplat", "platform"],
    default_args={"owner": "mlplat", "retries": 0},
    doc_md=__doc__,
    params={
        "connections": Param(
            ["mlflow_default", "ray_default"],
            type="array",
            items={"type": "string"},
            description="connection ids to check",
        )
    },
)
def platform_check():
    @task
    def connections_to_check(params=None) -> list[str]:
        """The connection ids from the run's params."""
        return list(params["connections"])

    @task(map_index_template="{{ conn_id }}")
    def check_connection(conn_id: str) -> dict[str, str]:
        """Test one connection with its provider hook; fail with the service's answer."""
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        ok, message = conn.get_hook().test_connection()
        if not ok:
            raise RuntimeError(f"connection {conn_id!r} ({conn.conn_type}) failed: {message}")
        return {"conn_id": conn_id, "conn_type": conn.conn_type, "message": message}

    check_connection.expand(conn_id=connections_to_check())


platform_check()
