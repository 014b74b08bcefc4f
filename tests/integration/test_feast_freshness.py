"""FeastFeatureFreshnessSensor and its trigger against a real Feast registry."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout, TaskDeferred

from airflow_provider_mlplat.assets import feast_feature_view_asset
from airflow_provider_mlplat.operators.feast import FeastMaterializeOperator
from airflow_provider_mlplat.sensors.feast import FeastFeatureFreshnessSensor
from airflow_provider_mlplat.triggers.feast import FeastFeatureFreshnessTrigger
from tests.feast_support import HOUR, T0, rides_repo, task_context

pytestmark = pytest.mark.integration


def materialize(start, end) -> None:
    op = FeastMaterializeOperator(
        task_id="materialize",
        feature_views=["driver_hourly_stats"],
        outlets=[feast_feature_view_asset("rides", "driver_hourly_stats")],
    )
    op.execute(task_context("materialize", start, end))


async def first_event(trigger):
    async for event in trigger.run():
        return event.payload


def test_sensor_returns_at_once_when_the_view_is_fresh(tmp_path):
    rides_repo(tmp_path)
    materialize(T0, T0 + HOUR)
    sensor = FeastFeatureFreshnessSensor(
        task_id="fresh", feature_view="driver_hourly_stats", target_time=(T0 + HOUR).isoformat()
    )
    assert sensor.execute(task_context("fresh")) == {
        "feature_view": "driver_hourly_stats",
        "watermark": (T0 + HOUR).isoformat(),
    }


def test_sensor_defers_and_the_trigger_fires_once_materialized(tmp_path):
    rides_repo(tmp_path)
    materialize(T0, T0 + HOUR)
    sensor = FeastFeatureFreshnessSensor(
        task_id="fresh",
        feature_view="driver_hourly_stats",
        target_time=T0 + 2 * HOUR,
        poke_interval=0.2,
        timeout=60,
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(task_context("fresh"))
    trigger = deferred.value.trigger
    assert (
        isinstance(trigger, FeastFeatureFreshnessTrigger) and deferred.value.method_name == "execute_complete"
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_mlplat.triggers.feast.FeastFeatureFreshnessTrigger"
    assert kwargs["target_time"] == (T0 + 2 * HOUR).isoformat() and kwargs["poke_interval"] == 0.2
    later = threading.Timer(1.0, materialize, (T0 + HOUR, T0 + 2 * HOUR))
    later.start()
    started = time.monotonic()
    event = asyncio.run(first_event(FeastFeatureFreshnessTrigger(**kwargs)))
    later.join()
    assert event["status"] == "success" and event["watermark"] == (T0 + 2 * HOUR).isoformat()
    assert time.monotonic() - started >= 1.0  # it waited for the second window
    assert sensor.execute_complete(task_context("fresh"), event)["watermark"] == (T0 + 2 * HOUR).isoformat()


def test_timeout_names_the_last_time_the_view_was_materialized_up_to(tmp_path):
    rides_repo(tmp_path)
    materialize(T0, T0 + HOUR)
    trigger = FeastFeatureFreshnessTrigger(
        "driver_hourly_stats", (T0 + 3 * HOUR).isoformat(), deadline=time.time(), poke_interval=0.1
    )
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "timeout" and event["watermark"] == (T0 + HOUR).isoformat()
    sensor = FeastFeatureFreshnessSensor(task_id="fresh", feature_view="driver_hourly_stats", timeout=5)
    with pytest.raises(AirflowSensorTimeout, match=r"last materialized up to 2026-01-01T01:00:00\+00:00"):
        sensor.execute_complete(task_context("fresh"), event)


def test_unknown_view_ends_the_wait_with_the_error(tmp_path):
    rides_repo(tmp_path)
    event = asyncio.run(
        first_event(FeastFeatureFreshnessTrigger("driver_stats", T0.isoformat(), deadline=None))
    )
    assert event["status"] == "error" and "unknown feature view(s) ['driver_stats']" in event["message"]


def test_poke_mode_without_deferral(tmp_path):
    rides_repo(tmp_path)
    sensor = FeastFeatureFreshnessSensor(
        task_id="fresh",
        feature_view="driver_hourly_stats",
        target_time=T0 + HOUR,
        deferrable=False,
        poke_interval=0.1,
        timeout=0.3,
    )
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute(task_context("fresh"))
