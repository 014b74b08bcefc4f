"""Feast's Ray compute engine, chosen by the connection, on the platform's local Ray head."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airflow_provider_mlplat.assets import feast_feature_view_asset
from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.feast import FeastHook
from airflow_provider_mlplat.operators.feast import FeastMaterializeOperator
from airflow_provider_mlplat.testing.ci import unavailable
from include import datagen
from tests.conftest import REPO
from tests.feast_support import (
    DRIVERS,
    HOUR,
    T0,
    feast_connection,
    materialize_in_a_task_process,
    online_rows,
    task_context,
)

pytestmark = pytest.mark.integration


def uv_run() -> tuple[str, ...]:
    """
    ``uv run``, through which the task process starts, as a task of ``uv run airflow ...`` or of
    ``uv run pytest`` does: Ray then rewrites a driver's runtime env to start its workers with
    ``uv run`` (the provider turns that off; else every worker dies at start and the engine's
    first ``ray.get`` waits forever).
    """
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        unavailable("the uv binary is not on PATH")
    return (uv, "run", "--frozen", "--no-sync")


def ray_engine(cluster) -> dict:
    """The connection's batch engine override: the head's GCS address; workers can import tests/."""
    home = Path(cluster.env["RAY_AUTH_TOKEN_PATH"]).parents[1]
    gcs_port = json.loads((home / "platform.json").read_text())["ray_port"]
    return {
        "type": "ray.engine",
        "ray_address": f"127.0.0.1:{gcs_port}",
        "max_workers": 1,
        "ray_conf": {"runtime_env": {"env_vars": {"PYTHONPATH": str(REPO)}}},
    }


def test_ray_engine_materializes_and_verifies_then_catches_a_swallowed_write_error(tmp_path, ray_cluster):
    # Feast's Ray engine drops rows older than now - ttl (3 h here): the data is of the last two hours.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - HOUR
    datagen.generate(tmp_path / "data", hour - HOUR, hour + HOUR, drivers=DRIVERS)
    feast_connection("feast_ray_apply", tmp_path)
    FeastHook("feast_ray_apply").apply()
    feast_connection("feast_ray", tmp_path, batch_engine=ray_engine(ray_cluster), ray_conn_id="ray_default")
    assert FeastHook("feast_ray").engine_type == "ray.engine"
    answer = materialize_in_a_task_process(
        hour - HOUR,
        hour,
        launcher=uv_run(),
        feast_conn_id="feast_ray",
        feature_views=["driver_hourly_stats"],
    )
    assert answer.get("result", {}).get("rows") == DRIVERS, answer
    assert len(online_rows("feast_ray", "driver_hourly_stats")) == DRIVERS

    # The Ray engine only logs a failed online write: the read-back is what fails the task.
    flag = tmp_path / "fail-next-write"
    flaky = {
        "type": "tests.feast_faults.FlakySqliteOnlineStore",
        "path": str(tmp_path / "online.db"),
        "fail_flag": str(flag),
    }
    feast_connection(
        "feast_ray_flaky",
        tmp_path,
        online_store=flaky,
        batch_engine=ray_engine(ray_cluster),
        ray_conn_id="ray_default",
    )
    flag.touch()
    answer = materialize_in_a_task_process(
        hour, hour + HOUR, feast_conn_id="feast_ray_flaky", feature_views=["driver_hourly_stats"]
    )
    assert "rows read back from the online store do not match" in answer.get("error", ""), answer
    assert "stale" in answer["error"]
    assert not flag.exists()  # the injected failure happened inside a Ray worker
    assert (
        FeastHook("feast_ray_flaky").watermark("driver_hourly_stats") == hour
    )  # the failed hour is not recorded


def test_ray_engine_refuses_a_window_older_than_the_ttl_before_writing(tmp_path):
    datagen.generate(tmp_path / "data", T0, T0 + HOUR, drivers=DRIVERS)
    feast_connection("feast_old_apply", tmp_path)
    FeastHook("feast_old_apply").apply()
    feast_connection(
        "feast_old_ray", tmp_path, batch_engine={"type": "ray.engine", "ray_address": "127.0.0.1:1"}
    )
    op = FeastMaterializeOperator(
        task_id="materialize",
        feast_conn_id="feast_old_ray",
        feature_views=["driver_profile"],
        outlets=[feast_feature_view_asset("rides", "driver_profile")],
    )
    with pytest.raises(
        MLPlatConfigError, match=r"Ray engine drops rows older than its ttl \(2 days, 0:00:00\)"
    ):
        op.execute(task_context("materialize", T0, T0 + HOUR))
