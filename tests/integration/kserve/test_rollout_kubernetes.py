"""KServeRolloutOperator on Kubernetes (emulated API, fake KServe controller, revisions on the real model server,
queue-proxy metrics through the real Pushgateway and Prometheus)."""

from __future__ import annotations

import time

import pytest

from airflow_provider_mlplat.artifacts import read_json
from airflow_provider_mlplat.exceptions import MLPlatConfigError, RolloutFailed
from airflow_provider_mlplat.operators.kserve import KServeRolloutOperator
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.kubernetes.kserve_controller import FakeKServeController
from airflow_provider_mlplat.testing.kubernetes.kserve_pods import KnativePods, Revision
from airflow_provider_mlplat.testing.waiting import wait_for
from tests.integration.kserve.conftest import Traffic, deploy_stable, mlflow_client, rows, run_operator

pytestmark = pytest.mark.integration
# Windows and floors for a loaded 2-core machine: Prometheus scrapes the Pushgateway every second,
# the queue-proxies push every 0.5 s, so a 6 s window holds ~6 samples; a good canary at 10% of
# ~20-50 requests/s serves well over 3 requests in it; p99 latencies (~50 ms through the proxies here)
# below 250 ms count as equal.
ANALYSIS = {"window_seconds": 6, "min_requests": 3, "p99_floor_seconds": 0.25}
BUCKET = "s3://mlplat/artifacts"  # the MLflow server's artifact destination, as the cluster sees it


@pytest.fixture
def knative(k8s, serving, mlflow_server):
    """Revisions' pods on the session's model server; a ``kserve_k8s`` connection to the emulator."""
    set_connection(
        "kserve_k8s",
        conn_type="kserve",
        extra={"kubernetes_conn_id": "kubernetes_default", "mlflow_artifacts_uri": BUCKET},
    )
    with KnativePods(
        serving.url, mlflow_server, {BUCKET: "mlflow-artifacts:"}, serving.pushgateway_url
    ) as pods:
        yield pods


def rollout(model: str, **kwargs):
    operator = KServeRolloutOperator(task_id="rollout", model_name=model, kserve_conn_id="kserve_k8s",
                                     poll_interval=0.1, **kwargs)  # fmt: skip
    return run_operator(operator)


def isvc(k8s, name: str) -> dict:
    return k8s.get_object("serving.kserve.io", "v1beta1", "default", "inferenceservices", name)


def champion(client, model: str, version: str, previous: str) -> None:
    client.set_registered_model_alias(model, "previous-champion", previous)
    client.set_registered_model_alias(model, "champion", version)


def steps(result_or_record: dict) -> list[dict]:
    record = read_json(result_or_record["decision_record"])
    return [h for h in record["history"] if h["phase"] == "step"]


