"""InferenceServices in Standard (RawDeployment) mode: canaries as ``spec.canary[]`` entries (KServe >= 0.20)."""

from __future__ import annotations

import json
import logging
from typing import Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.kserve_isvc import (
    INFERENCE_SERVICE,
    ROLLED_BACK_ANNOTATION,
    STABLE_ANNOTATION,
    VERSION_LABEL,
    InferenceServiceTarget,
    condition_failure,
    deployment_mode,
    isvc_readiness,
    model_failure,
    stable_version,
)
from airflow_provider_mlplat.hooks.kserve_target import Deployed, Expectation

log = logging.getLogger(__name__)
#: annotation carrying the version of the canary predictor while one runs
CANARY_ANNOTATION = "mlplat.io/canary-model-version"
#: the condition KServe writes for its canaries (its e2e test waits for it; reason AllCanariesReady)
CANARY_CONDITION = "CanaryPredictorReady"
CRD = f"{INFERENCE_SERVICE['plural']}.{INFERENCE_SERVICE['group']}"
#: one predictor's Service inside the cluster (KServe names it ``<isvc>-<predictor name>-predictor``)
MODEL_CONTAINER = "kserve-container"
PREDICTOR_URL = "http://{name}-{predictor}-predictor.{namespace}.svc.cluster.local"


def canary_name(version: str) -> str:
    """
    The ``predictor.name`` of a version's canary (a DNS label: it names its Deployment and Service).

    :param version: the model version.
    """
    return f"v{version}"


