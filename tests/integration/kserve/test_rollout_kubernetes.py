"""KServeRolloutOperator on Kubernetes (emulated API, fake KServe controller, real MLflow and model server)."""

from __future__ import annotations

import time

import pytest

from airflow_provider_mlplat.exceptions import RolloutFailed
from airflow_provider_mlplat.operators.kserve import KServeRolloutOperator
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.kubernetes.kserve_controller import FakeKServeController
from tests.integration.kserve.conftest import deploy_stable, mlflow_client, run_operator

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
    assert isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 0
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
    from airflow_provider_mlplat.hooks.kserve import InferenceServiceTarget
    from airflow_provider_mlplat.hooks.prometheus import PrometheusHook

    prometheus = PrometheusHook()
    assert prometheus.test_connection()[1].startswith("Prometheus 2.")
    target = InferenceServiceTarget({"namespace": "default", "kubernetes_conn_id": "kubernetes_default"})
    for query in target.analysis_queries(
        'namespace_name="default",revision_name="tc-predictor-00001"', "60s"
    ).values():
        assert prometheus.query_value(query) is None  # parsed and run; no Knative metrics on this machine
    with pytest.raises(MLPlatServiceUnavailable, match="bad_data"):
        prometheus.query_value("sum(")
    now = time.time()
    (series,) = prometheus.query_range('up{job="model-server"}', now - 10, now, step=1)
    assert series["metric"]["job"] == "model-server" and "1" in {v for _, v in series["values"]}
