"""Artifact storage: where operators put data and reports (local path or object storage URI)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


def artifact_root() -> ObjectStoragePath:
    """The ``[mlplat] artifact_root`` setting as a path (``file://`` when it is a local path)."""
    import os

    from airflow.configuration import conf
    from airflow.sdk import ObjectStoragePath

    root = conf.get("mlplat", "artifact_root", fallback="") or "{AIRFLOW_HOME}/mlplat-artifacts"
    root = root.replace("{AIRFLOW_HOME}", os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")))
    return ObjectStoragePath(root if "://" in root else f"file://{os.path.abspath(root)}")


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", part)


def task_artifact_dir(context: Any, *parts: str, task_id: str | None = None) -> ObjectStoragePath:
    """
    A deterministic folder for one task instance's artifacts: ``<root>/<dag>/<run>/<task>[/<map>]/...``
    (a retry writes to the same place, so it replaces rather than duplicates).

    :param context: the task's Airflow context.
    :param parts: sub-folders below the task's folder.
    :param task_id: the folder of another (unmapped) task of the same run instead, e.g. for a Ray
        job that task submits and that writes there itself.
    """
    ti = context["ti"]
    path = artifact_root() / _safe(ti.dag_id) / _safe(ti.run_id) / _safe(task_id or ti.task_id)
    if task_id is None and getattr(ti, "map_index", -1) >= 0:
        path = path / str(ti.map_index)
    for part in parts:
        path = path / _safe(part)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: ObjectStoragePath, data: Any) -> str:
    """
    Write JSON to artifact storage; return the URI.

    :param path: target file.
    :param data: JSON-able data.
    """
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return str(path)


def read_json(uri: str) -> Any:
    """
    Read a JSON artifact.

    :param uri: file URI, object storage URI or local path.
    """
    from airflow.sdk import ObjectStoragePath

    return json.loads(ObjectStoragePath(uri).read_text())


def _storage_path(uri: str) -> ObjectStoragePath:
    import os

    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(uri if "://" in uri else f"file://{os.path.abspath(uri)}")


def read_dataframe(uri: str) -> Any:
    """
    Read a parquet file or folder of parquet files, or a CSV file, into a pandas DataFrame.

    :param uri: file URI, object storage URI or local path (``.csv`` is read as CSV).
    """
    import pyarrow.dataset as ds

    from airflow_provider_mlplat.exceptions import MLPlatConfigError

    path = _storage_path(uri)
    if not path.exists():
        raise MLPlatConfigError(f"no data at {uri!r}: expected a parquet file or folder, or a .csv file")
    fmt = "csv" if path.suffix.lower() == ".csv" else "parquet"
    return ds.dataset(path.path, filesystem=path.fs, format=fmt).to_table().to_pandas()


def write_parquet(path: ObjectStoragePath, frame: Any) -> tuple[str, str]:
    """
    Write a DataFrame as parquet to artifact storage; return its URI and the SHA-256 (hex) of its bytes.

    :param path: target file.
    :param frame: pandas DataFrame.
    """
    import hashlib
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()
