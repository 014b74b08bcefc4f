"""Feature definitions of the ride-hailing "trip completion" use case (Feast project ``rides``)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

# Raw data: one folder per source, one parquet file per hour (include/datagen.py writes them).
# FeastHook exposes its connection's `data_dir` here while it loads the repo.
DATA_DIR = Path(os.environ.get("MLPLAT_FEAST_DATA_DIR") or Path(__file__).parent / "data").resolve()

driver = Entity(
    name="driver",
    join_keys=["driver_id"],
    value_type=ValueType.INT64,
    description="A driver of the ride-hailing fleet",
)

driver_hourly_stats_source = FileSource(
    name="driver_hourly_stats_source",
    path=str(DATA_DIR / "driver_hourly_stats"),
    timestamp_field="event_timestamp",
    description="Hourly aggregates of each driver's activity",
)

driver_profile_source = FileSource(
    name="driver_profile_source",
    path=str(DATA_DIR / "driver_profile"),
    timestamp_field="event_timestamp",
    description="Daily snapshot of each driver's profile",
)

driver_hourly_stats = FeatureView(
    name="driver_hourly_stats",
    entities=[driver],
    ttl=timedelta(hours=3),
    schema=[
        Field(name="conv_rate", dtype=Float64, description="share of offers converted to trips"),
        Field(name="acc_rate", dtype=Float64, description="share of offers accepted"),
        Field(name="avg_daily_trips", dtype=Int64, description="trips per day, trailing average"),
        Field(name="avg_speed_kmh", dtype=Float64, description="average speed in the last hour"),
        Field(name="cancel_rate", dtype=Float64, description="share of accepted trips cancelled"),
    ],
    online=True,
    source=driver_hourly_stats_source,
    tags={"team": "marketplace"},
)

driver_profile = FeatureView(
    name="driver_profile",
    entities=[driver],
    ttl=timedelta(days=2),
    schema=[
        Field(name="rating", dtype=Float64, description="average rider rating (1-5)"),
        Field(name="tenure_days", dtype=Int64, description="days since the driver joined"),
    ],
    online=True,
    source=driver_profile_source,
    tags={"team": "marketplace"},
)

trip_request = RequestSource(
    name="trip_request",
    schema=[Field(name="trip_distance_km", dtype=Float64)],
    description="Known when the trip is requested",
)


@on_demand_feature_view(
    sources=[driver_hourly_stats, trip_request],
    schema=[
        Field(name="expected_trip_minutes", dtype=Float64),
        Field(name="is_long_trip", dtype=Int64),
    ],
    mode="pandas",
)
def trip_request_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """Features of the requested trip combined with the driver's current speed."""
    out = pd.DataFrame()
    out["expected_trip_minutes"] = inputs["trip_distance_km"] / inputs["avg_speed_kmh"].clip(lower=5) * 60
    out["is_long_trip"] = (inputs["trip_distance_km"] > 15).astype("int64")
    return out


trip_completion_v1 = FeatureService(
    name="trip_completion_v1",
    features=[driver_hourly_stats, driver_profile, trip_request_features],
    description="Features of the trip_completion model, version 1",
)
