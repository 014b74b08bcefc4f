"""Artifact storage: where operators put data and reports (local path or object storage URI)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: the schemes of Airflow's S3 filesystem (the amazon provider), which the ``s3`` extra installs
S3_SCHEMES = ("s3", "s3a", "s3n")
_LOCAL = ("file", "local")


def storage_path(uri: str) -> ObjectStoragePath:
    """
    A local path or URI as an :class:`~airflow.sdk.ObjectStoragePath`; an object storage URI that
    names no connection (``s3://bucket/key``, not ``s3://conn_id@bucket/key``) uses the connection
    ``[mlplat] artifact_conn_id`` names (none: the SDK's default credentials).

    :param uri: local path, ``file://`` URI or object storage URI.
    """
    import os

    from airflow.configuration import conf
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import has_fs

    from airflow_provider_mlplat.exceptions import MLPlatConfigError
    from airflow_provider_mlplat.extras import require_extra

    if "://" not in uri:
        return ObjectStoragePath(f"file://{os.path.abspath(uri)}")
    parts = urlsplit(uri)
    if parts.scheme in S3_SCHEMES:
        require_extra("s3", f"artifact storage at {uri}")
    elif parts.scheme not in _LOCAL and not has_fs(parts.scheme):
        raise MLPlatConfigError(
            f"no filesystem for {parts.scheme}:// (in {uri!r}): use a local path, file://, or s3:// "
            f"(pip install 'airflow-provider-mlplat[s3]'), or install the Airflow provider of that scheme"
        )
    if parts.scheme in _LOCAL or "@" in parts.netloc:
        return ObjectStoragePath(uri)
    return ObjectStoragePath(uri, conn_id=conf.get("mlplat", "artifact_conn_id", fallback="") or None)


def artifact_uri(path: ObjectStoragePath) -> str:
    """
    The URI to hand on (XCom, tags, links): ``str(path)`` without the connection id that
    ObjectStoragePath puts in the user part (``s3://conn_id@bucket/key`` -> ``s3://bucket/key``).

    :param path: an artifact path.
    """
    parts = urlsplit(str(path))
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def artifact_root() -> ObjectStoragePath:
    """The ``[mlplat] artifact_root`` setting as a path (``file://`` when it is a local path)."""
    import os

    from airflow.configuration import conf

    root = conf.get("mlplat", "artifact_root", fallback="") or "{AIRFLOW_HOME}/mlplat-artifacts"
    return storage_path(
        root.replace("{AIRFLOW_HOME}", os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")))
    )


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
    if path.protocol in _LOCAL:  # object stores have no folders (and a mkdir could create a bucket)
        path.mkdir(parents=True, exist_ok=True)
    return path


def write(path: ObjectStoragePath, data: bytes | str) -> str:
    """
    Write a file to artifact storage (text as UTF-8; a local folder is created); return its URI.

    :param path: target file.
    :param data: its content.
    """
    from airflow_provider_mlplat.exceptions import MLPlatConfigError

    if path.protocol in _LOCAL:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    except FileNotFoundError as err:  # object stores: the bucket (keys need no folders)
        raise MLPlatConfigError(
            f"cannot write {artifact_uri(path)}: {err}; [mlplat] artifact_root must name an existing "
            f"bucket or folder"
        ) from err
    return artifact_uri(path)


def write_json(path: ObjectStoragePath, data: Any) -> str:
    """
    Write JSON to artifact storage; return the URI.

    :param path: target file.
    :param data: JSON-able data.
    """
    return write(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def read_json(uri: str) -> Any:
    """
    Read a JSON artifact.

    :param uri: file URI, object storage URI or local path.
    """
    return json.loads(storage_path(uri).read_text())


def read_dataframe(uri: str) -> Any:
    """
    Read a parquet file or folder of parquet files, or a CSV file, into a pandas DataFrame.

    :param uri: file URI, object storage URI or local path (``.csv`` is read as CSV).
    """
    import pyarrow.dataset as ds

    from airflow_provider_mlplat.exceptions import MLPlatConfigError

    path = storage_path(uri)
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
    return write(path, data), hashlib.sha256(data).hexdigest()
