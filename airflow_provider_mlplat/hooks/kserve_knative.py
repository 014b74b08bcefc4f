"""InferenceServices in Knative (Serverless) mode: canary traffic split between revisions by ``canaryTrafficPercent``."""

from __future__ import annotations

from typing import Any

from airflow_provider_mlplat.hooks.kserve_isvc import (
    ROLLED_BACK_ANNOTATION,
    STABLE_ANNOTATION,
    VERSION_LABEL,
    InferenceServiceTarget,
    deployment_mode,
    stable_version,
)
from airflow_provider_mlplat.hooks.kserve_target import Deployed, Expectation


def _predictor_status(isvc: dict[str, Any]) -> dict[str, Any]:
    return ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}


class KnativeTarget(InferenceServiceTarget):
    """
    Knative mode: each predictor change is a revision. Stage applies the new version at
    ``canaryTrafficPercent: 0``, steps raise it, promote removes it (the latest revision takes all
    traffic), rollback sets it to 0, which pins all traffic to the last rolled-out revision, as KServe
    documents.
    """

    kind = "knative"
    # Knative's queue-proxy metrics per revision (latencies in milliseconds)
    metrics = (
        "revision_app_request_count",
        'response_code_class="5xx"',
        "revision_app_request_latencies",
        0.001,
    )

    def current(self, name):
        """Stable version from the rollout's annotation; canary while ``canaryTrafficPercent`` is set."""
        isvc = self.get(name)
        if isvc is None:
            return None
        meta, predictor = isvc["metadata"], isvc["spec"]["predictor"]
        version = (meta.get("labels") or {}).get(VERSION_LABEL)
        stable = stable_version(isvc)
        percent = predictor.get("canaryTrafficPercent")
        canary = version if percent is not None and version != stable else None
        mode = deployment_mode(isvc, self.config.deployment_mode)
        return Deployed(stable, canary, (percent or 0) if canary else 0, mode)

    def stage(self, name, model, current, origin, direct):
        """Apply the new version: at 0% next to a stable one (canary), or with all traffic (direct / first)."""
        stable = current.stable if current else None
        canary = stable is not None and stable != model.version and not direct
        labels, annotations = self.origin_metadata(model, origin)
        annotations[STABLE_ANNOTATION] = stable if canary else model.version  # type: ignore[assignment]
        predictor = self.predictor_spec(model)
        if canary:
            predictor["canaryTrafficPercent"] = 0
        obj = self.apply(self.manifest(name, model, labels, annotations, predictor))
        return Expectation(generation=obj["metadata"]["generation"])

    def shift(self, name, model, stable, percent):
        """Set ``canaryTrafficPercent``."""
        obj = self._patch(name, {"spec": {"predictor": {"canaryTrafficPercent": percent}}})
        return Expectation(generation=obj["metadata"]["generation"])

    def promote(self, name, model, stable):
        """Remove ``canaryTrafficPercent``: the latest revision takes all traffic and becomes stable."""
        body = {
            "metadata": {"annotations": {STABLE_ANNOTATION: model.version}},
            "spec": {"predictor": {"canaryTrafficPercent": None}},
        }
        obj = self._patch(name, body)
        return Expectation(generation=obj["metadata"]["generation"])

    def rollback(self, name, model, stable, previous):
        """Pin traffic to the last rolled-out revision (canary), restore the old predictor spec
        (direct, or after promotion), or delete a service the rollout created."""
        isvc = self.get(name)
        if isvc is None:
            return f"InferenceService {self.namespace}/{name} does not exist: nothing to roll back"
        if previous is None:
            self.delete(name)
            return f"InferenceService {self.namespace}/{name} deleted (the rollout created it)"
        annotations = {ROLLED_BACK_ANNOTATION: model.version, STABLE_ANNOTATION: stable}
        if "canaryTrafficPercent" in isvc["spec"]["predictor"]:
            body = {
                "metadata": {"annotations": annotations},
                "spec": {"predictor": {"canaryTrafficPercent": 0}},
            }
            self._patch(name, body)
            return f"canaryTrafficPercent of {name} set to 0: all traffic on the last rolled-out revision"
        self.restore(name, isvc, previous, annotations)
        return f"predictor spec of {name} restored to version {stable}"

    def smoke(self, name, model, request):
        """V2 request to the new revision: its ``latest`` tag URL during a canary, else the service URL."""
        isvc = self.get(name) or {}
        tagged = [
            t.get("url") for t in _predictor_status(isvc).get("traffic") or [] if t.get("tag") == "latest"
        ]
        url = next(filter(None, tagged), None) or (isvc.get("status") or {}).get("url")
        return self.post_smoke(url, name, request)

    def selectors(self, name, stable, model):
        """Knative queue-proxy metrics by revision: canary = latest ready, stable = latest rolled out."""
        predictor = _predictor_status(self.get(name) or {})
        base = f'namespace_name="{self.namespace}"'
        return {
            "canary": f'{base},revision_name="{predictor.get("latestReadyRevision", "")}"',
            "stable": f'{base},revision_name="{predictor.get("latestRolledoutRevision", "")}"',
        }

    def describe(self, name):
        """URL, rolled-out revision and traffic per version from the object's status."""
        isvc = self.get(name) or {}
        predictor = _predictor_status(isvc)
        version = (isvc.get("metadata", {}).get("labels") or {}).get(VERSION_LABEL)
        return {
            "url": (isvc.get("status") or {}).get("url"),
            "revision": predictor.get("latestRolledoutRevision") or predictor.get("latestReadyRevision"),
            "traffic": {
                version: 100 - (isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent") or 0)
            },
        }
