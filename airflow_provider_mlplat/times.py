"""Times given as parameters: a datetime or ISO 8601 text, always read as an aware UTC datetime."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError


def as_utc(name: str, value: Any) -> datetime:
    """
    A parameter as an aware UTC datetime; it may be a datetime (naive = UTC) or ISO 8601 text.

    :param name: parameter name, for the error message.
    :param value: the value.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise MLPlatConfigError(
                f"{name}={value!r} is not a time: use ISO 8601, e.g. 2026-01-01T00:00:00+00:00"
            ) from None
    if not isinstance(value, datetime):
        raise MLPlatConfigError(f"{name}={value!r} is not a time: pass a datetime or ISO 8601 text")
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    # a plain datetime: pendulum's drops a foreign tzinfo in arithmetic
    return datetime(*value.timetuple()[:6], value.microsecond, tzinfo=UTC)
