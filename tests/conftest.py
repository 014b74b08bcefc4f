"""This project's test settings; the harness is the provider's pytest plugin (airflow_provider_mlplat.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s_audit import audit_last, record

pytest_plugins = ["pytester"]  # tests/integration/test_testing_plugin.py runs a team's test session
REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run without the mlplat plugin (the provider's ``pytest11`` entry point)."""
    if not config.pluginmanager.has_plugin("mlplat"):
        raise pytest.UsageError("the mlplat pytest plugin is not loaded: run `uv sync`, or pass -p mlplat")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The RBAC audit runs last: it checks what all the other tests asked of the emulator."""
    audit_last(items)


@pytest.fixture
def k8s(k8s, request):
    """The plugin's emulator; what the provider asked of it is kept for the RBAC audit."""
    yield k8s
    record(request.node.nodeid, k8s)


#: the aws connection of the S3 server, which ``[mlplat] artifact_conn_id`` names in the S3 tests
S3_CONN_ID = "mlplat_s3"


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    """
    An S3-compatible server (moto's, IAM authentication on) with a bucket and the credentials it
    generated; sets the aws connection :data:`S3_CONN_ID` (endpoint_url in its extra).
    """
    import importlib.util

    from airflow_provider_mlplat.testing.airflow import set_connection
    from airflow_provider_mlplat.testing.ci import unavailable
    from airflow_provider_mlplat.testing.services import s3_server

    if importlib.util.find_spec("moto") is None:
        unavailable("moto[server] is not installed (a dev dependency: uv sync)")
    with s3_server(tmp_path_factory.mktemp("s3")) as store:
        set_connection(
            S3_CONN_ID,
            conn_type="aws",
            login=store.access_key_id,
            password=store.secret_access_key,
            extra={"endpoint_url": store.endpoint_url, "region_name": "us-east-1"},
        )
        yield store


@pytest.fixture
def s3_artifact_root(s3_store, monkeypatch) -> str:
    """``[mlplat] artifact_root`` on a fresh prefix of the S3 bucket, through the :data:`S3_CONN_ID` connection."""
    import uuid

    root = f"s3://{s3_store.bucket}/{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AIRFLOW__MLPLAT__ARTIFACT_ROOT", root)
    monkeypatch.setenv("AIRFLOW__MLPLAT__ARTIFACT_CONN_ID", S3_CONN_ID)
    return root
