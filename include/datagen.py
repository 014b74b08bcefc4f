"""Deterministic raw data for the ride-hailing use case: driver stats, driver profiles and trips."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: one folder per raw source under the data dir; one parquet file per hour in each
SOURCES = ("driver_hourly_stats", "driver_profile", "trips")
FIRST_DRIVER_ID = 1001
HOUR = timedelta(hours=1)

_TS = pa.timestamp("us", tz="UTC")
SCHEMAS: dict[str, pa.Schema] = {
    "driver_hourly_stats": pa.schema(
        [
            ("driver_id", pa.int64()),
            ("event_timestamp", _TS),
            ("conv_rate", pa.float64()),
            ("acc_rate", pa.float64()),
            ("avg_daily_trips", pa.int64()),
            ("avg_speed_kmh", pa.float64()),
            ("cancel_rate", pa.float64()),
        ]
    ),
    "driver_profile": pa.schema(
        [
            ("driver_id", pa.int64()),
            ("event_timestamp", _TS),
            ("rating", pa.float64()),
            ("tenure_days", pa.int64()),
        ]
    ),
    "trips": pa.schema(
        [
            ("driver_id", pa.int64()),
            ("event_timestamp", _TS),
            ("trip_distance_km", pa.float64()),
            ("completed", pa.int64()),
        ]
    ),
}


@dataclass(frozen=True)
class Shift:
    """
    A distribution shift applied from a point in time on (for drift tests).

    :param magnitude: 0 = none, 1 = strong (slower traffic, more cancellations, longer trips, and
        long trips are completed less often: the label's relation to distance changes too).
    :param start: first hour that is shifted (UTC).
    """

    magnitude: float = 0.0
    start: datetime = datetime(1970, 1, 1, tzinfo=UTC)


def hours(start: datetime, end: datetime) -> Iterator[datetime]:
    """
    The UTC hours whose start lies in ``[start, end)``, each truncated to the hour.

    :param start: window start (aware or UTC).
    :param end: window end, exclusive.
    """
    hour = _utc(start).replace(minute=0, second=0, microsecond=0)
    if hour < _utc(start):
        hour += HOUR
    while hour < _utc(end):
        yield hour
        hour += HOUR


def partition_path(data_dir: str | Path, source: str, hour: datetime) -> Path:
    """
    The file holding one hour of a source: ``<data_dir>/<source>/<YYYYmmddTHH>.parquet``.

    :param data_dir: root of the raw data.
    :param source: one of :data:`SOURCES`.
    :param hour: the hour (UTC).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    return Path(data_dir) / source / f"{_utc(hour):%Y%m%dT%H}.parquet"


def generate_hour(
    hour: datetime, drivers: int = 100, seed: int = 42, shift: Shift | None = None
) -> dict[str, pa.Table]:
    """
    One hour of every source; the same arguments always give the same rows.

    :param hour: the hour (UTC, truncated).
    :param drivers: number of drivers (ids from 1001); every driver reports stats every hour.
    :param seed: random seed.
    :param shift: distribution shift, applied when ``hour >= shift.start``.
    """
    hour = _utc(hour).replace(minute=0, second=0, microsecond=0)
    hour_index = int(hour.timestamp()) // 3600
    skill = np.random.default_rng([seed, 0]).standard_normal(drivers)
    rng = np.random.default_rng([seed, 1, hour_index])
    magnitude = shift.magnitude if shift and hour >= _utc(shift.start) else 0.0
    ids = np.arange(FIRST_DRIVER_ID, FIRST_DRIVER_ID + drivers, dtype=np.int64)
    start_us = int(hour.timestamp()) * 1_000_000

    def stamps(n: int) -> np.ndarray:
        return start_us + rng.integers(0, 3_600_000_000, n)

    rush = 1.0 - 0.25 * (hour.hour in (7, 8, 9, 17, 18, 19))
    conv = _sigmoid(0.6 * skill + 0.3 * rng.standard_normal(drivers)) - 0.15 * magnitude
    stats = {
        "driver_id": ids,
        "event_timestamp": stamps(drivers),
        "conv_rate": np.clip(conv, 0, 1),
        "acc_rate": _sigmoid(1.2 + 0.5 * skill + 0.3 * rng.standard_normal(drivers)),
        "avg_daily_trips": rng.poisson(np.clip(18 + 5 * skill, 1, None)).astype(np.int64),
        "avg_speed_kmh": np.clip(
            (32 + 4 * skill + 3 * rng.standard_normal(drivers)) * rush * (1 - 0.3 * magnitude), 5, None
        ),
        "cancel_rate": np.clip(
            _sigmoid(-2.2 - 0.5 * skill + 0.3 * rng.standard_normal(drivers)) + 0.1 * magnitude, 0, 1
        ),
    }
    rating = np.clip(4.6 + 0.2 * skill + 0.05 * rng.standard_normal(drivers), 1, 5)
    tenure = (200 + 150 * np.abs(skill) + (hour_index // 24) % 365).astype(np.int64)
    daily = hour.hour == 0  # profiles are a daily snapshot, written in the first hour of the day
    profile = {
        "driver_id": ids if daily else ids[:0],
        "event_timestamp": stamps(drivers) if daily else np.zeros(0, dtype=np.int64),
        "rating": rating if daily else rating[:0],
        "tenure_days": tenure if daily else tenure[:0],
    }
    n_trips = max(1, drivers // 2)
    who = rng.integers(0, drivers, n_trips)
    distance = rng.lognormal(1.8, 0.6, n_trips) * (1 + 0.5 * magnitude)
    logit = (
        0.9
        + 8.0 * (stats["conv_rate"][who] - 0.5)
        - 10.0 * (stats["cancel_rate"][who] - 0.12)
        + 3.0 * (rating[who] - 4.6)
        - (0.15 + 0.3 * magnitude) * (distance - 6)
        + 0.02 * (stats["avg_speed_kmh"][who] - 30)
    )
    trips = {
        "driver_id": ids[who],
        "event_timestamp": stamps(n_trips),
        "trip_distance_km": distance,
        "completed": (rng.random(n_trips) < _sigmoid(logit)).astype(np.int64),
    }
    return {
        name: pa.table(
            {f.name: pa.array(cols[f.name], type=f.type) for f in SCHEMAS[name]}, schema=SCHEMAS[name]
        )
        for name, cols in (("driver_hourly_stats", stats), ("driver_profile", profile), ("trips", trips))
    }


def generate(
    data_dir: str | Path,
    start: datetime,
    end: datetime,
    drivers: int = 100,
    seed: int = 42,
    shift: Shift | None = None,
) -> list[Path]:
    """
    Write every source for the hours in ``[start, end)``, one file per source and hour (an existing
    file is replaced by identical content). Returns the files written.

    :param data_dir: root of the raw data.
    :param start: first hour (UTC).
    :param end: end of the range, exclusive.
    :param drivers: number of drivers.
    :param seed: random seed.
    :param shift: optional distribution shift.
    """
    written = []
    for hour in hours(start, end):
        for source, table in generate_hour(hour, drivers, seed, shift).items():
            path = partition_path(data_dir, source, hour)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            pq.write_table(table, tmp)
            tmp.replace(path)  # readers never see a half-written file
            written.append(path)
    return written


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python include/datagen.py --data-dir DIR --start 2026-01-01T00 --end 2026-01-02T00``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--start", required=True, type=datetime.fromisoformat, help="UTC, e.g. 2026-01-01T00")
    parser.add_argument("--end", required=True, type=datetime.fromisoformat, help="UTC, exclusive")
    parser.add_argument("--drivers", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--shift", type=float, default=0.0, help="distribution shift magnitude (0-1)")
    parser.add_argument("--shift-start", type=datetime.fromisoformat, help="first shifted hour (UTC)")
    args = parser.parse_args(argv)
    shift = Shift(args.shift, args.shift_start or args.start) if args.shift else None
    files = generate(args.data_dir, args.start, args.end, args.drivers, args.seed, shift)
    print(f"wrote {len(files)} files under {args.data_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
