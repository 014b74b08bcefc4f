"""InferenceServices on Kubernetes: access through the cncf-kubernetes hooks, deployment modes, readiness."""

from __future__ import annotations

import re
from typing import Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError, RolloutFailed
from airflow_provider_mlplat.extras import require_extra
from airflow_provider_mlplat.hooks.kserve_target import (
    Expectation,
    ModelVersionRef,
    RolloutTarget,
    TargetConfig,
)
from airflow_provider_mlplat.kubernetes_api import kubernetes_call

INFERENCE_SERVICE = {"group": "serving.kserve.io", "version": "v1beta1", "plural": "inferenceservices"}
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
#: annotations KServe's request logger copies into each event (``metadataAnnotations``)
LOGGED_ANNOTATIONS = ["mlplat.io/model-name", "mlplat.io/model-version"]
#: annotation carrying the version that serves as stable while a canary runs
STABLE_ANNOTATION = "mlplat.io/stable-model-version"
ROLLED_BACK_ANNOTATION = "mlplat.io/rolled-back-version"
VERSION_LABEL = "mlplat.io/model-version"
#: KServe's spellings of each deployment mode (renamed in 0.20), by the name this provider uses
MODES = {"Knative": ("Serverless", "Knative"), "Standard": ("RawDeployment", "Standard")}


def stable_version(isvc: dict[str, Any]) -> str:
    """
    The version an InferenceService serves as stable: the rollout's annotation, else its version
    label; ``unknown`` for a service this provider did not create (it serves something: never empty).

    :param isvc: the InferenceService.
    """
    meta = isvc["metadata"]
    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    return annotations.get(STABLE_ANNOTATION) or labels.get(VERSION_LABEL) or "unknown"


def normalize_mode(value: str, where: str) -> str:
    """
    ``Knative`` or ``Standard`` for any spelling KServe accepts; an error naming the value otherwise.

    :param value: the mode as written.
    :param where: what the value came from, for the error.
    """
    for mode, spellings in MODES.items():
        if value in spellings:
            return mode
    valid = ", ".join(s for spellings in MODES.values() for s in spellings)
    raise MLPlatConfigError(f"{where}: deployment mode {value!r} is not one of {valid}")


def deployment_mode(isvc: dict[str, Any] | None, default: str | None) -> str:
    """
    The KServe deployment mode of an InferenceService as written: its annotation, else its status,
    else the connection's default, else KServe's own default (Serverless).

    :param isvc: the object (None: not created yet).
    :param default: the cluster's default mode, from the connection.
    """
    isvc = isvc or {}
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    return (
        annotations.get(MODE_ANNOTATION)
        or (isvc.get("status") or {}).get("deploymentMode")
        or default
        or "Serverless"
    )


