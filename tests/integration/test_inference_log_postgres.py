"""The inference log in a real PostgreSQL: writer, reader, failures, and the drift operator reading it."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
import sqlalchemy

from airflow_provider_mlplat.inference_log import (
    RECORD_FIELDS,
    PostgresInferenceLogWriter,
    inference_log_writer,
    read_inference_log,
)
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.services import PASSWORD, with_password
from airflow_provider_mlplat.testing.services import postgres_admin as admin
from tests.drift_support import context, operator, register, serve

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 3, 10, tzinfo=UTC)


def records(count: int, deployment: str = "trips", first: int = 0) -> list[dict[str, Any]]:
    """Served rows one minute apart from T0 + ``first`` minutes; request ids ``<deployment>-<n>``."""
    return [
        {
            "timestamp": (T0 + timedelta(minutes=n)).isoformat(),
            "deployment": deployment,
            "model_name": "trip_completion",
            "model_version": str(1 + n % 2),
            "request_id": f"{deployment}-{n}",
            "status_code": 200,
            "prediction": n % 3,
            "features": {"conv_rate": n / 10, "avg_daily_trips": n, "city": f"c{n % 4}"},
        }
        for n in range(first, first + count)
    ]


def written(location: str, rows: list[dict[str, Any]]) -> None:
    writer = inference_log_writer(location)
    writer.append(rows)
    writer.close()


def test_roundtrip_reads_the_window_start_included_end_excluded(postgres_url):
    assert read_inference_log(postgres_url, "trips").columns.tolist() == list(RECORD_FIELDS)  # no table yet
    writer = inference_log_writer(postgres_url, flush_interval=0.05)
    assert isinstance(writer, PostgresInferenceLogWriter)
    writer.start()
    writer.append(records(10))
    writer.append(records(3, deployment="other"))
    writer.close()
    assert writer.written == 13

    frame = read_inference_log(postgres_url, "trips", T0 + timedelta(minutes=2), T0 + timedelta(minutes=5))
    assert frame["request_id"].tolist() == ["trips-2", "trips-3", "trips-4"]
    assert frame.columns.tolist() == ["conv_rate", "avg_daily_trips", "city", *RECORD_FIELDS]
    assert frame["timestamp"].tolist() == [pd.Timestamp(T0 + timedelta(minutes=n)) for n in (2, 3, 4)]
    assert str(frame["timestamp"].dtype) == "datetime64[us, UTC]"
    assert frame["model_version"].tolist() == ["1", "2", "1"]
    assert frame["prediction"].tolist() == [2, 0, 1]
    assert frame["conv_rate"].tolist() == [0.2, 0.3, 0.4]
    assert frame["city"].tolist() == ["c2", "c3", "c0"]
    assert len(read_inference_log(postgres_url, "trips")) == 10
    plain = postgres_url.replace("postgresql+psycopg2://", "postgresql://")  # psycopg2 too, not psycopg 3
    assert plain.startswith("postgresql://") and len(read_inference_log(plain, "trips")) == 10
    assert read_inference_log(postgres_url, "other")["request_id"].tolist() == [
        "other-0",
        "other-1",
        "other-2",
    ]
    assert read_inference_log(postgres_url, "trips", T0 + timedelta(hours=1)).empty


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param(records(20), id="uniform"),
        # a feature sent as a number, then as text: the files reader's per-line path
        pytest.param(
            [*records(2), {**records(1, first=2)[0], "features": {"conv_rate": "high"}}], id="mixed"
        ),
    ],
)
def test_same_dataframe_as_the_files_store(postgres_url, tmp_path, rows):
    written(postgres_url, rows)
    written(str(tmp_path), rows)
    window = (T0 + timedelta(minutes=1), T0 + timedelta(minutes=15))
    from_postgres = read_inference_log(postgres_url, "trips", *window)
    assert not from_postgres.empty
    pd.testing.assert_frame_equal(from_postgres, read_inference_log(tmp_path, "trips", *window))


def test_a_reader_sees_whole_batches_only_and_every_record_once(postgres_url):
    batches, size = 150, 40
    writer = inference_log_writer(postgres_url, flush_interval=0.01).start()

    def traffic() -> None:
        for batch in range(batches):
            writer.append([{**row, "request_id": f"{batch}:{n}"} for n, row in enumerate(records(size))])

    appending = threading.Thread(target=traffic)
    appending.start()
    reads = 0
    while appending.is_alive() or reads < 3:
        per_batch = Counter(
            rid.split(":")[0] for rid in read_inference_log(postgres_url, "trips")["request_id"]
        )
        assert set(per_batch.values()) <= {size}, "a read saw part of a batch"
        reads += 1
    appending.join()
    writer.close()

    served = read_inference_log(postgres_url, "trips")["request_id"]
    assert len(served) == batches * size and served.is_unique
    assert writer.written == batches * size


def test_a_flush_while_postgres_is_unavailable_keeps_the_records(postgres_url, caplog):
    name = sqlalchemy.make_url(postgres_url).database
    location = with_password(postgres_url)
    admin(f'DROP DATABASE "{name}" WITH (FORCE)')  # not there yet
    writer = inference_log_writer(location)
    writer.append(records(5))
    with caplog.at_level(logging.WARNING, logger="airflow_provider_mlplat.inference_log"):
        assert writer.flush() == 0
    warning = caplog.text
    assert "5 record(s) not written, kept for the next flush" in warning
    assert f"{name}" in warning and ":***@" in warning and PASSWORD not in warning

    admin(f'CREATE DATABASE "{name}"')
    writer.append(records(5, first=5))
    assert writer.flush() == 10
    # the database recreated under the running writer: the table is created again
    admin(f'DROP DATABASE "{name}" WITH (FORCE)')
    writer.append(records(2, first=10))
    assert writer.flush() == 0
    admin(f'CREATE DATABASE "{name}"')
    writer.close()
    assert writer.written == 12
    assert read_inference_log(location, "trips")["request_id"].tolist() == ["trips-10", "trips-11"]
    assert PASSWORD not in caplog.text


def test_the_drift_operator_reads_current_traffic_from_postgres(drift_env, postgres_url):
    location = with_password(postgres_url)
    set_connection(
        "kserve_drift_pg", conn_type="kserve", host="http://127.0.0.1:1", extra={"inference_log": location}
    )
    model = register(drift_env["training_set"], versions=2)
    serve(location, model, {"1": 250, "2": 50}, magnitude=1.0)  # nothing in the files log for this model
    summary = operator("drift_check", model, kserve_conn_id="kserve_drift_pg").execute(context("drift_check"))

    assert summary["rows_current"] == 300
    assert summary["versions_served"] == {"1": 250, "2": 50}
    assert summary["detected"] is True


def test_too_little_traffic_names_the_postgres_log_without_its_password(drift_env, postgres_url):
    from airflow.sdk.exceptions import AirflowSkipException

    location = with_password(postgres_url)
    set_connection(
        "kserve_drift_pg", conn_type="kserve", host="http://127.0.0.1:1", extra={"inference_log": location}
    )
    model = register(drift_env["training_set"])
    serve(location, model, {"1": 40})
    with pytest.raises(
        AirflowSkipException, match=r"40 served rows .* \(log postgresql\+psycopg2://postgres:\*\*\*@"
    ) as err:
        operator("drift_check", model, kserve_conn_id="kserve_drift_pg").execute(context("drift_check"))
    assert PASSWORD not in str(err.value)