def _escape(key: str) -> str:
    """A map key as a JSON pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


class StandardTarget(InferenceServiceTarget):
    """
    Standard mode, as KServe's own e2e test drives it: stage adds ``spec.canary: [{trafficPercent: 0,
    predictor: {name: v<version>, ...}}]`` beside the untouched stable predictor; each step raises
    ``trafficPercent``; promote moves the canary's predictor into ``spec.predictor`` (its pods stay)
    and empties ``spec.canary``; rollback empties ``spec.canary``. A direct rollout replaces the
    predictor, and its rollback restores the old one.
    """

    kind = "standard"
    # the MLflow runtime (MLServer) per pod: REST requests by status code, latency in seconds
    metrics = (
        "rest_server_requests_total",
        'status_code=~"5.."',
        "rest_server_request_duration_seconds",
        1.0,
    )

    def current(self, name):
        """Stable version from the rollout's annotation; the canary's from its own while ``spec.canary`` is set."""
        isvc = self.get(name)
        if isvc is None:
            return None
        meta = isvc["metadata"]
        annotations = meta.get("annotations") or {}
        stable = stable_version(isvc)
        canaries = isvc["spec"].get("canary") or []
        canary = annotations.get(CANARY_ANNOTATION) if canaries else None
        percent = canaries[0].get("trafficPercent", 0) if canary else 0
        return Deployed(stable, canary, percent, deployment_mode(isvc, self.config.deployment_mode))

    def _crd_has_canary(self) -> bool | None:
        """Whether the cluster's InferenceService CRD has ``spec.canary`` (None: the CRD cannot be read)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = client.ApiextensionsV1Api(self._hook().get_conn())
        try:
            with self._call("get", "customresourcedefinitions.apiextensions.k8s.io"):
                response = api.read_custom_resource_definition(CRD, _preload_content=False)
        except (ApiException, MLPlatConfigError) as err:  # not allowed to read it, or not there
            log.warning("cannot read the CRD %s to check for spec.canary: %s", CRD, err)
            return None
        crd = json.loads(response.data)
        for version in crd["spec"]["versions"]:
            if version["name"] == INFERENCE_SERVICE["version"]:
                spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
                return "canary" in spec.get("properties", {})
        return False

    def check(self, name, current, canary):
        """A canary needs ``spec.canary`` in the CRD (KServe >= 0.20): fail before any change without it."""
        if not canary or current is None or current.stable is None:
            return
        if self._crd_has_canary() is False:
            raise MLPlatConfigError(
                f"InferenceService {self.namespace}/{name} runs in {current.mode} mode, and this cluster's "
                f"{CRD} CRD has no spec.canary: KServe < 0.20 cannot split traffic in that mode. Upgrade "
                "KServe to 0.20 or later, use strategy='direct', or switch the service to Knative "
                "(serving.kserve.io/deploymentMode: Serverless)."
            )

    def stage(self, name, model, current, origin, direct):
        """A 0% canary beside the stable predictor; the whole predictor when there is no stable one or ``direct``."""
        stable = current.stable if current else None
        labels, annotations = self.origin_metadata(model, origin)
        if stable is None or stable == model.version or direct:
            annotations[STABLE_ANNOTATION] = model.version
            obj = self.apply(self.manifest(name, model, labels, annotations, self.predictor_spec(model)))
            return Expectation(generation=obj["metadata"]["generation"])
        canary = canary_name(model.version)
        predictor = {**self.predictor_spec(model), "name": canary}
        # the CRD requires a container name in a canary's model (KServe's default name for it)
        predictor["model"] = {"name": MODEL_CONTAINER, **predictor["model"]}
        entry = {"trafficPercent": 0, "predictor": predictor}
        annotations |= {STABLE_ANNOTATION: stable, CANARY_ANNOTATION: model.version}
        body = {"metadata": {"labels": labels, "annotations": annotations}, "spec": {"canary": [entry]}}
        obj = self._patch(name, body)
        if not obj["spec"].get("canary"):  # an API server without the field prunes it
            raise MLPlatConfigError(
                f"the Kubernetes API dropped spec.canary of InferenceService {self.namespace}/{name}: its "
                "CRD is older than KServe 0.20, which added canaries in Standard mode"
            )
        return Expectation(generation=obj["metadata"]["generation"], canary=canary, percent=0)

    def shift(self, name, model, stable, percent):
        """Set the canary's ``trafficPercent`` (a JSON patch that first tests it is this version's canary)."""
        canary = canary_name(model.version)
        obj = self._patch(
            name,
            [
                {"op": "test", "path": "/spec/canary/0/predictor/name", "value": canary},
                {"op": "replace", "path": "/spec/canary/0/trafficPercent", "value": percent},
            ],
        )
        return Expectation(generation=obj["metadata"]["generation"], canary=canary, percent=percent)

    def promote(self, name, model, stable):
        """Move the canary's predictor into ``spec.predictor`` and empty ``spec.canary``, in one write."""
        isvc = self.get(name) or {}
        canary = canary_name(model.version)
        ops: list[dict[str, Any]] = [
            {
                "op": "add",
                "path": f"/metadata/annotations/{_escape(STABLE_ANNOTATION)}",
                "value": model.version,
            },
            {"op": "add", "path": f"/metadata/labels/{_escape(VERSION_LABEL)}", "value": model.version},
        ]
        entries = isvc.get("spec", {}).get("canary") or []
        if entries:  # a direct rollout has no canary to promote
            if entries[0]["predictor"].get("name") != canary:
                raise MLPlatConfigError(
                    f"InferenceService {self.namespace}/{name}: the canary is "
                    f"{entries[0]['predictor'].get('name')!r}, not {canary!r} of version {model.version}"
                )
            ops += [
                {"op": "replace", "path": "/spec/predictor", "value": entries[0]["predictor"]},
                {"op": "replace", "path": "/spec/canary", "value": []},
            ]
        if CANARY_ANNOTATION in (isvc.get("metadata", {}).get("annotations") or {}):
            ops.append({"op": "remove", "path": f"/metadata/annotations/{_escape(CANARY_ANNOTATION)}"})
        obj = self._patch(name, ops)
        return Expectation(generation=obj["metadata"]["generation"])

    def rollback(self, name, model, stable, previous):
        """Empty ``spec.canary`` (the stable predictor never changed), restore the old predictor (direct,
        or after promotion), or delete a service the rollout created."""
        isvc = self.get(name)
        if isvc is None:
            return f"InferenceService {self.namespace}/{name} does not exist: nothing to roll back"
        if previous is None:
            self.delete(name)
            return f"InferenceService {self.namespace}/{name} deleted (the rollout created it)"
        annotations = {ROLLED_BACK_ANNOTATION: model.version, STABLE_ANNOTATION: stable}
        if isvc["spec"].get("canary"):
            body = {
                "metadata": {"annotations": {**annotations, CANARY_ANNOTATION: None}},
                "spec": {"canary": []},
            }
            self._patch(name, body)
            return f"spec.canary of {name} emptied: all traffic on the stable predictor (version {stable})"
        self.restore(name, isvc, previous, annotations)
        return f"predictor spec of {name} restored to version {stable}"

    def smoke(self, name, model, request):
        """V2 request to the canary's own Service (the predictor's during a direct rollout)."""
        isvc = self.get(name) or {}
        canaries = isvc.get("spec", {}).get("canary") or []
        predictor = (
            canaries[0]["predictor"]["name"]
            if canaries
            else isvc.get("spec", {}).get("predictor", {}).get("name")
        )
        if predictor is None:
            url = (isvc.get("status") or {}).get("url")
        else:
            template = self.config.predictor_url or PREDICTOR_URL
            url = template.format(name=name, predictor=predictor, namespace=self.namespace)
        return self.post_smoke(url, name, request)

    def selectors(self, name, stable, model):
        """Per-predictor pod series: a predictor's pods are named after its Deployment."""
        isvc = self.get(name) or {}
        stable_name = isvc.get("spec", {}).get("predictor", {}).get("name")

        def pods(predictor: str | None) -> str:
            deployment = f"{name}-{predictor}-predictor" if predictor else f"{name}-predictor"
            return f'namespace="{self.namespace}",pod=~"{deployment}-[a-z0-9]+-[a-z0-9]+"'

        return {"canary": pods(canary_name(model.version)), "stable": pods(stable_name)}

    def judge(self, isvc, expect):
        """Readiness of the generation, then of the expected canary: its ``canaryStatuses`` entry (ready,
        at the expected percent, its model loaded) and the ``CanaryPredictorReady`` condition."""
        state, detail = isvc_readiness(isvc, expect.generation or 0)
        if state != "ready" or expect.canary is None:
            return state, detail
        status = (isvc or {}).get("status") or {}
        entry = next((c for c in status.get("canaryStatuses") or [] if c.get("name") == expect.canary), None)
        if entry is None:
            return "pending", f"canary {expect.canary} has no status yet"
        if failed := model_failure(entry.get("modelStatus") or {}):
            return "failed", f"canary {expect.canary}: {failed}"
        if entry.get("trafficPercent") != expect.percent:
            return (
                "pending",
                f"canary {expect.canary} at {entry.get('trafficPercent')}%, not {expect.percent}% yet",
            )
        if entry.get("ready") is not True:
            return "pending", f"canary {expect.canary} is not ready"
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        if pending := condition_failure(conditions, (CANARY_CONDITION,)):
            return "pending", pending
        return "ready", f"{detail}; canary {expect.canary} ready at {expect.percent}%"

    def describe(self, name):
        """URL, the stable predictor's Deployment and traffic per version from the object."""
        isvc = self.get(name) or {}
        spec, meta = isvc.get("spec", {}), isvc.get("metadata", {})
        predictor = spec.get("predictor", {}).get("name")
        stable = (meta.get("annotations") or {}).get(STABLE_ANNOTATION)
        canaries = spec.get("canary") or []
        percent = canaries[0].get("trafficPercent", 0) if canaries else 0
        traffic = {stable: 100 - percent}
        if canaries:
            traffic[(meta.get("annotations") or {}).get(CANARY_ANNOTATION)] = percent
        return {
            "url": (isvc.get("status") or {}).get("url"),
            "revision": f"{name}-{predictor}-predictor" if predictor else f"{name}-predictor",
            "traffic": traffic,
        }
