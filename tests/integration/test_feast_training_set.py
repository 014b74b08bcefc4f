"""FeastHistoricalFeaturesOperator: point-in-time training sets from parquet, CSV and SQL entity rows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatValidationFailed
from airflow_provider_mlplat.operators.feast import FeastHistoricalFeaturesOperator
from airflow_provider_mlplat.testing.airflow import set_connection
from tests.feast_support import HOUR, T0, json_roundtrip, rides_repo, task_context
from tests.training_support import FEATURES as TRAINING_FEATURES

pytestmark = pytest.mark.integration

FEATURES = TRAINING_FEATURES[1:]  # the service's features: all but the request data (trip_distance_km)


def training_set(**kwargs):
    kwargs.setdefault("feature_service", "trip_completion_v1")
    op = FeastHistoricalFeaturesOperator(task_id="training_set", **kwargs)
    summary = json_roundtrip(op.execute(task_context("training_set")))
    return summary, pd.read_parquet(summary["uri"].removeprefix("file://"))


def test_training_set_is_point_in_time_correct_and_referenced_not_returned(tmp_path):
    rides = rides_repo(tmp_path)
    start, end = T0 + HOUR, T0 + 3 * HOUR
    summary, frame = training_set(
        entity_source=str(rides.data / "trips"), start=start.isoformat(), end=end.isoformat()
    )
    trips = pd.read_parquet(rides.data / "trips")
    trips = trips[(trips.event_timestamp >= start) & (trips.event_timestamp < end)]
    assert summary["rows"] == len(trips) == len(frame)
    assert summary["features"] == FEATURES
    assert summary["label"] == "completed" and summary["feature_service"] == "trip_completion_v1"
    uri = summary["uri"].removeprefix("file://")
    assert summary["content_hash"] == hashlib.sha256(Path(uri).read_bytes()).hexdigest()
    assert summary["rows_missing_features"] == 0
    assert list(frame.columns) == ["driver_id", "event_timestamp", "trip_distance_km", *FEATURES, "completed"]
    assert set(summary) == {
        "uri",
        "rows",
        "features",
        "label",
        "content_hash",
        "feature_service",
        "rows_missing_features",
    }
    # every feature value is the driver's latest stats row at or before the trip (within the 3 h TTL)
    stats = pd.read_parquet(rides.data / "driver_hourly_stats").sort_values("event_timestamp")
    expected = pd.merge_asof(
        frame.sort_values("event_timestamp"),
        stats[["driver_id", "event_timestamp", "conv_rate"]],
        on="event_timestamp",
        by="driver_id",
        suffixes=("", "_expected"),
        tolerance=pd.Timedelta(hours=3),
    )
    pd.testing.assert_series_equal(expected.conv_rate, expected.conv_rate_expected, check_names=False)
    minutes = frame.trip_distance_km / frame.avg_speed_kmh.clip(lower=5) * 60
    pd.testing.assert_series_equal(frame.expected_trip_minutes, minutes, check_names=False)


def test_rows_lacking_features_at_their_time_are_dropped_or_kept(tmp_path):
    rides = rides_repo(tmp_path)
    trips = pd.read_parquet(rides.data / "trips")  # from the first hour of data on
    summary, frame = training_set(entity_source=str(rides.data / "trips"))
    assert summary["rows_missing_features"] > 0
    assert summary["rows"] == len(frame) == len(trips) - summary["rows_missing_features"]
    assert not frame[FEATURES].isna().any().any()
    summary, frame = training_set(entity_source=str(rides.data / "trips"), drop_incomplete_rows=False)
    assert summary["rows"] == len(trips)
    missing = frame[frame[FEATURES].isna().any(axis=1)]
    assert len(missing) == summary["rows_missing_features"]
    assert (missing.event_timestamp < T0 + HOUR).all()  # only trips before their driver's first rows


def test_csv_entity_rows(tmp_path):
    rides = rides_repo(tmp_path)
    trips = pd.read_parquet(rides.data / "trips")
    trips.to_csv(tmp_path / "trips.csv", index=False)
    from_csv, frame = training_set(entity_source=str(tmp_path / "trips.csv"), drop_incomplete_rows=False)
    assert from_csv["rows"] == len(trips)
    assert str(frame.event_timestamp.dt.tz) == "UTC"
    _, expected = training_set(entity_source=str(rides.data / "trips"), drop_incomplete_rows=False)
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)


def test_sql_entity_rows(tmp_path, postgres_url):
    rides = rides_repo(tmp_path)
    import sqlalchemy

    trips = pd.read_parquet(rides.data / "trips")
    engine = sqlalchemy.create_engine(postgres_url)
    trips.to_sql("trips", engine, index=False)
    engine.dispose()
    url = sqlalchemy.engine.make_url(postgres_url)
    set_connection(
        "trips_db",
        conn_type="postgres",
        host=url.host,
        port=url.port,
        login=url.username,
        schema=url.database,
    )
    summary, _ = training_set(
        entity_source="SELECT * FROM trips WHERE completed IN (0, 1)",
        entity_conn_id="trips_db",
        start=(T0 + HOUR).isoformat(),
    )
    assert summary["rows"] == int((trips.event_timestamp >= T0 + HOUR).sum())


def test_bad_input_is_named(tmp_path):
    rides = rides_repo(tmp_path)
    with pytest.raises(
        MLPlatConfigError, match=r"unknown feature service 'trip_completion_v2'.*\['trip_completion_v1'\]"
    ):
        training_set(feature_service="trip_completion_v2", entity_source=str(rides.data / "trips"))
    pd.read_parquet(rides.data / "trips").drop(columns=["completed", "trip_distance_km"]).to_parquet(
        tmp_path / "t.parquet"
    )
    with pytest.raises(MLPlatConfigError, match=r"lack column\(s\) \['trip_distance_km', 'completed'\]"):
        training_set(entity_source=str(tmp_path / "t.parquet"))
    with pytest.raises(MLPlatConfigError, match="no data at"):
        training_set(entity_source=str(tmp_path / "nowhere.parquet"))
    with pytest.raises(MLPlatValidationFailed, match="no entity rows"):
        training_set(entity_source=str(rides.data / "trips"), start="2027-01-01T00:00:00+00:00")


def test_unlabelled_entity_rows_for_scoring(tmp_path):
    rides_repo(tmp_path)
    entities = pd.DataFrame(
        {"driver_id": [1001, 1002], "event_timestamp": [T0 + 2 * HOUR] * 2, "trip_distance_km": [6.0, 20.0]}
    )
    entities.to_parquet(tmp_path / "entities.parquet")
    summary, frame = training_set(entity_source=str(tmp_path / "entities.parquet"), label_column=None)
    assert summary["label"] is None and summary["rows"] == 2
    assert list(frame.columns) == ["driver_id", "event_timestamp", "trip_distance_km", *FEATURES]
    assert frame["is_long_trip"].tolist() == [0, 1]
