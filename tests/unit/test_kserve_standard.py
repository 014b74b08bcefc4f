"""Standard-mode canaries (spec.canary[]) against the Kubernetes emulator, as KServe's own e2e test performs them."""

from __future__ import annotations

import asyncio
import copy
import functools

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.kserve import KServeHook
from airflow_provider_mlplat.hooks.kserve_standard import StandardTarget
from airflow_provider_mlplat.hooks.kserve_target import Expectation, ModelVersionRef, TargetConfig
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.kubernetes.fixtures import CRD_DIR
from airflow_provider_mlplat.testing.kubernetes.kserve_controller import FakeKServeController
from airflow_provider_mlplat.triggers.kserve import KServeInferenceServiceReadyTrigger

ORIGIN = {"dag_id": "deploy", "run_id": "manual__1", "task_id": "rollout"}
NAME = "tc"
CRD_NAME = "inferenceservices.serving.kserve.io"


@functools.cache
def _crd() -> dict:
    import yaml

    return yaml.load(
        (CRD_DIR / f"serving.kserve.io_{'inferenceservices'}.yaml").read_text(), Loader=yaml.CSafeLoader
    )


def install_crd(k8s, canary: bool = True) -> None:
    """Serve the InferenceService CRD (the vendored one; ``canary=False``: without spec.canary, as before 0.20)."""
    import httpx

    crd = copy.deepcopy(_crd())
    if not canary:
        for version in crd["spec"]["versions"]:
            version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"].pop("canary")
    k8s.register(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
    )
    url = f"{k8s.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    assert httpx.post(url, json=crd, timeout=30).status_code == 201


def ref(version: str) -> ModelVersionRef:
    return ModelVersionRef("tc", version, f"s3://models/tc/{version}", f"run{version}")


def target() -> StandardTarget:
    config = TargetConfig(
        "standard", "default", kubernetes_conn_id="kubernetes_default", deployment_mode="Standard"
    )
    return StandardTarget(config)


def stored(k8s) -> dict:
    return k8s.get_object("serving.kserve.io", "v1beta1", "default", "inferenceservices", NAME)


def writes(k8s) -> list:
    return [
        c for c in k8s.requests if c.method in ("POST", "PATCH", "PUT") and c.plural == "inferenceservices"
    ]


def wait_ready(t: StandardTarget, expect: Expectation, timeout: float = 5) -> dict:
    trigger = KServeInferenceServiceReadyTrigger(
        t.config.to_dict(), NAME, expect.to_dict(), timeout=timeout, poll_interval=0.05
    )

    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def conditions(isvc: dict) -> dict:
    return {c["type"]: (c["status"], c.get("reason")) for c in isvc["status"]["conditions"]}


def test_canary_beside_the_untouched_stable_predictor_steps_then_promotes(k8s, validate_manifest):
    t = target()
    install_crd(k8s)
    with FakeKServeController(k8s):
        assert wait_ready(t, t.stage(NAME, ref("1"), None, ORIGIN, direct=False))["status"] == "ready"
        stable_predictor = stored(k8s)["spec"]["predictor"]
        current = t.current(NAME)
        assert (current.stable, current.canary, current.mode) == ("1", None, "Standard")
        t.check(NAME, current, canary=True)  # the CRD has spec.canary

        expect = t.stage(NAME, ref("2"), current, ORIGIN, direct=False)
        assert expect == Expectation(generation=2, canary="v2", percent=0)
        isvc = stored(k8s)
        assert isvc["spec"]["predictor"] == stable_predictor  # the stable predictor is untouched
        (entry,) = isvc["spec"]["canary"]
        assert entry["trafficPercent"] == 0 and entry["predictor"]["name"] == "v2"
        assert entry["predictor"]["model"]["storageUri"] == "s3://models/tc/2"
        assert wait_ready(t, expect)["status"] == "ready"
        assert conditions(stored(k8s))["CanaryPredictorReady"] == ("True", "AllCanariesReady")
        assert (t.current(NAME).stable, t.current(NAME).canary) == ("1", "2")
        validate_manifest(stored(k8s))

        for percent in (10, 50):
            event = wait_ready(t, t.shift(NAME, ref("2"), "1", percent))
            assert event["status"] == "ready" and f"canary v2 ready at {percent}%" in event["detail"]
            (status,) = stored(k8s)["status"]["canaryStatuses"]
            assert (status["name"], status["ready"], status["trafficPercent"]) == ("v2", True, percent)
        assert t.selectors(NAME, "1", ref("2")) == {
            "canary": 'namespace="default",pod=~"tc-v2-predictor-[a-z0-9]+-[a-z0-9]+"',
            "stable": 'namespace="default",pod=~"tc-predictor-[a-z0-9]+-[a-z0-9]+"',
        }
        assert t.describe(NAME)["traffic"] == {"1": 50, "2": 50}

        assert wait_ready(t, t.promote(NAME, ref("2"), "1"))["status"] == "ready"
        isvc = stored(k8s)
    assert isvc["spec"]["predictor"] == entry["predictor"]  # named v2: its pods stay
    assert isvc["spec"]["canary"] == []
    assert "CanaryPredictorReady" not in conditions(isvc) and "canaryStatuses" not in isvc["status"]
    assert isvc["metadata"]["annotations"]["mlplat.io/stable-model-version"] == "2"
    assert isvc["metadata"]["labels"]["mlplat.io/model-version"] == "2"
    validate_manifest(isvc)
    assert t.describe(NAME) == {
        "url": "http://trip.example.com",
        "revision": "tc-v2-predictor",
        "traffic": {"2": 100},
    }
    bodies = [c.body for c in writes(k8s)]
    assert [b[1]["value"] for b in bodies[2:4]] == [10, 50]  # the steps: JSON patches of trafficPercent only
    assert bodies[2][0] == {"op": "test", "path": "/spec/canary/0/predictor/name", "value": "v2"}


