"""Artifact storage helpers write where `[mlplat] artifact_root` says, deterministically per task."""

from __future__ import annotations

from types import SimpleNamespace

from airflow_provider_mlplat.artifacts import artifact_root, read_json, task_artifact_dir, write_json


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
