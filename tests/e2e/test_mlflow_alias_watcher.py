"""A real Airflow (scheduler, triggerer, dag-processor) schedules a DAG on champion moves made by hand."""

from __future__ import annotations

import textwrap
import uuid

import pytest

from airflow_provider_mlplat.testing.services import free_port, free_port_block
from airflow_provider_mlplat.testing.waiting import wait_for

pytestmark = pytest.mark.e2e

WATCH_DAG = """
from airflow.sdk import Asset, AssetWatcher, dag, task

from airflow_provider_mlplat.triggers.mlflow import MLflowAliasChangedTrigger

champion = Asset(
    uri="mlflow://models/{name}",
    name="mlflow/models/{name}",
    group="ml",
    watchers=[AssetWatcher(name="champion_moves", trigger=MLflowAliasChangedTrigger("{name}", poll_interval=1))],
)


@dag(schedule=[champion], catchup=False, tags=["test"])
def on_champion_change():
    @task(inlets=[champion])
    def moved(triggering_asset_events=None):
        return [e.extra for e in triggering_asset_events[champion]]

    moved()


on_champion_change()
"""


@pytest.fixture
def platform(tmp_path):
    """MLflow and the four Airflow components, with a DAGs folder holding only the watcher DAG."""
    from mlplat.platform import Platform, Settings

    name = f"watched_{uuid.uuid4().hex[:8]}"
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "on_champion_change.py").write_text(textwrap.dedent(WATCH_DAG).replace("{name}", name))
    platform = Platform(
        Settings(
            home=tmp_path / "home",
            airflow_port=free_port(),
            mlflow_port=free_port(),
            ray_port=free_port_block(3),
            ray_dashboard_port=free_port(),
            dags_folder=dags,
            services=("mlflow", "airflow"),
        )
    )
    try:
        platform.up(timeout=300)
        yield platform, name
    finally:
        platform.down()


@pytest.mark.timeout(600)  # 1.5 min on a quiet machine, 4.4 min with fixtures on a loaded one
def test_a_champion_moved_by_hand_schedules_one_run_per_move_across_a_triggerer_restart(platform):
    from mlflow import MlflowClient

    from mlplat.airflow_api import AirflowRestClient

    platform, name = platform
    s = platform.settings
    mlflow = MlflowClient(f"http://127.0.0.1:{s.mlflow_port}")
    mlflow.create_registered_model(name)
    for _ in range(2):
        run = mlflow.create_run("0")
        mlflow.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    api = AirflowRestClient(
        f"http://127.0.0.1:{s.airflow_port}", "admin", platform.secrets()["airflow_admin_password"]
    )
    api.wait_for_dag("on_champion_change")

    def asset_id():
        found = api.http.get("/assets", params={"uri_pattern": name}).json()["assets"]
        return found[0]["id"] if found else None

    def watched_state() -> dict:
        asset = wait_for(asset_id, 60, "the asset", interval=1)
        entries = api.http.get(f"/assets/{asset}/state-store").json()
        return {e["key"]: e["value"] for e in entries["asset_state_store"]}

    def runs() -> list[dict]:
        return api.http.get("/dags/on_champion_change/dagRuns").json()["dag_runs"]

    access_log = platform.home / "logs" / "mlflow.log"

    def alias_reads() -> int:  # the watcher's polls, as MLflow's access log shows them
        lines = access_log.read_text(errors="replace").splitlines()
        return sum("GET /api/2.0/mlflow/registered-models/alias?" in line and name in line for line in lines)

    def polls(n: int) -> None:
        target = alias_reads() + n
        wait_for(lambda: alias_reads() >= target, 60, f"{n} more polls of the watcher", 0.5)

    key = f"mlflow_alias:{name}@champion"
    # the watcher's first poll notes the baseline
    wait_for(lambda: key in watched_state(), 120, "the triggerer to start the watcher", interval=1)
    assert runs() == []

    mlflow.set_registered_model_alias(name, "champion", "1")  # by hand, as in the MLflow UI
    wait_for(lambda: len(runs()) == 1, 90, "a run for the move to v1", interval=1)
    mlflow.set_registered_model_alias(name, "champion", "1")  # the same version again
    polls(5)
    assert len(runs()) == 1

    rpc = platform.rpc()
    rpc.stopProcess("airflow-triggerer")
    mlflow.set_registered_model_alias(name, "champion", "2")  # moved while no triggerer runs
    rpc.startProcess("airflow-triggerer")
    wait_for(lambda: len(runs()) == 2, 120, "a run for the move to v2 made during the restart", interval=1)
    polls(5)
    assert len(runs()) == 2, "a move was repeated after the triggerer restart"
    assert watched_state()[key] == "2"

    for run in runs():
        api.wait_for_run("on_champion_change", run["dag_run_id"], timeout=120)
    events = api.http.get("/assets/events", params={"asset_id": asset_id()}).json()["asset_events"]
    moves = sorted(
        (e["extra"]["payload"]["version"], e["extra"]["payload"]["previous_version"]) for e in events
    )
    assert moves == [("1", None), ("2", "1")]
