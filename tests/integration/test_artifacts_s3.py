"""Artifact storage on an S3-compatible server: every helper through ObjectStoragePath and the aws connection."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from airflow_provider_mlplat.artifacts import (
    artifact_root,
    artifact_uri,
    read_dataframe,
    read_json,
    task_artifact_dir,
    write_json,
    write_parquet,
)
from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.kuberay import package_working_dir
from tests.conftest import S3_CONN_ID

pytestmark = pytest.mark.integration

TI = SimpleNamespace(dag_id="d", run_id="manual__2026-01-01T00:00:00+00:00", task_id="t", map_index=2)


def keys(s3_store, prefix: str) -> list[str]:
    """The bucket's keys under a prefix, read with boto3 (not through the code under test)."""
    listing = s3_store.client().list_objects_v2(Bucket=s3_store.bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def body(s3_store, key: str) -> bytes:
    return s3_store.client().get_object(Bucket=s3_store.bucket, Key=key)["Body"].read()


def test_helpers_write_and_read_objects_in_the_bucket(s3_store, s3_artifact_root, tmp_path):
    prefix = s3_artifact_root.removeprefix(f"s3://{s3_store.bucket}/")
    root = artifact_root()
    assert (root.protocol, root.conn_id) == ("s3", S3_CONN_ID)

    folder = task_artifact_dir({"ti": TI}, "report")
    assert folder == task_artifact_dir({"ti": TI}, "report")
    uri = write_json(folder / "summary.json", {"rows": 3})
    key = f"{prefix}/d/manual__2026-01-01T00_00_00_00_00/t/2/report/summary.json"
    assert uri == f"s3://{s3_store.bucket}/{key}"  # a plain URI: the connection is configuration
    assert json.loads(body(s3_store, key)) == {"rows": 3}
    assert read_json(uri) == {"rows": 3}

    parts = task_artifact_dir({"ti": TI}, "parts")
    frame = pd.DataFrame({"driver_id": [1, 2, 3], "conv_rate": [0.1, 0.5, 0.9]})
    uri, digest = write_parquet(parts / "part-0.parquet", frame)
    assert uri == artifact_uri(parts / "part-0.parquet") and uri.startswith(f"s3://{s3_store.bucket}/")
    assert digest == hashlib.sha256(body(s3_store, uri.removeprefix(f"s3://{s3_store.bucket}/"))).hexdigest()
    pd.testing.assert_frame_equal(read_dataframe(uri), frame)
    write_parquet(parts / "part-1.parquet", frame.assign(driver_id=[4, 5, 6]))
    as_folder = read_dataframe(artifact_uri(parts)).sort_values("driver_id", ignore_index=True)
    assert as_folder["driver_id"].tolist() == [1, 2, 3, 4, 5, 6]  # a folder of parquet files
    csv = folder / "rows.csv"
    csv.write_text("driver_id,conv_rate\n7,0.7\n")
    assert read_dataframe(artifact_uri(csv)).to_dict("records") == [{"driver_id": 7, "conv_rate": 0.7}]
    with pytest.raises(MLPlatConfigError, match=rf"no data at 's3://{s3_store.bucket}/{prefix}/nothing'"):
        read_dataframe(f"s3://{s3_store.bucket}/{prefix}/nothing")

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "train.py").write_text("print('hi')\n")
    zipped = package_working_dir(tmp_path / "job")
    assert zipped == package_working_dir(tmp_path / "job")  # content-addressed: uploaded once
    assert zipped.startswith(f"s3://{s3_store.bucket}/{prefix}/ray/working_dirs/job-")
    assert keys(s3_store, f"{prefix}/ray/") == [zipped.removeprefix(f"s3://{s3_store.bucket}/")]


def test_the_server_checks_the_connections_credentials_and_a_missing_bucket_is_not_created(
    s3_store, s3_artifact_root, monkeypatch
):
    uri = write_json(task_artifact_dir({"ti": TI}) / "record.json", {"ok": True})
    wrong = "wrong-" + s3_store.secret_access_key[6:]
    fields = {
        "login": s3_store.access_key_id,
        "password": wrong,
        "extra": {"endpoint_url": s3_store.endpoint_url},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MLPLAT_S3_WRONG", json.dumps({"conn_type": "aws", **fields}))
    with pytest.raises(PermissionError) as err:  # the URI's own connection wins over artifact_conn_id
        read_json(uri.replace("s3://", "s3://mlplat_s3_wrong@"))
    assert wrong not in str(err.value) and s3_store.secret_access_key not in str(err.value)

    monkeypatch.setenv("AIRFLOW__MLPLAT__ARTIFACT_ROOT", "s3://mlplat-no-such-bucket/runs")
    with pytest.raises(
        MLPlatConfigError,
        match=r"cannot write s3://mlplat-no-such-bucket/runs/d/.*/record.json: .*bucket does not exist.*must name an existing bucket",
    ):
        write_json(task_artifact_dir({"ti": TI}) / "record.json", {"ok": True})
    buckets = [b["Name"] for b in s3_store.client().list_buckets()["Buckets"]]
    assert buckets == [s3_store.bucket]
