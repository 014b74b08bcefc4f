"""Hooks: lazy connections, the extras allowlist, scoped credentials, connection overrides."""

from __future__ import annotations

import os
import textwrap

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.base import scoped_env
from airflow_provider_mlplat.hooks.feast import FeastHook
from airflow_provider_mlplat.hooks.kserve import KServeHook
from airflow_provider_mlplat.hooks.mlflow import MLflowHook
from airflow_provider_mlplat.hooks.prometheus import PrometheusHook
from airflow_provider_mlplat.hooks.ray import RayHook
from tests.conftest import set_connection
from tests.services import free_port


def test_constructing_a_hook_does_no_io():
    hook = MLflowHook("connection_that_does_not_exist")
    assert hook.conn_id == "connection_that_does_not_exist"
    assert "connection" not in hook.__dict__  # fetched lazily, on first use


def test_only_declared_extras_can_be_read():
    set_connection("kserve_extras", conn_type="kserve", extra={"namespace": "ml"})
    hook = KServeHook("kserve_extras")
    assert hook.extra("namespace") == "ml"
    with pytest.raises(KeyError, match="'token' is not an extra of kserve connections"):
        hook.extra("token")


@pytest.mark.parametrize(
    ("hook_class", "conn_type", "extra", "message"),
    [
        (FeastHook, "feast", {"repo_path": "/r", "onlne_store": "{}"},
         "connection 'typo' (feast): unknown extra 'onlne_store'; did you mean 'online_store'? known extras: "
         "repo_path, online_store, "),
        (KServeHook, "kserve", {"namespce": "ml"}, "unknown extra 'namespce'; did you mean 'namespace'?"),
        (MLflowHook, "mlflow", {"registry": "x"}, "unknown extra 'registry'; did you mean 'registry_uri'?"),
        (RayHook, "ray", {"extra__ray__namespace": "x"}, "unknown extra 'extra__ray__namespace'; did you mean 'namespace'?"),
        (PrometheusHook, "prometheus", {"token": "x"}, "unknown extra 'token'; known extras: pushgateway_url"),
    ],
)  # fmt: skip
def test_an_unknown_extra_fails_naming_the_closest_known_one(hook_class, conn_type, extra, message):
    set_connection("typo", conn_type=conn_type, host="http://127.0.0.1:9", extra=extra)
    with pytest.raises(MLPlatConfigError) as raised:
        hook_class("typo").connection  # noqa: B018 (the first use of the connection checks it)
    assert message in str(raised.value)
    ok, reported = hook_class("typo").test_connection()  # what the connection form's Test button shows
    assert not ok and message in reported


def test_an_extra_that_is_not_json_is_reported_as_such():
    os.environ["AIRFLOW_CONN_FEAST_BROKEN"] = '{"conn_type": "feast", "extra": "{\\"repo_path\\": \\"/r\\",}"}'
    with pytest.raises(MLPlatConfigError, match=r"connection 'feast_broken': its extra is not valid JSON \(Expecting"):
        _ = FeastHook("feast_broken").repo_path


def test_json_extra_names_the_bad_field():
    set_connection("feast_bad_json", conn_type="feast", extra={"online_store": "{not json"})
    with pytest.raises(MLPlatConfigError, match="extra 'online_store' must be a JSON object"):
        FeastHook("feast_bad_json").json_extra("online_store")


def test_scoped_env_restores_exactly():
    os.environ["MLPLAT_T_KEEP"] = "before"
    os.environ.pop("MLPLAT_T_NEW", None)
    with scoped_env({"MLPLAT_T_KEEP": "inside", "MLPLAT_T_NEW": "x"}):
        assert os.environ["MLPLAT_T_KEEP"] == "inside"
        assert os.environ["MLPLAT_T_NEW"] == "x"
    assert os.environ["MLPLAT_T_KEEP"] == "before"
    assert "MLPLAT_T_NEW" not in os.environ


@pytest.mark.parametrize(
    ("login", "password", "expected"),
    [
        ("alice", "pw", {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "pw"}),
        (None, "tok", {"MLFLOW_TRACKING_TOKEN": "tok"}),
        (None, None, {}),
    ],
)
def test_mlflow_credentials_live_only_inside_the_block(login, password, expected):
    set_connection(
        "mlflow_creds", conn_type="mlflow", host="http://127.0.0.1:1/", login=login, password=password
    )
    hook = MLflowHook("mlflow_creds")
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    with hook.credentials():
        assert {k: os.environ[k] for k in names if k in os.environ} == expected
    assert not any(k in os.environ for k in names)
    assert hook.tracking_uri == "http://127.0.0.1:1"


def test_services_that_do_not_answer_fail_test_connection_with_the_reason():
    port = free_port()  # nothing listens there
    set_connection("mlflow_down", conn_type="mlflow", host=f"http://127.0.0.1:{port}")
    set_connection("ray_down", conn_type="ray", host=f"http://127.0.0.1:{port}")
    set_connection("kserve_down", conn_type="kserve", host=f"http://127.0.0.1:{port}")
    for hook in (MLflowHook("mlflow_down"), RayHook("ray_down"), KServeHook("kserve_down")):
        ok, message = hook.test_connection()
        assert ok is False
        assert message  # names the error the client raised
    ok, message = MLflowHook("missing_host_conn_never_defined").test_connection()
    assert ok is False and "missing_host_conn_never_defined" in message


