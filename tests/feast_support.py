"""Helpers for the Feast tests: the reference repo on temporary data, task contexts, store dumps."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.services import free_port
from include import datagen
from tests.conftest import REPO

REPO_PATH = REPO / "include" / "feature_repo"
GX_DIR = REPO / "include" / "gx"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DRIVERS = 20
VIEWS = ("driver_hourly_stats", "driver_profile")


def feast_connection(
    conn_id: str, tmp: Path, online_store: dict[str, Any] | None = None, **extra: Any
) -> None:
    """A ``feast`` connection to the reference repo with registry, data and online store under ``tmp``."""
    set_connection(
        conn_id,
        conn_type="feast",
        extra={
            "repo_path": str(REPO_PATH),
            "data_dir": str(tmp / "data"),
            "registry": str(tmp / "registry.db"),
            "online_store": online_store or {"type": "sqlite", "path": str(tmp / "online.db")},
            **extra,
        },
    )


def rides_repo(tmp_path: Path) -> SimpleNamespace:
    """The reference repo applied over 3 generated hours (20 drivers), SQLite online store, ``feast_default``."""
    from airflow_provider_mlplat.hooks.feast import FeastHook

    datagen.generate(tmp_path / "data", T0, T0 + 3 * HOUR, drivers=DRIVERS)
    feast_connection("feast_default", tmp_path)
    FeastHook().apply()
    return SimpleNamespace(tmp=tmp_path, data=tmp_path / "data")


def task_context(
    task_id: str, start: datetime | None = None, end: datetime | None = None, run_id: str = "test_run"
):
    """The part of an Airflow task context the provider's operators use."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    ti = SimpleNamespace(dag_id="feast_tests", run_id=run_id, task_id=task_id, map_index=-1, try_number=1)
    return {
        "ti": ti,
        "data_interval_start": start,
        "data_interval_end": end,
        "outlet_events": OutletEventAccessors(),
    }


def outlet_extras(context) -> dict[str, dict[str, Any]]:
    """Asset URI -> the extra the task attached to its event (of a declared outlet; aliases aside)."""
    return {
        key.uri: dict(accessor.extra)
        for key, accessor in context["outlet_events"]._dict.items()
        if hasattr(key, "uri")
    }


def online_rows(conn_id: str, view: str, drivers: int = DRIVERS) -> dict[int, tuple]:
    """Every driver's row of a feature view in the online store: id -> (event time, values)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from airflow_provider_mlplat.hooks.feast import FeastHook

    hook = FeastHook(conn_id)
    fv = hook.store.get_feature_view(view)
    ids = list(range(datagen.FIRST_DRIVER_ID, datagen.FIRST_DRIVER_ID + drivers))
    keys = [EntityKey(join_keys=["driver_id"], entity_values=[Value(int64_val=i)]) for i in ids]
    found = hook.store._get_provider().online_read(hook.store.config, fv, keys)
    return {
        i: (ts, {name: value.SerializeToString() for name, value in sorted(values.items())})
        for i, (ts, values) in zip(ids, found, strict=True)
        if ts is not None
    }


def offline_latest(data_dir: Path, view: str, start: datetime, end: datetime):
    """The latest source row of each driver in ``[start, end)``, straight from the parquet files."""
    import pandas as pd

    frame = pd.read_parquet(data_dir / view)
    frame = frame[(frame.event_timestamp >= start) & (frame.event_timestamp < end)]
    return frame.sort_values("event_timestamp").groupby("driver_id").tail(1).set_index("driver_id")


class RedisServer:
    """A throwaway redis-server on a free port (no persistence) that a test may stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def json_roundtrip(value: Any) -> Any:
    """What XCom would store."""
    return json.loads(json.dumps(value))


def materialize_in_a_task_process(
    start: datetime, end: datetime, timeout: float = 300, launcher: Sequence[str] = (), **kwargs: Any
) -> dict:
    """
    FeastMaterializeOperator run by ``tests.feast_task`` in a fresh process; its JSON answer.

    :param start: window start.
    :param end: window end.
    :param timeout: seconds the process may take.
    :param launcher: command the process is started through (e.g. ``uv run``), as a worker may be.
    :param kwargs: operator arguments.
    """
    import os
    import sys

    args = json.dumps({"start": start.isoformat(), "end": end.isoformat(), "kwargs": kwargs})
    done = subprocess.run(
        [*launcher, sys.executable, "-m", "tests.feast_task", args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no answer from the task process (exit {done.returncode}): {done.stderr[-3000:]}"
    return json.loads(lines[-1])
