"""Feature pipeline pieces that need no service: data generator, windows, times, GX messages, registry diffs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pendulum
import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatServiceUnavailable
from airflow_provider_mlplat.hooks.feast import FeastHook, _same_but_meta
from airflow_provider_mlplat.hooks.gx import GXHook, _exception_messages
from airflow_provider_mlplat.operators.feast import FeastMaterializeOperator
from airflow_provider_mlplat.sensors.feast import FeastFeatureFreshnessSensor
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.times import as_utc
from airflow_provider_mlplat.triggers.feast import FeastFeatureFreshnessTrigger
from include import datagen
from tests.conftest import REPO

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_generator_is_deterministic_per_hour_whatever_the_range(tmp_path):
    one = datagen.generate_hour(T0 + timedelta(hours=5), drivers=50, seed=7)
    again = datagen.generate_hour(T0 + timedelta(hours=5), drivers=50, seed=7)
    assert all(one[s].equals(again[s]) for s in datagen.SOURCES)
    files = datagen.generate(tmp_path, T0 + timedelta(hours=4), T0 + timedelta(hours=6), drivers=50, seed=7)
    import pyarrow.parquet as pq

    assert pq.read_table(datagen.partition_path(tmp_path, "trips", T0 + timedelta(hours=5))).equals(
        one["trips"]
    )
    assert len(files) == 2 * len(datagen.SOURCES)
    other = datagen.generate_hour(T0 + timedelta(hours=6), drivers=50, seed=7)
    assert not other["driver_hourly_stats"].equals(one["driver_hourly_stats"])


def test_generator_schema_profiles_and_labels():
    hour = datagen.generate_hour(T0, drivers=400)
    stats = hour["driver_hourly_stats"].to_pandas()
    assert hour["driver_hourly_stats"].schema == datagen.SCHEMAS["driver_hourly_stats"]
    assert stats.driver_id.is_unique and len(stats) == 400
    assert stats.event_timestamp.between(T0, T0 + timedelta(hours=1), inclusive="left").all()
    assert hour["driver_profile"].num_rows == 400  # daily snapshot at 00:00
    assert datagen.generate_hour(T0 + timedelta(hours=1), drivers=400)["driver_profile"].num_rows == 0
    trips = hour["trips"].to_pandas()
    assert set(trips.completed.unique()) == {0, 1} and 0.3 < trips.completed.mean() < 0.95


def test_injected_shift_moves_the_distributions():
    shift = datagen.Shift(magnitude=1.0, start=T0 + timedelta(hours=2))
    before = datagen.generate_hour(T0 + timedelta(hours=1), drivers=500, shift=shift)
    after = datagen.generate_hour(T0 + timedelta(hours=3), drivers=500, shift=shift)
    base = datagen.generate_hour(T0 + timedelta(hours=3), drivers=500)
    assert before["driver_hourly_stats"].equals(
        datagen.generate_hour(T0 + timedelta(hours=1), drivers=500)["driver_hourly_stats"]
    )
    speed = lambda h: h["driver_hourly_stats"].column("avg_speed_kmh").to_numpy().mean()  # noqa: E731
    assert speed(after) < 0.8 * speed(base)
    assert (
        after["trips"].column("trip_distance_km").to_numpy().mean()
        > 1.3 * base["trips"].column("trip_distance_km").to_numpy().mean()
    )


def test_generator_hours_paths_and_cli(tmp_path):
    hours = list(datagen.hours(T0 + timedelta(minutes=30), T0 + timedelta(hours=3)))
    assert hours == [T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    assert datagen.partition_path("/d", "trips", T0).as_posix() == "/d/trips/20260301T00.parquet"
    with pytest.raises(ValueError, match="unknown source 'rides'"):
        datagen.partition_path("/d", "rides", T0)
    cli = subprocess.run(
        [
            sys.executable,
            str(REPO / "include" / "datagen.py"),
            "--data-dir",
            str(tmp_path),
            "--start",
            "2026-03-01T00",
            "--end",
            "2026-03-01T02",
            "--drivers",
            "10",
            "--shift",
            "0.5",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote 6 files" in cli.stdout


def test_times_are_parsed_to_plain_utc_datetimes():
    assert as_utc("start", "2026-03-01T02:00:00+02:00") == T0
    assert as_utc("start", "2026-03-01T00:00") == T0  # naive = UTC
    shifted = as_utc("start", pendulum.datetime(2026, 3, 1, tz="UTC")) - timedelta(minutes=5)
    assert shifted.tzinfo is UTC  # pendulum would drop a foreign tzinfo here
    with pytest.raises(MLPlatConfigError, match="start='soon' is not a time: use ISO 8601"):
        as_utc("start", "soon")
    with pytest.raises(MLPlatConfigError, match="end=42 is not a time"):
        as_utc("end", 42)


def test_materialize_window_is_the_interval_minus_overlap_or_explicit():
    context = {
        "data_interval_start": pendulum.datetime(2026, 3, 1, 5, tz="UTC"),
        "data_interval_end": pendulum.datetime(2026, 3, 1, 6, tz="UTC"),
    }
    op = FeastMaterializeOperator(task_id="m", overlap=600)
    assert op.window(context) == (T0 + timedelta(hours=4, minutes=50), T0 + timedelta(hours=6))
    op = FeastMaterializeOperator(task_id="m", start="2026-03-01T00:00:00Z", end=T0 + timedelta(hours=1))
    assert op.window(context) == (T0, T0 + timedelta(hours=1))
    with pytest.raises(MLPlatConfigError, match="overlap=-1 must not be negative"):
        FeastMaterializeOperator(task_id="m", overlap=-1).window(context)
    assert FeastMaterializeOperator.template_fields == ("feature_views", "start", "end")


def test_repo_env_exposes_the_data_dir_and_ray_token_only_inside_the_block(tmp_path):
    set_connection("ray_unit", conn_type="ray", host="http://127.0.0.1:1", password="tok3n")
    set_connection(
        "feast_unit",
        conn_type="feast",
        extra={
            "repo_path": str(REPO / "include" / "feature_repo"),
            "data_dir": str(tmp_path),
            "batch_engine": {"type": "ray.engine", "ray_address": "127.0.0.1:1"},
            "ray_conn_id": "ray_unit",
        },
    )
    names = ("MLPLAT_FEAST_DATA_DIR", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    hook = FeastHook("feast_unit")
    with hook.repo_env():
        inside = {n: os.environ.get(n) for n in names}
    assert inside == {
        "MLPLAT_FEAST_DATA_DIR": str(tmp_path),
        "RAY_AUTH_TOKEN": "tok3n",
        "RAY_AUTH_MODE": "token",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    assert not any(os.environ.get(n) for n in names[:3])
    assert hook.repo_config_dict()["batch_engine"] == {"type": "ray.engine", "ray_address": "127.0.0.1:1"}


def test_a_data_source_differing_only_in_timestamps_is_unchanged():
    from feast.protos.feast.core.DataSource_pb2 import DataSource

    stored = DataSource(name="s", timestamp_field="event_timestamp")
    stored.meta.created_timestamp.seconds = 1
    declared = DataSource(name="s", timestamp_field="event_timestamp")
    declared.meta.created_timestamp.seconds = 2
    assert _same_but_meta(stored, declared)
    declared.timestamp_field = "ts"
    assert not _same_but_meta(stored, declared)
    assert not _same_but_meta("a", "b")


def test_gx_failures_read_as_evidence():
    failure = {
        "expectation": "expect_column_values_to_be_between",
        "column": "conv_rate",
        "kwargs": {"min_value": 0, "max_value": 1},
        "observed_value": None,
        "unexpected_count": 2,
        "unexpected_percent": 6.6667,
        "unexpected_examples": [1.7, -0.2],
    }
    assert GXHook.describe(failure) == (
        "expect_column_values_to_be_between(conv_rate, min_value=0, max_value=1): 2 unexpected (6.67%), e.g. [1.7, -0.2]"
    )
    table = {
        "expectation": "expect_table_row_count_to_be_between",
        "column": None,
        "kwargs": {"min_value": 1},
        "observed_value": 0,
        "unexpected_count": None,
        "unexpected_percent": None,
        "unexpected_examples": [],
    }
    assert GXHook.describe(table) == "expect_table_row_count_to_be_between(min_value=1): observed 0"
    nested = {
        "metric-a": {"raised_exception": True, "exception_message": "boom"},
        "metric-b": {"raised_exception": False, "exception_message": None},
    }
    assert _exception_messages(nested) == ["boom"]
    assert _exception_messages({"raised_exception": False, "exception_message": None}) == []


def test_trigger_serializes_and_the_sensor_reads_its_events():
    trigger = FeastFeatureFreshnessTrigger(
        "driver_hourly_stats", T0.isoformat(), deadline=12.5, poke_interval=3
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_mlplat.triggers.feast.FeastFeatureFreshnessTrigger"
    assert FeastFeatureFreshnessTrigger(**kwargs).serialize() == (classpath, kwargs)
    sensor = FeastFeatureFreshnessSensor(task_id="s", feature_view="driver_hourly_stats")
    assert sensor.target_time == "{{ data_interval_end }}" and sensor.deferrable is True
    event = {
        "status": "error",
        "feature_view": "v",
        "target_time": T0.isoformat(),
        "watermark": None,
        "message": "x",
    }
    with pytest.raises(MLPlatServiceUnavailable, match="checking v failed: x"):
        sensor.execute_complete({}, event)


def test_dag_and_provider_modules_import_no_heavy_sdk():
    code = (
        "import sys, runpy; sys.path.insert(0, sys.argv[1]);"
        "import airflow_provider_mlplat.operators.feast, airflow_provider_mlplat.operators.gx,"
        " airflow_provider_mlplat.sensors.feast, airflow_provider_mlplat.triggers.feast;"
        "runpy.run_path(sys.argv[1] + '/dags/feature_pipeline.py');"
        "import json; print(json.dumps(sorted(m for m in ('feast', 'great_expectations', 'pandas', 'pyarrow', 'ray')"
        " if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("arrow", "dtype", "problem"),
    [
        (lambda pa: pa.list_(pa.string()), lambda t: t.Array(t.String), None),
        # parquet's list spelling
        (lambda pa: pa.list_(pa.field("element", pa.string())), lambda t: t.Array(t.String), None),
        (lambda pa: pa.large_list(pa.int64()), lambda t: t.Set(t.Int64), None),
        (lambda pa: pa.list_(pa.int64(), 4), lambda t: t.Array(t.Int64), None),
        (lambda pa: pa.decimal128(5, 2), lambda t: t.Float64, None),
        (lambda pa: pa.struct([("a", pa.string())]), lambda t: t.Map, None),
        (lambda pa: pa.large_string(), lambda t: t.String, None),
        (lambda pa: pa.dictionary(pa.int32(), pa.string()), lambda t: t.String, None),
        (lambda pa: pa.timestamp("ns", tz="Europe/Paris"), lambda t: t.UnixTimestamp, None),
        (
            lambda pa: pa.float32(),
            lambda t: t.Float64,
            r"^float \(FLOAT\), the feature view declares DOUBLE \(Float64\)$",
        ),
        (
            lambda pa: pa.map_(pa.string(), pa.string()),
            lambda t: t.Map,
            r"declares MAP \(Map\): Feast reads a parquet map column",
        ),
        (
            lambda pa: pa.timestamp("us", tz="UTC"),
            lambda t: t.ZonedTimestamp,
            r"Feast materializes no Arrow column as a ZonedTimestamp",
        ),
        (
            lambda pa: pa.struct([("z", pa.float64())]),
            lambda t: t.Struct({"a": t.String}),
            r"its fields \['z'\] are not the declared \['a'\]",
        ),
        (
            lambda pa: pa.binary(16),
            lambda t: t.Uuid,
            r"^fixed_size_binary\[16\] \(no Feast type\), the feature view declares UUID",
        ),
    ],
)
def test_column_types_are_read_as_feast_reads_them(arrow, dtype, problem):
    import feast.types
    import pyarrow as pa

    from airflow_provider_mlplat.hooks.feast import _type_problem

    found = _type_problem(arrow(pa), dtype(feast.types))
    assert found is None if problem is None else re.search(problem, found), found


def test_integers_pandas_made_floats_are_restored_only_when_whole():
    import pyarrow as pa
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Int64

    from airflow_provider_mlplat.hooks.feast import _whole_numbers_as_integers

    fv = FeatureView(
        name="v",
        entities=[Entity(name="e", join_keys=["id"])],
        schema=[Field(name="id", dtype=Int64), Field(name="n", dtype=Int64), Field(name="x", dtype=Int64)],
        source=FileSource(path="v.parquet", timestamp_field="ts"),
    )
    table = pa.table({"id": [1.0, 2.0], "n": [1.0, None], "x": [1.5, 2.0]})
    restored = _whole_numbers_as_integers(fv, table)
    assert restored.schema.types == [pa.int64(), pa.int64(), pa.float64()]
    assert restored.column("n").to_pylist() == [1, None]
