"""GXValidateOperator: real Great Expectations on the reference raw data and suites."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_mlplat.artifacts import read_json
from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatValidationFailed
from airflow_provider_mlplat.operators.gx import GXValidateOperator
from include import datagen
from tests.feast_support import GX_DIR, T0, json_roundtrip, task_context

pytestmark = pytest.mark.integration


@pytest.fixture
def raw_file(tmp_path):
    datagen.generate(tmp_path, T0, T0.replace(hour=1), drivers=30)
    return datagen.partition_path(tmp_path, "driver_hourly_stats", T0)


def validate(data_path, suite="driver_hourly_stats", **kwargs):
    op = GXValidateOperator(
        task_id="validate", data_path=str(data_path), suite_path=str(GX_DIR / f"{suite}.json"), **kwargs
    )
    return json_roundtrip(op.execute(task_context("validate")))


def test_valid_raw_data_passes_and_the_full_result_is_stored(raw_file):
    summary = validate(raw_file)
    assert summary["success"] is True and summary["failed"] == []
    assert summary["rows"] == 30 and summary["suite"] == "driver_hourly_stats_raw"
    suite = json.loads((GX_DIR / "driver_hourly_stats.json").read_text())
    assert summary["evaluated"] == len(suite["expectations"])
    full = read_json(summary["result_uri"])
    assert full["success"] is True and len(full["results"]) == len(suite["expectations"])


def test_failed_expectations_are_named_with_observed_values(raw_file):
    table = pq.read_table(raw_file).to_pandas()
    table.loc[[0, 1], "conv_rate"] = [1.7, -0.2]
    table["avg_daily_trips"] = table["avg_daily_trips"].astype(str)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), raw_file)
    with pytest.raises(MLPlatValidationFailed) as err:
        validate(raw_file)
    message = str(err.value)
    assert "expectation(s) of suite 'driver_hourly_stats_raw' failed" in message
    assert "expect_column_values_to_be_between(conv_rate, min_value=0" in message
    assert "2 unexpected (6.67%), e.g. [1.7, -0.2]" in message
    assert "expect_column_values_to_be_of_type(avg_daily_trips, type_='int64'): 30 unexpected" in message
    assert "full result: file://" in message


def test_warn_only_returns_the_failures_instead_of_failing(raw_file):
    pq.write_table(pq.read_table(raw_file).drop_columns(["cancel_rate"]), raw_file)
    summary = validate(raw_file, warn_only=True)
    assert summary["success"] is False
    failed = {(f["expectation"], f["column"]) for f in summary["failed"]}
    assert ("expect_column_values_to_not_be_null", "cancel_rate") in failed
    assert ("expect_table_columns_to_match_set", None) in failed
    match = next(f for f in summary["failed"] if f["expectation"] == "expect_table_columns_to_match_set")
    assert "cancel_rate" not in match["observed_value"]
    assert read_json(summary["result_uri"])["success"] is False


def test_csv_data_and_an_empty_hour(tmp_path, raw_file):
    pq.read_table(raw_file).to_pandas().to_csv(tmp_path / "stats.csv", index=False)
    assert validate(tmp_path / "stats.csv")["success"] is True
    empty_profile = datagen.partition_path(raw_file.parents[1], "driver_profile", T0.replace(hour=5))
    datagen.generate(raw_file.parents[1], T0.replace(hour=5), T0.replace(hour=6), drivers=30)
    assert validate(empty_profile, suite="driver_profile")["rows"] == 0


def test_bad_suites_and_paths_are_named(tmp_path, raw_file):
    suite = tmp_path / "suite.json"
    suite.write_text(
        json.dumps(
            {
                "name": "s",
                "expectations": [
                    {"type": "expect_column_values_to_be_between", "kwargs": {"colum": "x", "min_value": 0}}
                ],
            }
        )
    )
    op = GXValidateOperator(task_id="validate", data_path=str(raw_file), suite_path=str(suite))
    with pytest.raises(
        MLPlatConfigError, match=r"(?s)expectation #0 .* is invalid:.*column\s+field required"
    ):
        op.execute(task_context("validate"))
    suite.write_text("[]")
    with pytest.raises(MLPlatConfigError, match="must be a JSON object with 'name'"):
        op.execute(task_context("validate"))
    op = GXValidateOperator(
        task_id="validate",
        data_path=str(tmp_path / "none.parquet"),
        suite_path=str(GX_DIR / "driver_hourly_stats.json"),
    )
    with pytest.raises(MLPlatConfigError, match="no data at"):
        op.execute(task_context("validate"))
