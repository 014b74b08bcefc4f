"""FeastApplyOperator and FeastMaterializeOperator against real Feast (SQLite and Redis online stores)."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_mlplat.assets import feast_feature_view_asset
from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatError, MLPlatValidationFailed
from airflow_provider_mlplat.hooks.feast import FeastHook
from airflow_provider_mlplat.operators.feast import MATERIALIZED, FeastApplyOperator, FeastMaterializeOperator
from include import datagen
from tests.feast_support import (
    DRIVERS,
    HOUR,
    REPO_PATH,
    T0,
    VIEWS,
    RedisServer,
    feast_connection,
    json_roundtrip,
    offline_latest,
    online_rows,
    outlet_extras,
    rides_repo,
    task_context,
)

pytestmark = pytest.mark.integration


def materialize_op(**kwargs) -> FeastMaterializeOperator:
    kwargs.setdefault("outlets", [feast_feature_view_asset("rides", v) for v in VIEWS])
    return FeastMaterializeOperator(task_id="materialize", **kwargs)


def flaky_store_op(rides, conn_id: str, flag, **fault) -> FeastMaterializeOperator:
    """Materialize driver_hourly_stats in batches of 5 into a SQLite store that fails as ``fault`` says once ``flag`` exists."""
    store = {
        "type": "tests.feast_faults.FlakySqliteOnlineStore",
        "path": str(rides.tmp / "online.db"),
        "fail_flag": str(flag),
        **fault,
    }
    feast_connection(conn_id, rides.tmp, online_store=store)
    return materialize_op(
        feature_views=["driver_hourly_stats"],
        write_batch_size=5,
        feast_conn_id=conn_id,
        outlets=[feast_feature_view_asset("rides", "driver_hourly_stats")],
    )


def test_apply_creates_then_is_a_noop(tmp_path):
    datagen.generate(tmp_path / "data", T0, T0 + HOUR, drivers=5)
    feast_connection("feast_apply", tmp_path)
    op = FeastApplyOperator(task_id="apply", feast_conn_id="feast_apply")
    first = op.execute(task_context("apply"))
    created = {(c["kind"], c["name"]) for c in first["changes"] if c["change"] == "create"}
    assert {("feature view", "driver_hourly_stats"), ("feature view", "driver_profile")} <= created
    assert {
        ("on demand feature view", "trip_request_features"),
        ("feature service", "trip_completion_v1"),
    } <= created
    assert first["changed"] is True and first["project"] == "rides"
    registry = (tmp_path / "registry.db").read_bytes()
    again = op.execute(task_context("apply"))
    assert again == {"project": "rides", "changed": False, "changes": []}
    assert (tmp_path / "registry.db").read_bytes() == registry  # nothing written


def test_apply_reports_what_changed_in_a_copy_of_the_repo(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO_PATH, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    datagen.generate(tmp_path / "data", T0, T0 + HOUR, drivers=5)
    feast_connection("feast_copy", tmp_path, repo_path=str(repo))
    op = FeastApplyOperator(task_id="apply", feast_conn_id="feast_copy")
    op.execute(task_context("apply"))
    code = (repo / "definitions.py").read_text()
    (repo / "definitions.py").write_text(code.replace("ttl=timedelta(days=2)", "ttl=timedelta(days=3)"))
    changed = op.execute(task_context("apply"))
    assert changed["changes"] == [{"kind": "feature view", "name": "driver_profile", "change": "update"}]


def test_materialize_writes_verifies_records_and_emits_one_event_per_view(tmp_path):
    rides = rides_repo(tmp_path)
    context = task_context("materialize", T0, T0 + HOUR)
    result = json_roundtrip(materialize_op().execute(context))
    assert result["rows"] == 2 * DRIVERS  # stats every hour; the daily profile snapshot lands at 00:00
    assert result["feature_views"]["driver_hourly_stats"]["rows"] == DRIVERS
    assert (result["start"], result["end"]) == (T0.isoformat(), (T0 + HOUR).isoformat())
    assert result["online_store"] == "sqlite"
    extras = {uri: extra for uri, extra in outlet_extras(context).items()}
    assert extras["feast://rides/driver_profile"] == {
        "project": "rides",
        "feature_view": "driver_profile",
        "start": T0.isoformat(),
        "end": (T0 + HOUR).isoformat(),
        "rows": DRIVERS,
        "online_store": "sqlite",
    }
    expected = offline_latest(rides.data, "driver_hourly_stats", T0, T0 + HOUR)
    online = online_rows("feast_default", "driver_hourly_stats")
    assert sorted(online) == sorted(expected.index)
    for driver_id, (ts, _) in online.items():
        assert abs(ts.timestamp() - expected.loc[driver_id, "event_timestamp"].timestamp()) < 1
    assert FeastHook().watermark("driver_hourly_stats") == T0 + HOUR


def test_rerunning_an_interval_leaves_the_online_store_exactly_as_before(tmp_path):
    rides_repo(tmp_path)
    op = materialize_op()
    op.execute(task_context("materialize", T0, T0 + HOUR))
    op.execute(task_context("materialize", T0 + HOUR, T0 + 2 * HOUR))
    before = {view: online_rows("feast_default", view) for view in VIEWS}
    op.execute(task_context("materialize", T0 + HOUR, T0 + 2 * HOUR))
    assert {view: online_rows("feast_default", view) for view in VIEWS} == before


def test_empty_window_succeeds_with_zero_rows(tmp_path):
    rides_repo(tmp_path)
    context = task_context("materialize", T0 + 5 * HOUR, T0 + 6 * HOUR)  # no data in these hours
    result = materialize_op().execute(context)
    assert result["rows"] == 0 and all(v["rows"] == 0 for v in result["feature_views"].values())
    assert {e["rows"] for e in outlet_extras(context).values()} == {0}
    assert online_rows("feast_default", "driver_hourly_stats") == {}
    assert FeastHook().watermark("driver_hourly_stats") == T0 + 6 * HOUR


def test_overlap_starts_the_window_earlier(tmp_path):
    rides_repo(tmp_path)
    op = materialize_op(
        feature_views=["driver_hourly_stats"],
        overlap=timedelta(minutes=30),
        outlets=[feast_feature_view_asset("rides", "driver_hourly_stats")],
    )
    result = op.execute(task_context("materialize", T0 + HOUR, T0 + 2 * HOUR))
    assert result["start"] == (T0 + HOUR - timedelta(minutes=30)).isoformat()


def test_explicit_window_wins_over_the_data_interval(tmp_path):
    rides_repo(tmp_path)
    op = materialize_op(start="2026-01-01T02:00:00+00:00", end="2026-01-01T03:00:00+00:00")
    result = op.execute(task_context("materialize", T0, T0 + HOUR))
    assert (result["start"], result["end"]) == ("2026-01-01T02:00:00+00:00", "2026-01-01T03:00:00+00:00")


def test_unknown_feature_view_fails_before_any_write_naming_the_existing_ones(tmp_path):
    rides_repo(tmp_path)
    op = materialize_op(feature_views=["driver_hourly_stats", "driver_stats"])
    with pytest.raises(MLPlatConfigError, match=r"unknown feature view\(s\) \['driver_stats'\]") as err:
        op.execute(task_context("materialize", T0, T0 + HOUR))
    assert "existing: ['driver_hourly_stats', 'driver_profile']" in str(err.value)
    assert online_rows("feast_default", "driver_hourly_stats") == {}


def test_views_the_dag_did_not_declare_get_their_events_through_the_operators_alias(tmp_path):
    rides_repo(tmp_path)
    op = materialize_op(outlets=[feast_feature_view_asset("rides", "driver_profile")])
    assert op.outlets[-1] == MATERIALIZED  # declared by the operator: the DAG need not repeat it
    context = task_context("materialize", T0, T0 + HOUR)
    result = op.execute(context)
    [event] = context["outlet_events"][MATERIALIZED].asset_alias_events
    assert event.dest_asset_key.uri == "feast://rides/driver_hourly_stats"
    assert event.extra["rows"] == result["feature_views"]["driver_hourly_stats"]["rows"] > 0
    assert outlet_extras(context)["feast://rides/driver_profile"]["feature_view"] == "driver_profile"


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda t: t.drop_columns(["acc_rate"]), r"column 'acc_rate' is missing"),
        (
            lambda t: t.set_column(4, "avg_daily_trips", t.column("avg_daily_trips").cast(pa.string())),
            r"column 'avg_daily_trips' is string \(STRING\), the feature view declares INT64",
        ),
    ],
    ids=["missing-column", "wrong-dtype"],
)
def test_bad_source_file_fails_before_any_write(tmp_path, corrupt, message):
    rides = rides_repo(tmp_path)
    path = datagen.partition_path(rides.data, "driver_hourly_stats", T0)
    pq.write_table(corrupt(pq.read_table(path)), path)
    with pytest.raises(MLPlatValidationFailed, match=message) as err:
        materialize_op().execute(task_context("materialize", T0, T0 + HOUR))
    assert "driver_hourly_stats" in str(err.value)
    for view in VIEWS:  # not even the healthy view was written
        assert online_rows("feast_default", view) == {}
    assert FeastHook().watermark("driver_profile") is None


def test_invalid_windows_and_settings_are_rejected(tmp_path):
    rides_repo(tmp_path)
    with pytest.raises(MLPlatConfigError, match="no data interval"):
        materialize_op().execute(task_context("materialize"))
    with pytest.raises(MLPlatConfigError, match="start 2026-01-01T01:00:00\\+00:00 is not before end"):
        materialize_op(start="2026-01-01T01:00", end="2026-01-01T01:00").execute(task_context("materialize"))
    with pytest.raises(MLPlatConfigError, match="start='yesterday' is not a time"):
        materialize_op(start="yesterday", end="2026-01-01T01:00").execute(task_context("materialize"))
    with pytest.raises(MLPlatConfigError, match="write_batch_size=0 must be a positive integer"):
        materialize_op(write_batch_size=0).execute(task_context("materialize", T0, T0 + HOUR))


def test_a_failed_sqlite_write_batch_rolls_back_the_whole_window(tmp_path):
    rides = rides_repo(tmp_path)
    flag = rides.tmp / "fail-next-write"
    op = flaky_store_op(rides, "feast_rollback", flag, fail_after=1)
    flag.touch()
    with pytest.raises(ConnectionError, match="injected: lost the connection while writing 5 rows"):
        op.execute(task_context("materialize", T0, T0 + HOUR))
    assert not flag.exists()  # the second batch failed, after the first was written
    assert online_rows("feast_rollback", "driver_hourly_stats") == {}  # ... and rolled back
    assert FeastHook("feast_rollback").watermark("driver_hourly_stats") is None
    assert op.execute(task_context("materialize", T0, T0 + HOUR))["rows"] == DRIVERS
    assert len(online_rows("feast_rollback", "driver_hourly_stats")) == DRIVERS


def test_a_silently_lost_write_is_caught_and_the_window_not_recorded(tmp_path):
    rides = rides_repo(tmp_path)
    flag = rides.tmp / "fail-next-write"
    op = flaky_store_op(rides, "feast_flaky", flag, mode="drop")
    flag.touch()
    context = task_context("materialize", T0, T0 + HOUR)
    with pytest.raises(
        MLPlatError, match=r"5 of 20 rows read back from the online store do not match.*missing"
    ):
        op.execute(context)
    assert not flag.exists()  # the fault fired
    assert FeastHook("feast_flaky").watermark("driver_hourly_stats") is None
    assert len(online_rows("feast_flaky", "driver_hourly_stats")) == DRIVERS - 5
    retry = op.execute(task_context("materialize", T0, T0 + HOUR))  # the task's retry completes the window
    assert retry["rows"] == DRIVERS
    assert len(online_rows("feast_flaky", "driver_hourly_stats")) == DRIVERS
    assert FeastHook("feast_flaky").watermark("driver_hourly_stats") == T0 + HOUR


def test_redis_online_store_by_connection(tmp_path, redis_url):
    rides = rides_repo(tmp_path)
    db = redis_url.rsplit("/", 1)[1]
    feast_connection(
        "feast_redis",
        rides.tmp,
        online_store={"type": "redis", "connection_string": f"127.0.0.1:6379,db={db}"},
    )
    op = materialize_op(feast_conn_id="feast_redis")
    result = op.execute(task_context("materialize", T0, T0 + HOUR))
    assert result["online_store"] == "redis" and result["rows"] == 2 * DRIVERS
    first = {view: online_rows("feast_redis", view) for view in VIEWS}
    assert len(first["driver_hourly_stats"]) == DRIVERS
    assert (
        online_rows("feast_default", "driver_hourly_stats") == {}
    )  # SQLite untouched: the connection decides
    op.execute(task_context("materialize", T0, T0 + HOUR))
    assert {view: online_rows("feast_redis", view) for view in VIEWS} == first


def test_redis_down_mid_materialization_fails_then_the_retry_completes_the_window(tmp_path, monkeypatch):
    rides = rides_repo(tmp_path)
    from feast.infra.online_stores.redis import RedisOnlineStore
    from redis.exceptions import ConnectionError as RedisConnectionError

    server = RedisServer()
    server.start()
    try:
        feast_connection(
            "feast_redis_down",
            rides.tmp,
            online_store={"type": "redis", "connection_string": server.connection_string},
        )
        write = RedisOnlineStore.online_write_batch
        batches = []

        def write_then_stop_redis(self, config, table, data, progress):
            write(self, config, table, data, progress)
            batches.append(len(data))
            if len(batches) == 1:
                server.stop()  # Redis goes down after the first batch

        monkeypatch.setattr(RedisOnlineStore, "online_write_batch", write_then_stop_redis)
        op = materialize_op(
            feature_views=["driver_hourly_stats"],
            write_batch_size=5,
            feast_conn_id="feast_redis_down",
            outlets=[feast_feature_view_asset("rides", "driver_hourly_stats")],
        )
        context = task_context("materialize", T0, T0 + HOUR)
        with pytest.raises(RedisConnectionError):
            op.execute(context)
        assert batches == [5]
        assert outlet_extras(context) == {}  # no asset event: the task failed
        assert FeastHook("feast_redis_down").watermark("driver_hourly_stats") is None  # window not recorded
        server.start()  # back, empty (no persistence): the retry writes the whole window again
        retry = task_context("materialize", T0, T0 + HOUR)
        assert op.execute(retry)["rows"] == DRIVERS
        assert len(online_rows("feast_redis_down", "driver_hourly_stats")) == DRIVERS
        assert outlet_extras(retry)["feast://rides/driver_hourly_stats"]["rows"] == DRIVERS
        assert FeastHook("feast_redis_down").watermark("driver_hourly_stats") == T0 + HOUR
    finally:
        server.stop()
