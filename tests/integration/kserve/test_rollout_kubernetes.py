"""KServeRolloutOperator on Kubernetes (emulated API, fake KServe controller, real MLflow and model server)."""

from __future__ import annotations

import time

import pytest

from airflow_provider_mlplat.artifacts import read_json
from airflow_provider_mlplat.exceptions import MLPlatConfigError, RolloutFailed
from airflow_provider_mlplat.operators.kserve import KServeRolloutOperator
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.kubernetes.kserve_controller import FakeKServeController
from tests.integration.kserve.conftest import deploy_stable, mlflow_client, rows, run_operator

pytestmark = pytest.mark.integration


def test_same_operator_on_kubernetes_creates_canaries_promotes_and_rolls_back(
    k8s, serving, register, mlflow_server, validate_manifest
):
    set_connection(
        "kserve_k8s",
        conn_type="kserve",
        extra={"kubernetes_conn_id": "kubernetes_default", "mlflow_artifacts_uri": "s3://mlplat/artifacts"},
    )
    model, (v1, v2, v3) = register("good", "good", "good")
    # the revisions' "pods": the local model server answers for the service name at the URLs the
    # controller reports, so the smoke requests are answered by a real KServe server
    name = deploy_stable(serving, model, v1)
    client = mlflow_client(mlflow_server)

    def rollout(**kwargs):
        operator = KServeRolloutOperator(
            task_id="rollout", model_name=model, kserve_conn_id="kserve_k8s", skip_analysis=True,
            poll_interval=0.1, **kwargs,
        )  # fmt: skip
        return run_operator(operator)

    def isvc():
        return k8s.get_object("serving.kserve.io", "v1beta1", "default", "inferenceservices", name)

    with FakeKServeController(k8s, url=serving.url) as controller:
        client.set_registered_model_alias(model, "champion", v1)
        created, _ = rollout()
        assert (created["outcome"], created["namespace"], created["asset"]) == (
            "promoted",
            "default",
            f"kserve://default/{name}",
        )
        assert isvc()["spec"]["predictor"]["model"]["storageUri"].startswith("s3://mlplat/artifacts/")
        assert isvc()["metadata"]["annotations"]["mlplat.io/run-id"].startswith("test__")

        client.set_registered_model_alias(model, "previous-champion", v1)
        client.set_registered_model_alias(model, "champion", v2)
        before = len(k8s.requests)
        promoted, _ = rollout(canary_steps=[10, 50, 100])
        assert (promoted["version"], promoted["previous_version"], promoted["traffic"]) == (v2, v1, {v2: 100})
        writes = [c.body for c in k8s.requests[before:] if c.method == "PATCH"]
        percents = [w.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent", "-") for w in writes]
        assert percents == [0, 10, 50, None]  # stage without traffic, two steps, promote
        validate_manifest(isvc())

        controller.behaviour = "never"
        client.set_registered_model_alias(model, "previous-champion", v2)
        client.set_registered_model_alias(model, "champion", v3)
        with pytest.raises(RolloutFailed, match=r"stage of .* timeout: not ready after 1 s"):
            rollout(ready_timeout=1)
    assert isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 0  # rolled back once
    assert isvc()["metadata"]["annotations"]["mlplat.io/stable-model-version"] == v2
    assert client.get_model_version_by_alias(model, "champion").version == v2
    assert served(serving, name) == 2  # one smoke request per rollout that got a ready revision


def served(serving, name: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{serving.url}/metrics").text)
    samples = [s for f in families if f.name == "mlplat_inference_requests" for s in f.samples]
    return sum(s.value for s in samples if s.name.endswith("_total") and s.labels["deployment"] == name)


def test_kubernetes_analysis_queries_are_valid_promql(serving):
    from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable
    from airflow_provider_mlplat.hooks.kserve_knative import KnativeTarget
    from airflow_provider_mlplat.hooks.kserve_standard import StandardTarget
    from airflow_provider_mlplat.hooks.kserve_target import TargetConfig
    from airflow_provider_mlplat.hooks.prometheus import PrometheusHook

    prometheus = PrometheusHook()
    assert prometheus.test_connection()[1].startswith("Prometheus 2.")
    config = TargetConfig("knative", "default", kubernetes_conn_id="kubernetes_default")
    knative, standard = KnativeTarget(config), StandardTarget(config)
    for target, selector in [
        (knative, 'namespace_name="default",revision_name="tc-predictor-00001"'),
        (standard, 'namespace="default",pod=~"tc-v2-predictor-[a-z0-9]+-[a-z0-9]+"'),
    ]:
        for query in target.analysis_queries(selector, "60s").values():
            assert prometheus.query_value(query) is None  # parsed and run; no cluster metrics on this machine
    with pytest.raises(MLPlatServiceUnavailable, match="bad_data"):
        prometheus.query_value("sum(")
    now = time.time()
    (series,) = prometheus.query_range('up{job="model-server"}', now - 10, now, step=1)
    assert series["metric"]["job"] == "model-server" and "1" in {v for _, v in series["values"]}


# -- Standard mode (spec.canary[]) and rollouts that fail safely ---------------------------------------


def standard_connection(serving) -> str:
    """A kserve connection to the emulator in Standard mode; predictors answer at the local model server."""
    set_connection(
        "kserve_std",
        conn_type="kserve",
        extra={
            "kubernetes_conn_id": "kubernetes_default",
            "deployment_mode": "Standard",
            "mlflow_artifacts_uri": "s3://mlplat/artifacts",
            "predictor_url": serving.url,
        },
    )
    return "kserve_std"


def std_rollout(model: str, **kwargs):
    operator = KServeRolloutOperator(
        task_id="rollout", model_name=model, kserve_conn_id="kserve_std", skip_analysis=True,
        smoke_input=rows(3), poll_interval=0.1, **kwargs,
    )  # fmt: skip
    return run_operator(operator)


def isvc_of(k8s, name: str) -> dict:
    return k8s.get_object("serving.kserve.io", "v1beta1", "default", "inferenceservices", name)


def canary_writes(k8s, since: int) -> list:
    """The rollout's writes after request ``since``: what each did to spec.canary."""
    out = []
    for call in k8s.requests[since:]:
        if call.method == "PATCH" and call.plural == "inferenceservices":
            if isinstance(call.body, list):
                out.append(
                    [(op["op"], op["path"], op.get("value")) for op in call.body if "/spec/" in op["path"]]
                )
            else:
                out.append(call.body.get("spec", {}).get("canary", "-"))
    return out


def test_standard_mode_canary_promotes_and_a_failed_one_restores_the_configured_alias_over_sqlite(
    k8s, serving, register, mlflow_server, validate_manifest, tmp_path_factory
):
    (db,) = tmp_path_factory.getbasetemp().glob("mlplat-mlflow[0-9]*/mlflow/mlflow.db")
    set_connection("mlflow_sqlite", conn_type="mlflow", host=f"sqlite:///{db}")  # the registry as a database
    standard_connection(serving)
    model, (v1, v2, v3) = register("good", "good", "good")
    name = deploy_stable(serving, model, v1)  # the "pods" of every predictor: the local model server
    client = mlflow_client(mlflow_server)
    aliases = {"model_alias": "prod", "previous_alias": "prod-before", "mlflow_conn_id": "mlflow_sqlite"}

    with FakeKServeController(k8s, url=serving.url) as controller:
        client.set_registered_model_alias(model, "prod", v1)
        assert std_rollout(model, **aliases)[0]["outcome"] == "promoted"
        assert isvc_of(k8s, name)["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"

        client.set_registered_model_alias(model, "prod-before", v1)
        client.set_registered_model_alias(model, "prod", v2)
        before = len(k8s.requests)
        promoted, _ = std_rollout(model, canary_steps=[10, 50, 100], **aliases)
        assert (promoted["version"], promoted["previous_version"], promoted["traffic"]) == (v2, v1, {v2: 100})
        stage, *steps, promote = canary_writes(k8s, before)
        assert [(c["trafficPercent"], c["predictor"]["name"]) for c in stage] == [(0, f"v{v2}")]
        assert [s[-1] for s in steps] == [("replace", "/spec/canary/0/trafficPercent", 10),
                                          ("replace", "/spec/canary/0/trafficPercent", 50)]  # fmt: skip
        assert [op[:2] for op in promote] == [("replace", "/spec/predictor"), ("replace", "/spec/canary")]
        assert isvc_of(k8s, name)["spec"]["predictor"]["name"] == f"v{v2}"
        validate_manifest(isvc_of(k8s, name))

        controller.behaviour = "failed-load"
        client.set_registered_model_alias(model, "prod-before", v2)
        client.set_registered_model_alias(model, "prod", v3)
        before = len(k8s.requests)
        with pytest.raises(
            RolloutFailed, match=r"stage of .* failed: canary v\d+: model BlockedByFailedLoad"
        ):
            std_rollout(model, **aliases)
    assert canary_writes(k8s, before)[-1] == []  # rollback: spec.canary emptied, once
    isvc = isvc_of(k8s, name)
    assert isvc["spec"]["predictor"]["name"] == f"v{v2}" and isvc["spec"]["canary"] == []
    assert client.get_model_version_by_alias(model, "prod").version == v2  # int vs str: compared as text
    record = read_json(client.get_model_version(model, v3).tags["mlplat.rollout.decision_record"])
    assert record["alias"] == f"prod moved back from {v3} to {v2} (prod-before)"
    validate_manifest(isvc)


def test_a_standard_canary_on_a_cluster_without_spec_canary_fails_before_any_write(k8s, serving, register):
    from tests.unit.test_kserve_standard import install_crd

    install_crd(k8s, canary=False)  # KServe < 0.20
    standard_connection(serving)
    model, (v1, v2) = register("good", "good")
    deploy_stable(serving, model, v1)
    with FakeKServeController(k8s, url=serving.url):
        std_rollout(model, model_version=v1)
        before = len(k8s.requests)
        with pytest.raises(
            MLPlatConfigError, match=r"CRD has no spec.canary: KServe < 0.20 cannot split traffic"
        ):
            std_rollout(model, model_version=v2)
    assert [c.method for c in k8s.requests[before:] if c.method not in ("GET",)] == []


def test_one_rollback_per_failure_and_none_after_the_rollout_finished(
    k8s, serving, register, mlflow_server, monkeypatch
):
    from airflow_provider_mlplat.hooks.kserve_standard import StandardTarget

    standard_connection(serving)
    model, (v1, v2, v3) = register("good", "good", "good")
    name = deploy_stable(serving, model, v1)
    client = mlflow_client(mlflow_server)
    shift = StandardTarget.shift

    def shift_failing_at_50(self, name, model, stable, percent):
        if percent == 50:
            raise RuntimeError("the API server went away at 50%")
        return shift(self, name, model, stable, percent)

    with FakeKServeController(k8s, url=serving.url):
        std_rollout(model, model_version=v1)
        client.set_registered_model_alias(model, "previous-champion", v1)
        client.set_registered_model_alias(model, "champion", v2)
        monkeypatch.setattr(StandardTarget, "shift", shift_failing_at_50)
        before = len(k8s.requests)
        with pytest.raises(RolloutFailed) as failed:  # every step ready without deferring
            std_rollout(model, canary_steps=[10, 50, 100])
        assert str(failed.value).count("rolled back") == 1 and "went away at 50%" in str(failed.value)
        assert canary_writes(k8s, before).count([]) == 1  # one rollback
        assert client.get_model_version_by_alias(model, "champion").version == v1
        record = read_json(client.get_model_version(model, v2).tags["mlplat.rollout.decision_record"])
        assert record["alias"] == f"champion moved back from {v2} to {v1} (previous-champion)"
        assert [(h["phase"], h["percent"]) for h in record["history"]] == [("stage", None), ("step", 10)]

        monkeypatch.setattr(StandardTarget, "shift", shift)
        monkeypatch.setattr(StandardTarget, "describe", lambda self, name: 1 / 0)  # fails inside _finish
        client.set_registered_model_alias(model, "champion", v3)
        before = len(k8s.requests)
        with pytest.raises(ZeroDivisionError):
            std_rollout(model)
    assert canary_writes(k8s, before)[-1][0][:2] == ("replace", "/spec/predictor")  # promoted, not undone
    assert isvc_of(k8s, name)["spec"]["predictor"]["name"] == f"v{v3}"
    assert client.get_model_version_by_alias(model, "champion").version == v3
