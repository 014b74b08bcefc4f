"""The feature_pipeline DAG end to end (dag.test) with real Feast, GX, SQLite or Redis."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from airflow_provider_mlplat.testing.airflow import set_connection
from include import datagen
from tests.feast_support import DRIVERS, HOUR, T0, feast_connection, online_rows, task_context  # noqa: F401

pytestmark = pytest.mark.integration

LOGICAL_DATE = T0 + 2 * HOUR  # the run of 02:00 covers [01:00, 02:00)


def asset_events(run_id: str) -> dict[str, dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.uri, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetEvent.source_dag_id == "feature_pipeline", AssetEvent.source_run_id == run_id)
        ).all()
    return {uri: extra for uri, extra in rows}


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_feature_pipeline_lands_validates_materializes_and_emits_assets(run_dag, tmp_path, online, request):
    from mlplat.platform import Platform, Settings

    conn = Platform(Settings(home=tmp_path, services=())).connections()[
        "feast_default"
    ]  # what `mlplat up` writes
    if online == "redis":
        db = request.getfixturevalue("redis_url").rsplit("/", 1)[1]
        conn["extra"]["online_store"] = {"type": "redis", "connection_string": f"127.0.0.1:6379,db={db}"}
    set_connection("feast_default", **conn)
    result = run_dag("feature_pipeline", conf={"drivers": DRIVERS}, logical_date=LOGICAL_DATE)
    assert result.state == "success", result.states
    assert result.states == {
        "land_raw_data": "success",
        "apply_feature_repo": "success",
        "validate_raw_data[0]": "success",
        "validate_raw_data[1]": "success",
        "materialize": "success",
    }
    window = {"start": (T0 + HOUR).isoformat(), "end": LOGICAL_DATE.isoformat()}
    summary = result.xcoms["materialize"]
    assert {k: summary[k] for k in ("start", "end")} == window
    assert summary["online_store"] == online
    assert summary["feature_views"]["driver_hourly_stats"]["rows"] == DRIVERS
    assert summary["feature_views"]["driver_profile"]["rows"] == 0  # the daily snapshot lands at 00:00
    assert result.xcoms["validate_raw_data[0]"]["success"] is True
    events = asset_events(result.run_id)
    assert set(events) == {"feast://rides/driver_hourly_stats", "feast://rides/driver_profile"}
    assert events["feast://rides/driver_hourly_stats"] == {
        "project": "rides",
        "feature_view": "driver_hourly_stats",
        "rows": DRIVERS,
        "online_store": online,
        **window,
    }
    assert len(online_rows("feast_default", "driver_hourly_stats")) == DRIVERS
    assert result.xcoms["apply_feature_repo"]["changed"] is True

    again = run_dag("feature_pipeline", conf={"drivers": DRIVERS}, logical_date=LOGICAL_DATE)
    assert again.state == "success"
    assert again.xcoms["apply_feature_repo"] == {"project": "rides", "changed": False, "changes": []}


def test_bad_raw_data_stops_the_pipeline_before_anything_is_written(run_dag, tmp_path):
    feast_connection("feast_default", tmp_path)
    datagen.generate(tmp_path / "data", T0 + HOUR, LOGICAL_DATE, drivers=DRIVERS)
    path = datagen.partition_path(tmp_path / "data", "driver_hourly_stats", T0 + HOUR)
    table = pq.read_table(path).to_pandas()
    table.loc[0, "cancel_rate"] = 3.0
    table.to_parquet(path, index=False)
    result = run_dag(
        "feature_pipeline", conf={"drivers": DRIVERS, "simulate_source": False}, logical_date=LOGICAL_DATE
    )
    assert result.state == "failed"
    assert result.states["validate_raw_data[0]"] == "failed"
    assert result.states["validate_raw_data[1]"] == "success"
    assert result.states["materialize"] == "upstream_failed"
    assert asset_events(result.run_id) == {}
    assert online_rows("feast_default", "driver_hourly_stats") == {}