def label_value(value: str) -> str:
    """
    A string made a valid Kubernetes label value (63 chars of ``[A-Za-z0-9_.-]``, alphanumeric ends).

    :param value: any string.
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")


def with_removals(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """
    A merge patch that turns ``old`` into ``new``: keys ``new`` drops become None (removed).

    :param old: the current value.
    :param new: the wanted value.
    """
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        patch[key] = (
            with_removals(old[key], value)
            if isinstance(value, dict) and isinstance(old.get(key), dict)
            else value
        )
    return patch


def condition_failure(conditions: dict[str, dict[str, Any]], kinds: tuple[str, ...]) -> str | None:
    """
    Why the first of ``kinds`` is not True (None: all are).

    :param conditions: the status conditions by type.
    :param kinds: condition types that must be True.
    """
    for kind in kinds:
        condition = conditions.get(kind) or {}
        if condition.get("status") != "True":
            reason = " ".join(filter(None, (condition.get("reason"), condition.get("message"))))
            return f"{kind} is {condition.get('status', 'missing')}" + (f": {reason}" if reason else "")
    return None


def model_failure(model_status: dict[str, Any]) -> str | None:
    """
    The terminal failure a ``modelStatus`` reports (None: none).

    :param model_status: a ``modelStatus`` of the status or of a canary's status.
    """
    transition = model_status.get("transitionStatus")
    if transition not in ("BlockedByFailedLoad", "InvalidSpec"):
        return None
    failure = model_status.get("lastFailureInfo") or {}
    return f"model {transition}: {failure.get('reason', '')} {failure.get('message', '')}".strip()


def isvc_readiness(isvc: dict[str, Any] | None, generation: int) -> tuple[str, str]:
    """
    Whether an InferenceService is ready *for the given spec generation*: the controller observed
    it (``status.observedGeneration``), ``PredictorReady`` and ``Ready`` are True and the model's
    ``transitionStatus`` is ``UpToDate``. A Ready left over from an earlier generation is not ready.

    :param isvc: the object as read from the API (None: gone).
    :param generation: the ``metadata.generation`` the rollout wrote.
    """
    if isvc is None:
        return "failed", "the InferenceService does not exist"
    status = isvc.get("status") or {}
    observed = status.get("observedGeneration", 0)
    if observed < generation:
        return "pending", f"generation {generation} not observed yet (observedGeneration={observed})"
    model_status = status.get("modelStatus") or {}
    if failed := model_failure(model_status):
        return "failed", failed
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if pending := condition_failure(conditions, ("PredictorReady", "Ready")):
        return "pending", pending
    transition = model_status.get("transitionStatus")
    if transition != "UpToDate":
        return "pending", f"model transitionStatus is {transition or 'missing'}"
    return "ready", f"generation {generation} ready"


class InferenceServiceTarget(RolloutTarget):
    """
    ``InferenceService`` resources (serving.kserve.io/v1beta1) through the cncf-kubernetes hooks: what
    both deployment modes share (access, the manifest of one version, readiness per generation).
    """

    def __init__(self, config: TargetConfig) -> None:
        require_extra("kubernetes", "KServe on Kubernetes")
        super().__init__(config)

    def _hook(self):
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.config.kubernetes_conn_id)

    def _call(self, verb: str, resource: str = "inferenceservices.serving.kserve.io"):
        """:func:`kubernetes_call` for an API call of this target."""
        account = f"kubernetes connection {self.config.kubernetes_conn_id!r}"
        return kubernetes_call(verb, resource, self.namespace, account)

    def get(self, name: str) -> dict[str, Any] | None:
        """
        The InferenceService, or None.

        :param name: its name.
        """
        from kubernetes.client.exceptions import ApiException

        try:
            with self._call("get"):
                return self._hook().get_custom_object(
                    name=name, namespace=self.namespace, **INFERENCE_SERVICE
                )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def _patch(self, name: str, body: Any) -> dict[str, Any]:
        """Merge-patch (a dict) or JSON-patch (a list of operations) the InferenceService."""
        hook = self._hook()
        kwargs = {"_content_type": "application/json-patch+json"} if isinstance(body, list) else {}
        with self._call("patch"):
            return hook.custom_object_client.patch_namespaced_custom_object(
                name=name, namespace=self.namespace, body=body, **INFERENCE_SERVICE, **kwargs
            )

    def predictor_spec(self, model: ModelVersionRef) -> dict[str, Any]:
        """
        The predictor of one MLflow model version, with the configured extra fields and logger.

        :param model: the version.
        """
        predictor = dict(self.config.predictor)
        resources = predictor.pop("resources", None)
        model_spec: dict[str, Any] = {
            "modelFormat": {"name": "mlflow"},
            "protocolVersion": "v2",
            "storageUri": model.storage_uri,
        }
        if resources:
            model_spec["resources"] = resources
        spec: dict[str, Any] = {**predictor, "model": model_spec}
        if self.config.logger_url:  # the sink reads the served version from LOGGED_ANNOTATIONS in each event
            spec["logger"] = {
                "mode": "all",
                "url": self.config.logger_url,
                "metadataAnnotations": LOGGED_ANNOTATIONS,
            }
        return spec

    def manifest(
        self,
        name: str,
        model: ModelVersionRef,
        labels: dict[str, str],
        annotations: dict[str, str],
        predictor: dict[str, Any],
    ) -> dict[str, Any]:
        """
        The InferenceService serving ``predictor`` (from :meth:`predictor_spec`) for ``model``.

        :param name: InferenceService name.
        :param model: the version the labels name.
        :param labels: extra labels (values are made label-safe).
        :param annotations: extra annotations.
        :param predictor: the ``spec.predictor``.
        """
        all_labels = {"mlplat.io/model-name": model.model_name, VERSION_LABEL: model.version, **labels}
        logged = dict(zip(LOGGED_ANNOTATIONS, (model.model_name, model.version), strict=True))
        all_annotations = {TAG_ROUTING_ANNOTATION: "true", **logged, **annotations}
        if self.config.deployment_mode:
            all_annotations.setdefault(MODE_ANNOTATION, self.config.deployment_mode)
        return {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {k: label_value(v) for k, v in all_labels.items()},
                "annotations": all_annotations,
            },
            "spec": {"predictor": predictor},
        }

    def origin_metadata(self, model: ModelVersionRef, origin: dict[str, Any]) -> tuple[dict, dict]:
        """
        Labels and annotations that name the task and the version a rollout applied.

        :param model: the version.
        :param origin: dag_id, run_id and task_id.
        """
        labels = {"mlplat.io/dag-id": origin["dag_id"]}
        annotations = {
            "mlplat.io/run-id": origin["run_id"],
            "mlplat.io/task-id": origin["task_id"],
            "mlplat.io/model-uri": f"models:/{model.model_name}/{model.version}",
        }
        return labels, annotations

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """
        Create the InferenceService, or merge-patch it when it exists (predictor fields the manifest
        drops are removed); a repeated apply changes nothing.

        :param manifest: the full object.
        """
        from kubernetes.client.exceptions import ApiException

        name = manifest["metadata"]["name"]
        existing = self.get(name)
        if existing is None:
            try:
                with self._call("create"):
                    return self._hook().create_custom_object(
                        body=manifest, namespace=self.namespace, **INFERENCE_SERVICE
                    )
            except ApiException as err:
                if err.status != 409:  # created meanwhile (a retry racing itself): patch it below
                    raise
                existing = self.get(name) or {}
        spec = {"predictor": with_removals(existing["spec"]["predictor"], manifest["spec"]["predictor"])}
        if existing["spec"].get("canary"):
            spec["canary"] = []
        return self._patch(name, {**manifest, "spec": spec})

    def previous_spec(self, name):
        """The predictor spec and labels before the rollout (restored when a rollback finds no canary)."""
        isvc = self.get(name)
        if isvc is None:
            return None
        return {"predictor": isvc["spec"]["predictor"], "labels": isvc["metadata"].get("labels") or {}}

    def restore(self, name: str, isvc: dict[str, Any], previous: dict[str, Any], annotations: dict) -> None:
        """
        Put the predictor spec and labels from :meth:`previous_spec` back (after a direct rollout or
        a promotion).

        :param name: InferenceService name.
        :param isvc: the object now.
        :param previous: what :meth:`previous_spec` returned before the rollout.
        :param annotations: annotations to set with it.
        """
        labels = isvc["metadata"].get("labels") or {}
        body = {
            "metadata": {"labels": with_removals(labels, previous["labels"]), "annotations": annotations},
            "spec": {"predictor": with_removals(isvc["spec"]["predictor"], previous["predictor"])},
        }
        self._patch(name, body)

    def delete(self, name):
        """Delete the InferenceService."""
        from kubernetes.client.exceptions import ApiException

        try:
            with self._call("delete"):
                self._hook().delete_custom_object(name=name, namespace=self.namespace, **INFERENCE_SERVICE)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def post_smoke(self, url: str | None, name: str, request: dict[str, Any]) -> dict[str, Any]:
        """
        Send the smoke request to one predictor's URL.

        :param url: base URL of the predictor (None: it reports none).
        :param name: InferenceService name (the model name on the V2 path).
        :param request: the V2 request.
        """
        import httpx

        if not url:
            raise RolloutFailed(f"InferenceService {name} reports no URL to send the smoke request to")
        try:
            response = httpx.post(f"{url}/v2/models/{name}/infer", json=request, timeout=60)
        except httpx.HTTPError as err:
            raise RolloutFailed(f"smoke request to {url} failed: {err}") from None
        if response.status_code >= 400:
            raise RolloutFailed(
                f"smoke request to {url} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json()

    def judge(self, isvc: dict[str, Any] | None, expect: Expectation) -> tuple[str, str]:
        """
        Readiness of a read object for what a step expects (the mode may check more).

        :param isvc: the object (None: gone).
        :param expect: what the step expects.
        """
        return isvc_readiness(isvc, expect.generation or 0)

    async def readiness(self, name, expect):
        """Read the object with the async client and :meth:`judge` it."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio.client import CustomObjectsApi
        from kubernetes_asyncio.client.exceptions import ApiException

        hook = AsyncKubernetesHook(conn_id=self.config.kubernetes_conn_id)
        try:
            async with hook.get_conn() as api_client:
                isvc = await CustomObjectsApi(api_client).get_namespaced_custom_object(
                    name=name, namespace=self.namespace, **INFERENCE_SERVICE
                )
        except ApiException as err:
            if err.status == 404:
                return self.judge(None, expect)
            return "pending", f"Kubernetes API answered {err.status}: {err.reason}"
        return self.judge(isvc, expect)
