"""Results of succeeded Ray jobs, kept in artifact storage so a retry reads them after the cluster is gone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.artifacts import artifact_root, write_json

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_mlplat.hooks.ray import RayJobState


def result_path(job_id: str) -> ObjectStoragePath:
    """
    Where the result of a job is kept: ``<artifact_root>/ray/results/<job id>.json``.

    :param job_id: submission id (the RayJob name on KubeRay).
    """
    return artifact_root() / "ray" / "results" / f"{job_id}.json"


def save_result(state: RayJobState, result: Any) -> str:
    """
    Keep a succeeded job's result with the start time of the run that produced it; return the URI.

    :param state: the job's final state (``created_at``: when this run of the job started).
    :param result: the JSON result the job printed (None: it printed none).
    """
    path = result_path(state.job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, {"job_id": state.job_id, "started_at": state.created_at, "result": result})


def saved_result(state: RayJobState) -> tuple[bool, Any]:
    """
    The result saved for this very run of the job: ``(True, result)``, or ``(False, None)`` when
    none was saved or the saved one belongs to an earlier job that had the same id.

    :param state: the job's state (its ``created_at`` must match the saved start time).
    """
    import json

    path = result_path(state.job_id)
    if not path.exists():
        return False, None
    record = json.loads(path.read_text())
    if record.get("started_at") != state.created_at:
        return False, None
    return True, record.get("result")