def test_ray_hook_sends_the_token_as_bearer():
    set_connection("ray_tok", conn_type="ray", host="127.0.0.1", port=8300, password="t0k")
    hook = RayHook("ray_tok")
    assert hook.address == "http://127.0.0.1:8300"
    assert hook.headers == {"Authorization": "Bearer t0k"}


@pytest.fixture
def feature_repo(tmp_path):
    """A minimal Feast repo: one entity, one feature view over a parquet file."""
    import pandas as pd

    repo = tmp_path / "repo"
    repo.mkdir()
    pd.DataFrame(
        {
            "driver_id": [1, 2],
            "rate": [0.5, 0.7],
            "ts": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True),
        }
    ).to_parquet(tmp_path / "drivers.parquet")
    (repo / "feature_store.yaml").write_text(
        textwrap.dedent(
            f"""
            project: hooktest
            registry: {tmp_path}/registry.db
            provider: local
            online_store: {{type: sqlite, path: {tmp_path}/online.db}}
            entity_key_serialization_version: 3
            """
        )
    )
    (repo / "defs.py").write_text(
        textwrap.dedent(
            f"""
            from datetime import timedelta
            from feast import Entity, FeatureView, Field, FileSource
            from feast.types import Float64
            driver = Entity(name="driver", join_keys=["driver_id"])
            source = FileSource(path="{tmp_path}/drivers.parquet", timestamp_field="ts")
            stats = FeatureView(name="driver_stats", entities=[driver], ttl=timedelta(days=1),
                                schema=[Field(name="rate", dtype=Float64)], source=source)
            """
        )
    )
    return repo


def test_feast_hook_applies_connection_overrides_without_editing_the_repo(feature_repo, tmp_path):
    set_connection(
        "feast_override",
        conn_type="feast",
        extra={
            "repo_path": str(feature_repo),
            "online_store": {"type": "sqlite", "path": str(tmp_path / "other.db")},
        },
    )
    hook = FeastHook("feast_override")
    assert hook.repo_config_dict()["online_store"] == {"type": "sqlite", "path": str(tmp_path / "other.db")}
    store = hook.get_conn()
    assert store.config.online_store.path == str(tmp_path / "other.db")
    assert "other.db" not in (feature_repo / "feature_store.yaml").read_text()


def test_feast_hook_test_connection_loads_the_registry(feature_repo):
    import subprocess
    import sys
    from pathlib import Path

    feast_cli = Path(sys.executable).parent / "feast"
    applied = subprocess.run([feast_cli, "apply"], cwd=feature_repo, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr[-2000:]
    set_connection("feast_repo", conn_type="feast", extra={"repo_path": str(feature_repo)})
    ok, message = FeastHook("feast_repo").test_connection()
    assert ok, message
    assert "project 'hooktest'" in message and "1 feature view" in message


def test_feast_hook_rejects_a_folder_without_feature_store_yaml(tmp_path):
    set_connection("feast_norepo", conn_type="feast", extra={"repo_path": str(tmp_path)})
    with pytest.raises(MLPlatConfigError, match=r"holds no feature_store\.yaml"):
        _ = FeastHook("feast_norepo").repo_path
    set_connection("feast_nopath", conn_type="feast")
    with pytest.raises(MLPlatConfigError, match="has no repo_path extra"):
        _ = FeastHook("feast_nopath").repo_path


def test_kserve_hook_on_kubernetes_lists_inference_services(k8s):
    set_connection(
        "kserve_k8s",
        conn_type="kserve",
        extra={"kubernetes_conn_id": "kubernetes_default", "namespace": "ml"},
    )
    hook = KServeHook("kserve_k8s")
    assert hook.on_kubernetes and hook.namespace == "ml"
    ok, message = hook.test_connection()
    assert ok, message
    assert message == "KServe on Kubernetes: 0 InferenceService(s) in 'ml'"
    assert k8s.count("GET", "inferenceservices") == 1  # asked the (emulated) API server


def test_mlflow_fluent_block_ignores_and_restores_an_experiment_set_elsewhere():
    import mlflow.tracking.fluent as fluent_state

    set_connection("mlflow_fluent", conn_type="mlflow", host="http://127.0.0.1:1")
    fluent_state._active_experiment_id = "42"  # as mlflow.set_experiment() leaves it
    try:
        with MLflowHook("mlflow_fluent").fluent():
            assert fluent_state._active_experiment_id is None
            import mlflow

            assert mlflow.get_tracking_uri() == "http://127.0.0.1:1"
        assert fluent_state._active_experiment_id == "42"
    finally:
        fluent_state._active_experiment_id = None


def test_an_unreachable_mlflow_fails_promotion_within_the_timeout_naming_its_url():
    import time

    from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable
    from airflow_provider_mlplat.operators.mlflow import MLflowPromoteModelOperator
    from tests.feast_support import task_context

    url = f"http://127.0.0.1:{free_port()}"
    set_connection("mlflow_down", conn_type="mlflow", host=url, extra={"timeout": "2"})
    op = MLflowPromoteModelOperator(
        task_id="promote", model_name="m", challenger="1", thresholds={}, mlflow_conn_id="mlflow_down"
    )
    started = time.monotonic()
    with pytest.raises(MLPlatServiceUnavailable) as raised:
        op.execute(task_context("promote"))
    assert time.monotonic() - started < 10  # MLflow's own retries took over 250 s
    assert str(raised.value) == f"MLflow at {url}/health is unreachable: no answer within 2 s (ConnectError)"
