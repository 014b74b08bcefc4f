"""Test harness: isolated Airflow, real local services, DAG runner, Kubernetes emulator, CRD checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.services import (  # noqa: F401  (test modules import them from here)
    free_port,
    free_port_block,
    postgres_database,
    running_platform,
    s3_server,
)

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "tests" / "crds"  # the official schemas, vendored (see its README)
IN_CI = os.environ.get("CI", "").lower() == "true"

# An isolated Airflow for the whole test session, configured before anything imports airflow.
# Test modules also import this file as `tests.conftest`: the second import must reuse the home.
_AIRFLOW_HOME = Path(os.environ.get("MLPLAT_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="mlplat-airflow-"))
os.environ["MLPLAT_TEST_AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__FERNET_KEY": "",
        "AIRFLOW__API_AUTH__JWT_SECRET": "mlplat-tests-" + "x" * 64,
        "AIRFLOW__MLPLAT__ARTIFACT_ROOT": str(_AIRFLOW_HOME / "artifacts"),
    }
)


def unavailable(reason: str) -> None:
    """Skip a test whose service is missing, except under CI=true where that is a failure."""
    if IN_CI:
        pytest.fail(f"required service unavailable under CI=true: {reason}")
    pytest.skip(reason)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, not marked expected_skip: {reason.removeprefix('Skipped: ')}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Under CI=true a skip fails the test unless it is marked ``@pytest.mark.expected_skip(reason)``."""
    report = yield
    if (
        IN_CI
        and report.skipped
        and not hasattr(report, "wasxfail")
        and not item.get_closest_marker("expected_skip")
    ):
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    """Under CI=true a module skipped as a whole fails too (a marker cannot excuse it)."""
    report = yield
    if IN_CI and report.skipped:
        _fail_skip(report)
    return report


def set_connection(conn_id: str, **fields: Any) -> None:
    """Define an Airflow connection for this test session through the environment."""
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(fields)


# -- Airflow ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB (SQLite) for this session; returns AIRFLOW_HOME."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _AIRFLOW_HOME


@dataclass
class DagRunResult:
    """What a DAG run left: its state, each task instance's state, and return values."""

    state: str
    run_id: str
    run_after: datetime | None = None
    states: dict[str, str] = field(default_factory=dict)
    xcoms: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def run_dag(airflow_db):
    """
    Run a DAG from ``dags/`` to completion the Airflow 3.3 way (``dag.test()``, which serializes
    the DAG bundle first) and return a :class:`DagRunResult`. Mapped tasks appear as
    ``task_id[map_index]``.
    """

    def run(dag_id: str, conf: dict[str, Any] | None = None, logical_date=None) -> DagRunResult:
        from airflow.dag_processing.dagbag import DagBag
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert not bag.import_errors, bag.import_errors
        dag = bag.get_dag(dag_id)
        assert dag is not None, f"no DAG {dag_id!r} in dags/: {sorted(bag.dag_ids)}"
        kwargs = {"run_conf": conf} if conf else {}
        if logical_date is not None:
            kwargs["logical_date"] = logical_date
        dag_run = dag.test(**kwargs)

        def key(ti) -> str:
            return ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"

        with create_session() as session:
            tis = dag_run.get_task_instances(session=session)
            states = {key(ti): str(ti.state) for ti in tis}
            rows = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == dag_id,
                    XComModel.run_id == dag_run.run_id,
                    XComModel.key == "return_value",
                )
            ).all()
            xcoms = {key(row): XComModel.deserialize_value(row) for row in rows}
        return DagRunResult(
            state=str(dag_run.state),
            run_id=dag_run.run_id,
            run_after=dag_run.run_after,
            states=states,
            xcoms=xcoms,
        )

    return run


# -- the local platform's services ---------------------------------------------------------------


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend) run by the platform; sets ``mlflow_default``."""
    with running_platform(tmp_path_factory.mktemp("mlplat-mlflow"), ("mlflow",)) as platform:
        uri = f"http://127.0.0.1:{platform.settings.mlflow_port}"
        set_connection("mlflow_default", conn_type="mlflow", host=uri)
        yield uri


@dataclass(frozen=True)
class RayCluster:
    """A running local Ray head."""

    address: str
    token: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real local Ray head (dashboard + Job API, token auth) run by the platform; sets ``ray_default``."""
    with running_platform(tmp_path_factory.mktemp("mlplat-ray"), ("ray",)) as platform:
        address = f"http://127.0.0.1:{platform.settings.ray_dashboard_port}"
        token = platform.secrets()["ray_auth_token"]
        set_connection("ray_default", conn_type="ray", host=address, password=token)
        yield RayCluster(address=address, token=token, env=platform.ray_env())


@pytest.fixture
def postgres_db_factory():
    """Make fresh, empty databases on the machine's PostgreSQL (127.0.0.1:5432); dropped afterwards."""
    import sqlalchemy

    with ExitStack() as stack:

        def make() -> str:
            try:
                return stack.enter_context(postgres_database())
            except sqlalchemy.exc.OperationalError as err:
                unavailable(f"PostgreSQL is not reachable: {err.orig}")

        yield make


@pytest.fixture
def postgres_url(postgres_db_factory) -> str:
    """A fresh, empty database on the machine's PostgreSQL, dropped afterwards."""
    return postgres_db_factory()


@pytest.fixture
def redis_url():
    """The machine's Redis (127.0.0.1:6379), database 15, emptied before and after the test."""
    import redis

    url = os.environ.get("MLPLAT_TEST_REDIS", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as err:
        unavailable(f"Redis at {url} is not reachable: {err}")
    yield url
    client.flushdb()
    client.close()


#: the aws connection of the S3 server, which ``[mlplat] artifact_conn_id`` names in the S3 tests
S3_CONN_ID = "mlplat_s3"


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    """
    An S3-compatible server (moto's, IAM authentication on) with a bucket and the credentials it
    generated; sets the aws connection :data:`S3_CONN_ID` (endpoint_url in its extra).
    """
    import importlib.util

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


# -- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture
def k8s(tmp_path):
    """
    A Kubernetes API emulator with the KubeRay and KServe CRDs registered, and an Airflow
    ``kubernetes_default`` connection pointing at it (namespace ``default``).
    """
    from tests.k8s_emulator import K8sEmulator

    with K8sEmulator() as emulator:
        emulator.register("ray.io", "v1", "rayjobs", "RayJob")
        emulator.register("ray.io", "v1", "rayclusters", "RayCluster")
        emulator.register("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
        config = emulator.kubeconfig(tmp_path / "kubeconfig")
        set_connection(
            "kubernetes_default",
            conn_type="kubernetes",
            extra={"kube_config_path": str(config), "namespace": "default"},
        )
        yield emulator


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    import yaml

    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # the C loader: these files are 86k lines
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.fixture(scope="session")
def validate_manifest():
    """
    Validate a manifest against the official CRD schema of its apiVersion/kind in
    ``tests/crds/``; raises ``jsonschema.ValidationError`` naming the bad field.
    """
    import jsonschema

    validators = {key: jsonschema.Draft7Validator(schema) for key, schema in _crd_schemas().items()}

    def validate(manifest: dict[str, Any]) -> None:
        key = (manifest.get("apiVersion"), manifest.get("kind"))
        assert key in validators, f"no CRD for {key}; known: {sorted(validators)}"
        validators[key].validate(manifest)

    return validate