@pytest.mark.timeout(420)
def test_same_operator_on_kubernetes_creates_canaries_promotes_and_rolls_back(
    k8s, knative, serving, register, mlflow_server, validate_manifest
):
    # distinct artifacts per version (the same storageUri twice would be one Knative revision);
    # "flaky" fails on long trips only, which this traffic never sends
    model, (v1, v2, v3) = register("good", "flaky", "broken")
    client = mlflow_client(mlflow_server)
    name = model.replace("_", "-")
    revision = [f"{name}-predictor-{i:05d}" for i in (1, 2, 3)]

    with FakeKServeController(k8s, pods=knative):
        client.set_registered_model_alias(model, "champion", v1)
        created, _ = rollout(model, skip_analysis=True)  # a first deployment takes all traffic at once
        assert (created["outcome"], created["namespace"], created["asset"]) == (
            "promoted", "default", f"kserve://default/{name}"
        )  # fmt: skip
        assert isvc(k8s, name)["spec"]["predictor"]["model"]["storageUri"].startswith(f"{BUCKET}/")
        assert isvc(k8s, name)["metadata"]["annotations"]["mlplat.io/run-id"].startswith("test__")
        service_url = isvc(k8s, name)["status"]["url"]
        assert created["url"] == service_url != knative.revisions[revision[0]].url

        champion(client, model, v2, previous=v1)
        before = len(k8s.requests)
        with Traffic(service_url, name, interval=0.02) as traffic:
            promoted, _ = rollout(model, canary_steps=[10, 50, 100], analysis=ANALYSIS)
        assert (promoted["version"], promoted["previous_version"], promoted["traffic"]) == (v2, v1, {v2: 100})
        writes = [c.body for c in k8s.requests[before:] if c.method == "PATCH"]
        percents = [w.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent", "-") for w in writes]
        assert percents == [0, 10, 50, None]  # stage without traffic, two steps, promote
        for step in steps(promoted):  # the gate ran on the queue-proxy series of each revision
            analysis = step["analysis"]
            assert analysis["verdict"] == "pass", analysis
            assert analysis["canary"]["requests"] >= 3 and analysis["canary"]["errors"] == 0
            assert analysis["stable"]["requests"] > 0 and 0 < analysis["canary"]["p99"] < 0.5
            assert f'revision_name="{revision[1]}"' in analysis["canary"]["queries"]["requests"]
        assert {v for (v, code) in traffic.by_version if code == 200} == {v1, v2}  # both served the split
        validate_manifest(isvc(k8s, name))

        champion(client, model, v3, previous=v2)
        with pytest.raises(RolloutFailed, match=r"smoke request to .* answered 500"):
            rollout(model, analysis=ANALYSIS)  # the broken revision's own URL answers the smoke request
        with Traffic(service_url, name, interval=0.02) as after:
            wait_for(lambda: sum(after.by_version.values()) >= 20, 60, "20 answers from the service URL")
    assert isvc(k8s, name)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert isvc(k8s, name)["metadata"]["annotations"]["mlplat.io/stable-model-version"] == v2
    assert client.get_model_version_by_alias(model, "champion").version == v2
    assert set(after.by_version) == {(v2, 200)}  # rolled back: the service URL reaches v2 only
    smoke = {r: knative.revisions[r].requests for r in revision}
    assert smoke[revision[2]] == {200: 0, 500: 1}  # one smoke request, on the broken revision only
    assert smoke[revision[0]][200] >= 1 and smoke[revision[1]][200] >= 1 and smoke[revision[1]][500] == 0


@pytest.mark.timeout(300)
def test_canary_with_server_errors_is_rolled_back_by_the_gate_on_kubernetes(
    k8s, knative, register, mlflow_server
):
    model, (good, flaky) = register("good", "flaky")
    client = mlflow_client(mlflow_server)
    name = model.replace("_", "-")

    with FakeKServeController(k8s, pods=knative):
        client.set_registered_model_alias(model, "champion", good)
        rollout(model, skip_analysis=True)
        champion(client, model, flaky, previous=good)
        service_url = isvc(k8s, name)["status"]["url"]
        with (
            Traffic(service_url, name, long_trips=0.5, interval=0.02),
            pytest.raises(RolloutFailed) as failed,
        ):
            rollout(model, canary_steps=[20, 100], analysis=ANALYSIS)
    assert "canary analysis at 20% failed: canary error rate" in str(failed.value)
    assert isvc(k8s, name)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert client.get_model_version_by_alias(model, "champion").version == good
    tags = client.get_model_version(model, flaky).tags
    (step,) = steps({"decision_record": tags["mlplat.rollout.decision_record"]})
    analysis = step["analysis"]
    assert analysis["verdict"] == "fail" and analysis["canary"]["errors"] > 0
    assert analysis["canary"]["error_rate"] > 0.1 and analysis["stable"]["errors"] == 0
    assert analysis["stable"]["requests"] > analysis["canary"]["requests"] >= 3  # 80/20 split


def test_kubernetes_analysis_queries_read_queue_proxy_series(serving, tmp_path):

    from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable
    from airflow_provider_mlplat.hooks.kserve_knative import KnativeTarget
    from airflow_provider_mlplat.hooks.kserve_standard import StandardTarget
    from airflow_provider_mlplat.hooks.kserve_target import TargetConfig
    from airflow_provider_mlplat.hooks.prometheus import PrometheusHook

    prometheus = PrometheusHook()
    assert prometheus.test_connection()[1].startswith("Prometheus 2.")
    revision = f"q{tmp_path.name[-8:].replace('_', '')}-predictor-00001"
    pod = Revision("default", revision.rsplit("-predictor", 1)[0], revision)
    selector = f'namespace_name="default",revision_name="{revision}"'
    with KnativePods(serving.url, "", {}, serving.pushgateway_url) as pods:
        pods.revisions[revision] = pod  # a queue-proxy without a pod: its series are pushed from 0 on
        wait_for(
            lambda: prometheus.query(f"revision_app_request_count{{{selector}}}"), 30, "the first scrape"
        )
        for _ in range(40):
            pod.observe(200, 3.0)
        for _ in range(2):
            pod.observe(500, 30.0)
        wait_for(lambda: prometheus.query_value(f"sum(revision_app_request_count{{{selector}}})") == 42, 30,
                 "the counts in Prometheus")  # fmt: skip
        # increase() extrapolates past the last sample by half a scrape interval: with 10+ samples
        # (1 s apart) that adds at most ~5%
        samples = f'count_over_time(revision_app_request_count{{{selector},response_code="200"}}[60s])'
        wait_for(lambda: (prometheus.query_value(samples) or 0) >= 10, 30, "10 scrapes")
        config = TargetConfig("knative", "default", kubernetes_conn_id="kubernetes_default")
        values = {k: prometheus.query_value(q) for k, q in KnativeTarget(config).analysis_queries(selector, "60s").items()}
        standard = 'namespace="default",pod=~"tc-v2-predictor-[a-z0-9]+-[a-z0-9]+"'
        for query in StandardTarget(config).analysis_queries(standard, "60s").values():
            assert prometheus.query_value(query) is None  # parsed and run; no Standard-mode pods push here
        now = time.time()
        (series,) = prometheus.query_range(f"revision_app_request_count{{{selector},response_code='500'}}",
                                           now - 10, now, step=1)  # fmt: skip
    # p99 falls in the 20-40 ms bucket of the 2 slow requests
    assert values["requests"] == pytest.approx(42, rel=0.1) and values["errors"] == pytest.approx(2, rel=0.1)
    assert 0.02 < values["p99"] < 0.04, values
    assert series["metric"]["response_code_class"] == "5xx" and series["values"][-1][1] == "2"
    with pytest.raises(MLPlatServiceUnavailable, match="bad_data"):
        prometheus.query_value("sum(")


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
