"""The InferenceService rollout targets (Knative and Standard mode) against the Kubernetes emulator and a fake KServe controller."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.kserve_isvc import isvc_readiness
from airflow_provider_mlplat.hooks.kserve_knative import KnativeTarget
from airflow_provider_mlplat.hooks.kserve_target import Expectation, ModelVersionRef, TargetConfig
from airflow_provider_mlplat.testing.kubernetes.kserve_controller import FakeKServeController
from airflow_provider_mlplat.testing.waiting import wait_for
from airflow_provider_mlplat.triggers.kserve import KServeInferenceServiceReadyTrigger

ORIGIN = {
    "dag_id": "deployment pipeline!",
    "run_id": "manual__2026-01-01T00:00:00+00:00",
    "task_id": "rollout",
}
NAME = "trip-completion"


def ref(version: str) -> ModelVersionRef:
    return ModelVersionRef(
        "trip_completion", version, f"s3://models/trip_completion/{version}", f"run{version}"
    )


def target(**config) -> KnativeTarget:
    return KnativeTarget(
        TargetConfig("knative", "default", kubernetes_conn_id="kubernetes_default", **config)
    )


def stored(k8s) -> dict:
    return k8s.get_object("serving.kserve.io", "v1beta1", "default", "inferenceservices", NAME)


def wait_ready(t, expect: Expectation, timeout: float = 5, hold: float = 0) -> dict:
    trigger = KServeInferenceServiceReadyTrigger(t.config.to_dict(), NAME, expect.to_dict(), timeout=timeout,
                                                 poll_interval=0.05, hold_seconds=hold)  # fmt: skip

    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def patches(k8s) -> list:
    return [c.body for c in k8s.requests if c.method == "PATCH" and c.plural == "inferenceservices"]


def test_manifest_validates_against_the_official_crd(validate_manifest):
    t = target(logger_url="http://inference-log.mlplat.svc/events", deployment_mode="Serverless",
               predictor={"minReplicas": 1, "maxReplicas": 3,
                          "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}}})  # fmt: skip
    predictor = t.predictor_spec(ref("3")) | {"canaryTrafficPercent": 10}
    manifest = t.manifest(NAME, ref("3"), {"mlplat.io/dag-id": "deployment pipeline!"},
                          {"mlplat.io/run-id": ORIGIN["run_id"]}, predictor)  # fmt: skip
    validate_manifest(manifest)
    predictor = manifest["spec"]["predictor"]
    assert predictor["model"] == {
        "modelFormat": {"name": "mlflow"}, "protocolVersion": "v2",
        "storageUri": "s3://models/trip_completion/3", "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
    }  # fmt: skip
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["canaryTrafficPercent"]) == (
        1,
        3,
        10,
    )
    assert predictor["logger"] == {
        "mode": "all", "url": "http://inference-log.mlplat.svc/events",
        "metadataAnnotations": ["mlplat.io/model-name", "mlplat.io/model-version"],
    }  # fmt: skip
    assert manifest["metadata"]["labels"] == {
        "mlplat.io/model-name": "trip_completion", "mlplat.io/model-version": "3",
        "mlplat.io/dag-id": "deployment-pipeline",
    }  # fmt: skip
    annotations = manifest["metadata"]["annotations"]
    # exact values (labels are made label-safe): what the request-log sink writes as model name and version
    assert (annotations["mlplat.io/model-name"], annotations["mlplat.io/model-version"]) == (
        "trip_completion",
        "3",
    )
    assert manifest["metadata"]["annotations"]["mlplat.io/run-id"] == ORIGIN["run_id"]
    assert manifest["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"


def test_create_then_canary_steps_then_promote_follow_kserve_status(k8s, validate_manifest):
    t = target()
    with FakeKServeController(k8s) as controller:
        expect = t.stage(NAME, ref("1"), None, ORIGIN, direct=False)
        assert expect == Expectation(generation=1) and k8s.count("POST", "inferenceservices") == 1
        assert wait_ready(t, expect)["status"] == "ready"
        assert t.stage(NAME, ref("1"), t.current(NAME), ORIGIN, direct=False) == Expectation(
            generation=1
        )  # no-op
        assert t.current(NAME).stable == "1"

        expect = t.stage(NAME, ref("2"), t.current(NAME), ORIGIN, direct=False)
        assert expect == Expectation(generation=2) and wait_ready(t, expect)["status"] == "ready"
        assert (t.current(NAME).stable, t.current(NAME).canary) == ("1", "2")
        for percent in (10, 50):
            assert wait_ready(t, t.shift(NAME, ref("2"), "1", percent))["status"] == "ready"
            traffic = stored(k8s)["status"]["components"]["predictor"]["traffic"]
            assert [(x["tag"], x["percent"]) for x in traffic] == [
                ("prev", 100 - percent),
                ("latest", percent),
            ]
        assert t.selectors(NAME, "1", ref("2")) == {
            "canary": f'namespace_name="default",revision_name="{NAME}-predictor-00002"',
            "stable": f'namespace_name="default",revision_name="{NAME}-predictor-00001"',
        }
        assert wait_ready(t, t.promote(NAME, ref("2"), "1"))["status"] == "ready"

    isvc = stored(k8s)
    validate_manifest(isvc)  # spec and the status the controller wrote
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/trip_completion/2"
    assert isvc["metadata"]["annotations"]["mlplat.io/stable-model-version"] == "2"
    assert isvc["status"]["components"]["predictor"]["latestRolledoutRevision"] == f"{NAME}-predictor-00002"
    assert controller.revisions[NAME][-1]["model"]["storageUri"].endswith("/2")
    steps = [p.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent", "-") for p in patches(k8s)]
    assert steps == ["-", 0, 10, 50, None]  # no-op re-apply, stage at 0%, 10%, 50%, promote removes it
    assert t.describe(NAME) == {"url": "http://trip.example.com", "revision": f"{NAME}-predictor-00002",
                                "traffic": {"2": 100}}  # fmt: skip


def test_a_ready_status_of_the_previous_generation_is_not_ready(k8s):
    t = target()
    with FakeKServeController(k8s) as controller:
        assert wait_ready(t, t.stage(NAME, ref("1"), None, ORIGIN, direct=False))["status"] == "ready"
        controller.behaviour = "stale"
        expect = t.stage(NAME, ref("2"), t.current(NAME), ORIGIN, direct=False)
        after = controller.passes + 1  # a pass that started after the change has ended
        wait_for(lambda: controller.passes > after, 10, "a reconcile pass of the new generation", 0.05)
        isvc = stored(k8s)
        assert {c["type"]: c["status"] for c in isvc["status"]["conditions"]}["Ready"] == "True"
        assert isvc_readiness(isvc, expect.generation) == (
            "pending", "generation 2 not observed yet (observedGeneration=1)"
        )  # fmt: skip
        event = wait_ready(t, expect, timeout=0.5)
    assert event["status"] == "timeout" and "not observed yet" in event["detail"]


def test_never_ready_times_out_and_rollback_pins_traffic_to_the_rolled_out_revision(k8s):
    t = target()
    with FakeKServeController(k8s) as controller:
        wait_ready(t, t.stage(NAME, ref("1"), None, ORIGIN, direct=False))
        previous = t.previous_spec(NAME)
        controller.behaviour = "never"
        current = t.current(NAME)
        event = wait_ready(t, t.stage(NAME, ref("2"), current, ORIGIN, direct=False), timeout=0.5)
        assert event["status"] == "timeout" and "PredictorReady is False: RevisionMissing" in event["detail"]
        done = t.rollback(NAME, ref("2"), current.stable, previous)
    assert done == f"canaryTrafficPercent of {NAME} set to 0: all traffic on the last rolled-out revision"
    isvc = stored(k8s)
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert isvc["metadata"]["annotations"]["mlplat.io/rolled-back-version"] == "2"
    assert (t.current(NAME).stable, t.current(NAME).canary) == ("1", "2")  # stable stays; 2 holds 0%


def test_failed_model_load_fails_without_waiting_for_the_timeout(k8s):
    t = target()
    with FakeKServeController(k8s, behaviour="failed-load"):
        started = time.monotonic()
        event = wait_ready(t, t.stage(NAME, ref("1"), None, ORIGIN, direct=False), timeout=30)
    assert event["status"] == "failed" and "BlockedByFailedLoad: ModelLoadFailed bad model" in event["detail"]
    assert time.monotonic() - started < 10


def test_rollback_of_a_first_deployment_deletes_it_and_delete_is_idempotent(k8s):
    t = target()
    t.stage(NAME, ref("1"), None, ORIGIN, direct=False)
    assert (
        t.rollback(NAME, ref("1"), None, None)
        == f"InferenceService default/{NAME} deleted (the rollout created it)"
    )
    assert stored(k8s) is None and t.current(NAME) is None
    assert t.delete(NAME) is False


def test_mode_detection_and_a_service_the_provider_did_not_create(k8s):
    from airflow_provider_mlplat.hooks.kserve_isvc import deployment_mode

    assert (
        deployment_mode({"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Standard"}}}, None)
        == "Standard"
    )
    assert (
        deployment_mode({"metadata": {}, "status": {"deploymentMode": "RawDeployment"}}, "Serverless")
        == "RawDeployment"
    )
    assert deployment_mode(None, "RawDeployment") == "RawDeployment"
    assert deployment_mode(None, None) == "Serverless"
    foreign = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": NAME},
               "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://x"}}}}  # fmt: skip
    target().apply(foreign)
    assert target().current(NAME).stable == "unknown"  # never taken for an empty slot


def test_refused_and_failed_api_calls_say_which_call_in_one_line(k8s):
    from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable

    k8s.fail_next("GET", "inferenceservices", status=403)
    with pytest.raises(MLPlatConfigError) as refused:
        target().get(NAME)
    assert str(refused.value) == (
        "the Kubernetes API refused to get inferenceservices.serving.kserve.io in namespace 'default' for "
        "kubernetes connection 'kubernetes_default' (403 Forbidden): grant it 'get' on "
        "'inferenceservices.serving.kserve.io' in that namespace"
    )
    k8s.fail_next("PATCH", "inferenceservices", status=500, message="etcd timed out")
    with pytest.raises(MLPlatServiceUnavailable) as failed:
        target()._patch(NAME, {"metadata": {"labels": {"a": "b"}}})
    assert str(failed.value) == (
        "the Kubernetes API answered 500 Internal Server Error to patch inferenceservices.serving.kserve.io "
        "in namespace 'default': etcd timed out"
    )


@pytest.mark.parametrize(
    ("model", "transition", "failure"),
    [
        ({"runtime": "kserve-mlservr"}, "InvalidSpec",
         "RuntimeNotRecognized Waiting for runtime to become available"),
        ({"protocolVersion": "v1"}, "InvalidSpec",
         "NoSupportingRuntime No runtime found to support specified framework/version"),
        ({"runtime": "kserve-sklearnserver"}, "InvalidSpec",
         "NoSupportingRuntime Specified runtime does not support specified framework/version"),
        ({"storageUri": "mlflow-artifacts:/1/models/m-1/artifacts"}, "BlockedByFailedLoad",
         "ModelLoadFailed Cannot recognize storage type for mlflow-artifacts:/1/models/m-1/artifacts"),
    ],
)  # fmt: skip
def test_readiness_follows_from_the_spec_not_from_the_test(k8s, model, transition, failure):
    t = target()
    manifest = t.manifest(NAME, ref("1"), {}, {}, t.predictor_spec(ref("1")))
    manifest["spec"]["predictor"]["model"] |= model
    with FakeKServeController(k8s) as controller:  # behaviour "ready": only the spec can fail it
        expect = Expectation(generation=t.apply(manifest)["metadata"]["generation"])
        event = wait_ready(t, expect)
        assert (event["status"], event["detail"].startswith(f"model {transition}: {failure}")) == (
            "failed",
            True,
        )
        status = stored(k8s)["status"]
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "PredictorReady": "False",
            "Ready": "False",
        }
        assert status["modelStatus"]["states"]["targetModelState"] == "FailedToLoad"
        assert "components" not in status  # no revision is served
        valid = t.manifest(NAME, ref("1"), {}, {}, t.predictor_spec(ref("1")))  # the same service, a valid spec
        fixed = t.apply(valid)
        assert wait_ready(t, Expectation(generation=fixed["metadata"]["generation"]))["status"] == "ready"
    assert controller.revisions[NAME][-1]["model"] == fixed["spec"]["predictor"]["model"]


def test_out_of_range_percent_and_misspelled_fields_are_refused_before_any_write(k8s):
    from kubernetes.client.exceptions import ApiException

    t = target()
    with FakeKServeController(k8s):
        wait_ready(t, t.stage(NAME, ref("1"), None, ORIGIN, direct=False))
        before = stored(k8s)
        with pytest.raises(ApiException) as percent:
            t.shift(NAME, ref("1"), "1", 150)
        with pytest.raises(ApiException) as typo:
            t._patch(NAME, {"spec": {"predictor": {"canaryTrafficPercnt": 10}}})
        with pytest.raises(ApiException) as standard:
            t._patch(NAME, {"spec": {"canary": [{"trafficPercent": 150, "predictor": {}}]}})
    assert (percent.value.status, json.loads(percent.value.body)["message"]) == (
        422,
        'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: '
        "expected 0 <= 150 <= 100: spec.predictor.canaryTrafficPercent",
    )
    assert (typo.value.status, json.loads(typo.value.body)["message"]) == (
        400,
        'strict decoding error: unknown field "spec.predictor.canaryTrafficPercnt"',
    )
    assert (standard.value.status, json.loads(standard.value.body)["details"]["causes"]) == (
        422,
        [{"reason": "FieldValueInvalid", "field": "spec.canary[0].trafficPercent",
          "message": "Invalid value: 150: spec.canary[0].trafficPercent in body should be less than or equal to 100"}],
    )  # fmt: skip
    assert stored(k8s) == before  # nothing half-applied


def test_an_error_in_the_controller_thread_fails_the_test(k8s):
    controller = FakeKServeController(k8s)
    failed = r"the fake KServe controller failed: KeyError\('predictor'\)"
    with pytest.raises(AssertionError, match=failed), controller:
        # what the controller reads: an InferenceService without a predictor (the CRD would refuse one)
        k8s.objects = lambda plural: [{"metadata": {"name": NAME, "generation": 1}, "spec": {}}]
        wait_for(lambda: controller.error is not None, 10, "the controller thread to fail", 0.05)
    assert not controller._thread.is_alive()
