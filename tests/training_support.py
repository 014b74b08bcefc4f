"""A synthetic training set with the columns of the feature service, for tests that need a model fast."""

from __future__ import annotations

import numpy as np
import pandas as pd

# the feature repo's training set (feature service trip_completion_v1), in its column order
FEATURES = [
    "trip_distance_km",
    "conv_rate",
    "acc_rate",
    "avg_daily_trips",
    "avg_speed_kmh",
    "cancel_rate",
    "rating",
    "tenure_days",
    "expected_trip_minutes",
    "is_long_trip",
]


def synthetic_trips(rows: int = 3000, seed: int = 7) -> pd.DataFrame:
    """Labelled trips as the Feast training-set step writes them: ids, UTC timestamps, features, label."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "driver_id": rng.integers(1001, 1101, rows).astype("int64"),
            "event_timestamp": start + pd.to_timedelta(rng.uniform(0, 30 * 86400, rows), unit="s"),
            "trip_distance_km": rng.gamma(2.0, 3.0, rows),
            "conv_rate": rng.uniform(0, 1, rows),
            "acc_rate": rng.uniform(0.5, 1, rows),
            "avg_daily_trips": rng.integers(0, 40, rows).astype("int64"),
            "avg_speed_kmh": rng.normal(32, 6, rows),
            "cancel_rate": rng.beta(2, 10, rows),
            "rating": rng.normal(4.6, 0.2, rows),
            "tenure_days": rng.integers(1, 2000, rows).astype("int64"),
        }
    )
    frame["expected_trip_minutes"] = frame.trip_distance_km / frame.avg_speed_kmh * 60
    frame["is_long_trip"] = (frame.trip_distance_km > 10).astype("int64")
    logit = (
        2.5 * frame.conv_rate
        + 2.0 * (frame.acc_rate - 0.75)
        - 6 * frame.cancel_rate
        - 0.08 * frame.trip_distance_km
        + 0.8
    )
    frame["completed"] = (rng.uniform(0, 1, rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    return frame
