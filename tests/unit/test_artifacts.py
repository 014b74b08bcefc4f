"""Artifact storage helpers write where `[mlplat] artifact_root` says, deterministically per task."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from airflow_provider_mlplat import extras
from airflow_provider_mlplat.artifacts import (
    artifact_root,
    artifact_uri,
    read_json,
    storage_path,
    task_artifact_dir,
    write_json,
)
from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatMissingExtra


def test_task_folder_is_deterministic_and_under_the_configured_root(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__MLPLAT__ARTIFACT_ROOT", str(tmp_path / "art"))
    assert str(artifact_root()) == f"file://{tmp_path}/art"
    ti = SimpleNamespace(dag_id="d", run_id="manual__2026-01-01T00:00:00+00:00", task_id="t", map_index=2)
    first = task_artifact_dir({"ti": ti}, "report")
    again = task_artifact_dir({"ti": ti}, "report")
    assert first == again
    assert str(first) == f"file://{tmp_path}/art/d/manual__2026-01-01T00_00_00_00_00/t/2/report"
    uri = write_json(first / "summary.json", {"rows": 3})
    assert read_json(uri) == {"rows": 3}
    assert (tmp_path / "art/d/manual__2026-01-01T00_00_00_00_00/t/2/report/summary.json").is_file()


def test_folder_of_another_task_of_the_same_run(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW__MLPLAT__ARTIFACT_ROOT", str(tmp_path / "art"))
    ti = SimpleNamespace(dag_id="d", run_id="scheduled__2026-01-02", task_id="plan", map_index=3)
    folder = task_artifact_dir({"ti": ti}, "out", task_id="score")
    assert str(folder) == f"file://{tmp_path}/art/d/scheduled__2026-01-02/score/out"  # no map index
    assert folder == task_artifact_dir(
        {"ti": SimpleNamespace(**{**vars(ti), "task_id": "score", "map_index": -1})}, "out"
    )


def _aws_connection(monkeypatch, conn_id: str) -> None:
    # static keys: no credential lookup leaves the process (no instance metadata probe)
    fields = {"conn_type": "aws", "login": "AKIDUNIT", "password": "unit-secret", "extra": {}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_object_storage_uris_take_the_configured_connection_unless_they_name_one(monkeypatch, tmp_path):
    _aws_connection(monkeypatch, "art")
    _aws_connection(monkeypatch, "other")
    monkeypatch.setenv("AIRFLOW__MLPLAT__ARTIFACT_ROOT", "s3://bucket/pre")
    monkeypatch.setenv("AIRFLOW__MLPLAT__ARTIFACT_CONN_ID", "art")
    root = artifact_root()
    assert (root.protocol, root.conn_id, str(root)) == ("s3", "art", "s3://art@bucket/pre")
    assert artifact_uri(root / "x.json") == "s3://bucket/pre/x.json"  # handed on without the connection
    assert storage_path("s3://bucket/pre/x.json").conn_id == "art"
    assert storage_path("s3://other@bucket/pre/x.json").conn_id == "other"
    assert storage_path(str(tmp_path / "x.json")) == storage_path(f"file://{tmp_path}/x.json")
    assert storage_path("x.json").conn_id is None
    monkeypatch.delenv("AIRFLOW__MLPLAT__ARTIFACT_CONN_ID")
    assert storage_path("s3://bucket/x.json").conn_id is None  # the SDK's default credentials


def test_a_scheme_without_filesystem_or_extra_fails_naming_it(monkeypatch):
    monkeypatch.setenv("AIRFLOW__MLPLAT__ARTIFACT_ROOT", "nosuch://bucket/pre")
    with pytest.raises(
        MLPlatConfigError, match=r"no filesystem for nosuch:// \(in 'nosuch://bucket/pre'\): .*s3://"
    ):
        artifact_root()
    monkeypatch.setitem(extras.EXTRA_MODULES, "s3", ("mlplat_no_such_module",))
    with pytest.raises(MLPlatMissingExtra, match=r"s3://b/k needs mlplat_no_such_module.*\[s3\]'"):
        storage_path("s3://b/k")