def test_a_canary_that_fails_to_load_fails_and_rollback_empties_spec_canary(k8s, validate_manifest):
    t = target()
    with FakeKServeController(k8s) as controller:
        wait_ready(t, t.stage(NAME, ref("1"), None, ORIGIN, direct=False))
        previous, stable_predictor = t.previous_spec(NAME), stored(k8s)["spec"]["predictor"]
        controller.behaviour = "failed-load"
        event = wait_ready(t, t.stage(NAME, ref("2"), t.current(NAME), ORIGIN, direct=False))
        assert event["status"] == "failed"
        assert event["detail"] == "canary v2: model BlockedByFailedLoad: ModelLoadFailed bad model"
        assert conditions(stored(k8s))["Ready"][0] == "True"  # the stable predictor still serves

        controller.behaviour = "ready"
        done = t.rollback(NAME, ref("2"), "1", previous)
        assert done == "spec.canary of tc emptied: all traffic on the stable predictor (version 1)"
        generation = stored(k8s)["metadata"]["generation"]
        assert wait_ready(t, Expectation(generation=generation))["status"] == "ready"
    isvc = stored(k8s)
    assert isvc["spec"]["canary"] == [] and isvc["spec"]["predictor"] == stable_predictor
    assert "CanaryPredictorReady" not in conditions(isvc)  # cleared, as in KServe's e2e test
    assert isvc["metadata"]["annotations"]["mlplat.io/rolled-back-version"] == "2"
    assert (t.current(NAME).stable, t.current(NAME).canary) == ("1", None)
    validate_manifest(isvc)


def test_a_canary_not_at_the_expected_percent_yet_is_pending():
    t = target()
    isvc = {
        "metadata": {"generation": 3},
        "status": {
            "observedGeneration": 3,
            "conditions": [{"type": k, "status": "True"} for k in ("PredictorReady", "Ready")],
            "modelStatus": {"transitionStatus": "UpToDate"},
            "canaryStatuses": [{"name": "v2", "ready": True, "trafficPercent": 10}],
        },
    }
    assert t.judge(isvc, Expectation(generation=3, canary="v2", percent=50)) == (
        "pending",
        "canary v2 at 10%, not 50% yet",
    )
    assert t.judge(isvc, Expectation(generation=3, canary="v2", percent=10)) == (
        "pending",
        "CanaryPredictorReady is missing",
    )
    assert t.judge(isvc, Expectation(generation=3, canary="v3", percent=0)) == (
        "pending",
        "canary v3 has no status yet",
    )


def test_a_crd_without_spec_canary_fails_before_anything_is_written(k8s):
    t = target()
    install_crd(k8s, canary=False)  # KServe < 0.20
    t.stage(NAME, ref("1"), None, ORIGIN, direct=False)
    before = len(writes(k8s))
    with pytest.raises(
        MLPlatConfigError, match=r"CRD has no spec.canary: KServe < 0.20 cannot split traffic"
    ):
        t.check(NAME, t.current(NAME), canary=True)
    t.check(NAME, t.current(NAME), canary=False)  # a direct rollout needs no split
    assert len(writes(k8s)) == before


def test_the_service_annotation_decides_the_mode_over_the_connection(k8s):
    set_connection(
        "kserve_std",
        conn_type="kserve",
        extra={"kubernetes_conn_id": "kubernetes_default", "deployment_mode": "Knative"},
    )
    hook = KServeHook("kserve_std")
    assert hook.target_config(deployment=NAME).kind == "knative"  # no such service: the connection's mode
    t = target()
    t.stage(NAME, ref("1"), None, ORIGIN, direct=False)  # annotated Standard
    config = hook.target_config(deployment=NAME)
    assert (config.kind, config.deployment_mode) == ("standard", "Standard")
    t._patch(NAME, {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Raw"}}})
    with pytest.raises(MLPlatConfigError) as bad:
        hook.target_config(deployment=NAME)
    assert str(bad.value) == (
        "InferenceService default/tc (serving.kserve.io/deploymentMode): deployment mode 'Raw' is not one of "
        "Serverless, Knative, RawDeployment, Standard"
    )


def test_a_direct_rollout_replaces_the_predictor_and_its_rollback_restores_it(k8s, validate_manifest):
    t = target()
    with FakeKServeController(k8s):
        wait_ready(t, t.stage(NAME, ref("1"), None, ORIGIN, direct=False))
        previous, current = t.previous_spec(NAME), t.current(NAME)
        expect = t.stage(NAME, ref("2"), current, ORIGIN, direct=True)
        assert expect == Expectation(generation=2) and wait_ready(t, expect)["status"] == "ready"
        assert "canary" not in stored(k8s)["spec"]
        assert stored(k8s)["spec"]["predictor"]["model"]["storageUri"] == "s3://models/tc/2"
        done = t.rollback(NAME, ref("2"), "1", previous)
    assert done == "predictor spec of tc restored to version 1"
    isvc = stored(k8s)
    assert isvc["spec"]["predictor"] == previous["predictor"]
    assert isvc["metadata"]["labels"]["mlplat.io/model-version"] == "1"
    validate_manifest(isvc)
