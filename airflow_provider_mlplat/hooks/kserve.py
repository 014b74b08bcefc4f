"""KServe hook and rollout targets: the local KServe model server, or InferenceServices on Kubernetes."""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatServiceUnavailable, RolloutFailed
from airflow_provider_mlplat.extras import require_extra
from airflow_provider_mlplat.hooks.base import MLPlatHook
from airflow_provider_mlplat.kubernetes_api import kubernetes_call

log = logging.getLogger(__name__)
INFERENCE_SERVICE = {"group": "serving.kserve.io", "version": "v1beta1", "plural": "inferenceservices"}
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
#: KServe deployment modes without Knative revisions: no canary traffic split
RAW_MODES = ("RawDeployment", "Standard")
#: annotation carrying the version that serves as stable while a canary runs
STABLE_ANNOTATION = "mlplat.io/stable-model-version"
#: seconds a local model load may take (download from MLflow + import)
LOAD_TIMEOUT = 600


def deployment_name(model_name: str, name: str | None = None) -> str:
    """
    The deployment (InferenceService) that serves a registered model: ``name``, or by default the
    model name in lowercase with dashes for underscores (what KServe accepts).

    :param model_name: registered MLflow model.
    :param name: explicit deployment name (wins when set).
    """
    return name or model_name.replace("_", "-").lower()


@dataclass(frozen=True)
class ModelVersionRef:
    """
    One registered MLflow model version, as a rollout deploys it.

    :param model_name: registered model name.
    :param version: version number.
    :param storage_uri: where its artifacts live (the KServe ``storageUri``).
    :param run_id: MLflow run that produced it.
    """

    model_name: str
    version: str
    storage_uri: str
    run_id: str | None = None


@dataclass(frozen=True)
class Deployed:
    """
    What a deployment serves now.

    :param stable: version serving the (rest of the) traffic, None when nothing serves yet.
    :param canary: version under test, if any.
    :param canary_percent: the canary's share of traffic.
    :param mode: ``local``, ``Serverless``, ``RawDeployment`` or ``Standard``.
    """

    stable: str | None
    canary: str | None
    canary_percent: int
    mode: str


class RolloutTarget(ABC):
    """
    Where a rollout happens. The rollout operator drives every target through the same steps:
    ``stage`` (new version ready, no traffic) -> ``smoke`` -> ``shift`` (canary percent) ... ->
    ``promote``, or ``rollback``; ``readiness`` is what the trigger polls. The methods share these
    parameters: ``name`` (deployment / InferenceService), ``model`` (the version being rolled out),
    ``stable`` (the version serving before, None when nothing did), ``current`` (what :meth:`current`
    returned), ``expect`` (what a step returned for readiness to check).

    :param config: JSON-able settings (see :meth:`KServeHook.target_config`), so a trigger can rebuild it.
    """

    kind = ""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.namespace: str = config["namespace"]

    @abstractmethod
    def current(self, name: str) -> Deployed | None:
        """What the deployment serves now; None when it does not exist."""

    def check(self, name: str, current: Deployed | None, canary: bool) -> None:  # noqa: B027 (optional)
        """Fail before any change when the target cannot do what the rollout needs (``canary``: a split)."""

    @abstractmethod
    def stage(
        self,
        name: str,
        model: ModelVersionRef,
        current: Deployed | None,
        origin: dict[str, str],
        direct: bool,
    ) -> dict[str, Any]:
        """Make the new version ready without traffic next to a stable one (with all of it when there is
        none, or when ``direct`` on a target that cannot hold an idle version); ``origin`` has dag_id,
        run_id and task_id for labels. Returns what readiness expects."""

    @abstractmethod
    def shift(self, name: str, model: ModelVersionRef, stable: str, percent: int) -> dict[str, Any]:
        """Give the canary ``percent`` of the traffic; returns what readiness expects."""

    @abstractmethod
    def promote(self, name: str, model: ModelVersionRef, stable: str | None) -> dict[str, Any]:
        """Make the new version the stable one with all traffic; returns what readiness expects."""

    @abstractmethod
    def rollback(self, name: str, model: ModelVersionRef, stable: str | None, previous: Any) -> str:
        """Send all traffic back to ``stable`` (remove a deployment the rollout created); says what it did.
        ``previous`` is what :meth:`previous_spec` returned before the rollout."""

    @abstractmethod
    def delete(self, name: str) -> bool:
        """Remove the deployment; False when it did not exist."""

    @abstractmethod
    def smoke(self, name: str, model: ModelVersionRef, request: dict[str, Any]) -> dict[str, Any]:
        """Send a V2 inference ``request`` to the new version only; returns the response body."""

    @abstractmethod
    def selectors(self, name: str, stable: str, model: ModelVersionRef) -> dict[str, str]:
        """PromQL label matchers of the canary and the stable version (keys ``canary``, ``stable``)."""

    #: (request counter, matcher of server errors, latency histogram, latency unit in seconds)
    metrics: tuple[str, str, str, float] = ("", "", "", 1.0)

    def analysis_queries(self, selector: str, window: str) -> dict[str, str]:
        """
        PromQL for ``requests``, ``errors`` (server errors) and ``p99`` (seconds) of one selector.

        :param selector: label matchers of one version (from :meth:`selectors`).
        :param window: PromQL range, e.g. ``60s``.
        """
        counter, errors, histogram, unit = self.metrics
        p99 = f"histogram_quantile(0.99, sum by (le) (rate({histogram}_bucket{{{selector}}}[{window}])))"
        return {
            "requests": f"sum(increase({counter}{{{selector}}}[{window}]))",
            "errors": f"sum(increase({counter}{{{selector},{errors}}}[{window}]))",
            "p99": p99 if unit == 1 else f"{p99} * {unit}",
        }

    @abstractmethod
    async def readiness(self, name: str, expect: dict[str, Any]) -> tuple[str, str]:
        """``("ready" | "pending" | "failed", detail)`` of the state a step expects (async, for triggers)."""

    @abstractmethod
    def describe(self, name: str) -> dict[str, Any]:
        """Serving facts for the asset event: url, revision and traffic per version."""

    def previous_spec(self, name: str) -> Any:
        """What :meth:`rollback` needs to restore the serving state from before the rollout."""
        return None


# -- the local model server ---------------------------------------------------------------------------


class LocalModelServerTarget(RolloutTarget):
    """The platform's KServe model server: versions loaded by name, traffic split per deployment."""

    kind = "local"
    metrics = (
        "mlplat_inference_requests_total",
        'status_code=~"5.."',
        "mlplat_inference_request_duration_seconds",
        1.0,
    )

    @property
    def url(self) -> str:
        """Base URL of the model server."""
        return self.config["url"]

    def _request(self, method: str, path: str, timeout: float = 30, **kwargs: Any):
        import httpx

        try:
            return httpx.request(method, f"{self.url}{path}", timeout=timeout, **kwargs)
        except httpx.HTTPError as err:
            raise MLPlatServiceUnavailable(
                f"model server at {self.url}: {method} {path} failed: {err}"
            ) from None

    def _call(self, method: str, path: str, timeout: float = 30, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, timeout, **kwargs)
        if response.status_code >= 400:
            raise MLPlatServiceUnavailable(
                f"model server at {self.url}: {method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json()

    def current(self, name: str) -> Deployed | None:
        """The deployment's split, from the server's deployment API."""
        response = self._request("GET", f"/mlplat/v1/deployments/{name}")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise MLPlatServiceUnavailable(
                f"model server at {self.url}: {response.status_code} {response.text}"
            )
        state = response.json()
        return Deployed(state["stable"], state["canary"], state["canary_percent"], "local")

    def stage(self, name, model, current, origin, direct):
        """Load the version into the server (no traffic yet)."""
        model_id = f"{model.model_name}@{model.version}"
        self._call("POST", f"/v2/repository/models/{model_id}/load", timeout=LOAD_TIMEOUT)
        return {"model": model_id}

    def _put(
        self, name: str, model_name: str, stable: str, canary: str | None, percent: int
    ) -> dict[str, Any]:
        body = {"model_name": model_name, "stable": stable, "canary": canary, "canary_percent": percent}
        state = self._call("PUT", f"/mlplat/v1/deployments/{name}", json=body)
        return {"deployment": name, "revision": state["revision"]}

    def shift(self, name, model, stable, percent):
        """Split the deployment between stable and canary."""
        return self._put(name, model.model_name, stable, model.version, percent)

    def promote(self, name, model, stable):
        """Route everything to the new version and unload the old one."""
        expect = self._put(name, model.model_name, model.version, None, 0)
        if stable is not None and stable != model.version:
            self._unload(f"{model.model_name}@{stable}")
        return expect

    def _unload(self, model_id: str) -> None:
        response = self._request("POST", f"/v2/repository/models/{model_id}/unload")
        if response.status_code >= 400:  # still served by another deployment, or gone: keep going
            log.info("%s stays loaded: %s", model_id, response.text[:200])

    def rollback(self, name, model, stable, previous):
        """Route everything to stable again (or remove a deployment that had none) and unload the version."""
        if stable is not None:
            self._put(name, model.model_name, stable, None, 0)
            done = f"traffic of {name} back to version {stable} (100%)"
        else:
            self.delete(name)
            done = f"deployment {name} removed (it had no earlier version)"
        self._unload(f"{model.model_name}@{model.version}")
        return done

    def delete(self, name):
        """Remove the deployment and unload its versions."""
        response = self._request("DELETE", f"/mlplat/v1/deployments/{name}")
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise MLPlatServiceUnavailable(f"model server: DELETE {name} answered {response.status_code}")
        return True

    def smoke(self, name, model, request):
        """Infer with the version directly, bypassing the deployment's split (not counted as traffic)."""
        response = self._request("POST", f"/v2/models/{model.model_name}@{model.version}/infer", json=request)
        if response.status_code >= 400:
            raise RolloutFailed(
                f"smoke request to {model.model_name}@{model.version} answered "
                f"{response.status_code}: {response.text[:500]}"
            )
        return response.json()

    def selectors(self, name, stable, model):
        """The server's own metrics are labelled by deployment and model version."""
        base = f'deployment="{name}",model_name="{model.model_name}"'
        return {
            "canary": f'{base},model_version="{model.version}"',
            "stable": f'{base},model_version="{stable}"',
        }

    async def readiness(self, name, expect):
        """A staged version is ready when loaded; a split when the server reports its revision ready."""
        import httpx

        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
                if "model" in expect:
                    response = await client.get(f"/v2/models/{expect['model']}/ready")
                    ok = response.status_code == 200 and response.json().get("ready") is True
                    return ("ready" if ok else "pending"), f"{expect['model']}: HTTP {response.status_code}"
                response = await client.get(f"/mlplat/v1/deployments/{name}")
        except httpx.HTTPError as err:
            return "pending", f"model server at {self.url} did not answer: {err}"
        if response.status_code != 200:
            return "pending", f"deployment {name}: HTTP {response.status_code}"
        state = response.json()
        if state["revision"] < expect["revision"]:
            return "pending", f"revision {state['revision']} < {expect['revision']}"
        return (
            "ready" if state["ready"] else "pending"
        ), f"revision {state['revision']} ready={state['ready']}"

    def describe(self, name):
        """URL, revision and traffic from the deployment API."""
        state = self._call("GET", f"/mlplat/v1/deployments/{name}")
        traffic = {state["stable"]: 100 - state["canary_percent"]}
        if state["canary"]:
            traffic[state["canary"]] = state["canary_percent"]
        return {
            "url": f"{self.url}/v2/models/{name}/infer",
            "revision": str(state["revision"]),
            "traffic": traffic,
        }


# -- InferenceServices on Kubernetes ------------------------------------------------------------------


def label_value(value: str) -> str:
    """
    A string made a valid Kubernetes label value (63 chars of ``[A-Za-z0-9_.-]``, alphanumeric ends).

    :param value: any string.
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")


def deployment_mode(isvc: dict[str, Any] | None, default: str | None) -> str:
    """
    The KServe deployment mode of an InferenceService: its annotation, else its status, else the
    connection's default, else KServe's own default (Serverless).

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
    transition = model_status.get("transitionStatus")
    if transition in ("BlockedByFailedLoad", "InvalidSpec"):
        failure = model_status.get("lastFailureInfo") or {}
        return (
            "failed",
            f"model {transition}: {failure.get('reason', '')} {failure.get('message', '')}".strip(),
        )
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for kind in ("PredictorReady", "Ready"):
        condition = conditions.get(kind) or {}
        if condition.get("status") != "True":
            reason = " ".join(filter(None, (condition.get("reason"), condition.get("message"))))
            return "pending", f"{kind} is {condition.get('status', 'missing')}" + (
                f": {reason}" if reason else ""
            )
    if transition != "UpToDate":
        return "pending", f"model transitionStatus is {transition or 'missing'}"
    return "ready", f"generation {generation} ready"


class InferenceServiceTarget(RolloutTarget):
    """
    ``InferenceService`` resources (serving.kserve.io/v1beta1) through the cncf-kubernetes hooks.
    Canary steps set ``canaryTrafficPercent`` (Serverless mode only); promote removes it; rollback
    sets it to 0, which pins all traffic to the last rolled-out revision, as KServe documents.
    """

    kind = "kubernetes"
    # Knative's queue-proxy metrics per revision (latencies in milliseconds)
    metrics = (
        "revision_app_request_count",
        'response_code_class="5xx"',
        "revision_app_request_latencies",
        0.001,
    )

    def __init__(self, config: dict[str, Any]) -> None:
        require_extra("kubernetes", "KServe on Kubernetes")
        super().__init__(config)

    def _hook(self):
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.config["kubernetes_conn_id"])

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

    def _call(self, verb: str):
        """:func:`kubernetes_call` for an InferenceService call of this target."""
        account = f"kubernetes connection {self.config['kubernetes_conn_id']!r}"
        return kubernetes_call(verb, "inferenceservices.serving.kserve.io", self.namespace, account)

    def _patch(self, name: str, body: Any) -> dict[str, Any]:
        hook = self._hook()
        kwargs = {"_content_type": "application/json-patch+json"} if isinstance(body, list) else {}
        with self._call("patch"):
            return hook.custom_object_client.patch_namespaced_custom_object(
                name=name, namespace=self.namespace, body=body, **INFERENCE_SERVICE, **kwargs
            )

    def current(self, name):
        """Stable version from the rollout's annotation; canary while ``canaryTrafficPercent`` is set."""
        isvc = self.get(name)
        if isvc is None:
            return None
        meta, predictor = isvc["metadata"], isvc["spec"]["predictor"]
        version = (meta.get("labels") or {}).get("mlplat.io/model-version")
        # a service this provider did not create still serves something: never treat it as empty
        stable = (meta.get("annotations") or {}).get(STABLE_ANNOTATION) or version or "unknown"
        percent = predictor.get("canaryTrafficPercent")
        canary = version if percent is not None and version != stable else None
        mode = deployment_mode(isvc, self.config.get("deployment_mode"))
        return Deployed(stable, canary, (percent or 0) if canary else 0, mode)

    def check(self, name, current, canary):
        """A canary split needs Knative revisions: fail fast in RawDeployment/Standard mode."""
        if canary and current is not None and current.stable is not None and current.mode in RAW_MODES:
            raise MLPlatConfigError(
                f"InferenceService {self.namespace}/{name} runs in {current.mode} mode, where KServe cannot split "
                "traffic between revisions (canary rollouts need Serverless mode). Use strategy='direct' for a "
                f"plain rollout, or switch the service to Serverless ({MODE_ANNOTATION}: Serverless)."
            )

    def manifest(
        self,
        name: str,
        model: ModelVersionRef,
        labels: dict[str, str],
        annotations: dict[str, str],
        canary_percent: int | None,
        predictor: dict[str, Any],
    ) -> dict[str, Any]:
        """
        The InferenceService for one MLflow model version.

        :param name: InferenceService name.
        :param model: the version.
        :param labels: extra labels (values are made label-safe).
        :param annotations: extra annotations.
        :param canary_percent: ``canaryTrafficPercent`` (None: not set).
        :param predictor: extra predictor fields (resources, minReplicas, maxReplicas, ...).
        """
        predictor = dict(predictor)
        resources = predictor.pop("resources", None)
        model_spec: dict[str, Any] = {
            "modelFormat": {"name": "mlflow"},
            "protocolVersion": "v2",
            "storageUri": model.storage_uri,
        }
        if resources:
            model_spec["resources"] = resources
        spec: dict[str, Any] = {**predictor, "model": model_spec}
        # the request-log sink reads the served version from these annotations in each logged event
        logged = {"mlplat.io/model-name": model.model_name, "mlplat.io/model-version": model.version}
        if self.config.get("logger_url"):
            spec["logger"] = {
                "mode": "all",
                "url": self.config["logger_url"],
                "metadataAnnotations": [*logged],
            }
        if canary_percent is not None:
            spec["canaryTrafficPercent"] = canary_percent
        all_labels = {
            "mlplat.io/model-name": model.model_name,
            "mlplat.io/model-version": model.version,
            **labels,
        }
        all_annotations = {TAG_ROUTING_ANNOTATION: "true", **logged, **annotations}
        if self.config.get("deployment_mode"):
            all_annotations.setdefault(MODE_ANNOTATION, self.config["deployment_mode"])
        return {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {k: label_value(v) for k, v in all_labels.items()},
                "annotations": all_annotations,
            },
            "spec": {"predictor": spec},
        }

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """
        Create the InferenceService, or merge-patch it when it exists (fields the manifest drops are
        removed); a repeated apply changes nothing.

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
        body = {
            **manifest,
            "spec": {
                "predictor": _with_removals(existing["spec"]["predictor"], manifest["spec"]["predictor"])
            },
        }
        return self._patch(name, body)

    def stage(self, name, model, current, origin, direct):
        """Apply the new version: at 0% next to a stable one (canary), or with all traffic (direct / first)."""
        stable = current.stable if current else None
        canary = stable is not None and stable != model.version and not direct
        labels = {"mlplat.io/dag-id": origin["dag_id"]}
        annotations = {
            "mlplat.io/run-id": origin["run_id"],
            "mlplat.io/task-id": origin["task_id"],
            "mlplat.io/model-uri": f"models:/{model.model_name}/{model.version}",
            STABLE_ANNOTATION: stable if canary else model.version,  # type: ignore[dict-item]
        }
        predictor = self.config.get("predictor") or {}
        obj = self.apply(self.manifest(name, model, labels, annotations, 0 if canary else None, predictor))
        return {"generation": obj["metadata"]["generation"]}

    def shift(self, name, model, stable, percent):
        """Set ``canaryTrafficPercent``."""
        obj = self._patch(name, {"spec": {"predictor": {"canaryTrafficPercent": percent}}})
        return {"generation": obj["metadata"]["generation"]}

    def promote(self, name, model, stable):
        """Remove ``canaryTrafficPercent``: the latest revision takes all traffic and becomes stable."""
        body = {
            "metadata": {"annotations": {STABLE_ANNOTATION: model.version}},
            "spec": {"predictor": {"canaryTrafficPercent": None}},
        }
        obj = self._patch(name, body)
        return {"generation": obj["metadata"]["generation"]}

    def previous_spec(self, name):
        """The predictor spec and labels before the rollout (restored by a direct-mode rollback)."""
        isvc = self.get(name)
        if isvc is None:
            return None
        return {"predictor": isvc["spec"]["predictor"], "labels": isvc["metadata"].get("labels") or {}}

    def rollback(self, name, model, stable, previous):
        """Pin traffic to the last rolled-out revision (canary), restore the old predictor spec
        (direct), or delete a service the rollout created."""
        isvc = self.get(name)
        if isvc is None:
            return f"InferenceService {self.namespace}/{name} does not exist: nothing to roll back"
        if previous is None:
            self.delete(name)
            return f"InferenceService {self.namespace}/{name} deleted (the rollout created it)"
        annotations = {"mlplat.io/rolled-back-version": model.version, STABLE_ANNOTATION: stable}
        predictor = isvc["spec"]["predictor"]
        if "canaryTrafficPercent" in predictor:
            body = {
                "metadata": {"annotations": annotations},
                "spec": {"predictor": {"canaryTrafficPercent": 0}},
            }
            done = f"canaryTrafficPercent of {name} set to 0: all traffic on the last rolled-out revision"
        else:
            labels = isvc["metadata"].get("labels") or {}
            body = {
                "metadata": {
                    "labels": _with_removals(labels, previous["labels"]),
                    "annotations": annotations,
                },
                "spec": {"predictor": _with_removals(predictor, previous["predictor"])},
            }
            done = f"predictor spec of {name} restored to version {stable}"
        self._patch(name, body)
        return done

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

    def _revision_url(self, isvc: dict[str, Any], tag: str) -> str | None:
        predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
        urls = [t.get("url") for t in predictor.get("traffic") or [] if t.get("tag") == tag and t.get("url")]
        return urls[0] if urls else None

    def smoke(self, name, model, request):
        """V2 request to the new revision: its ``latest`` tag URL during a canary, else the service URL."""
        import httpx

        isvc = self.get(name) or {}
        url = self._revision_url(isvc, "latest") or (isvc.get("status") or {}).get("url")
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

    def selectors(self, name, stable, model):
        """Knative queue-proxy metrics by revision: canary = latest ready, stable = latest rolled out."""
        predictor = ((self.get(name) or {}).get("status") or {}).get("components", {}).get("predictor", {})
        base = f'namespace_name="{self.namespace}"'
        return {
            "canary": f'{base},revision_name="{predictor.get("latestReadyRevision", "")}"',
            "stable": f'{base},revision_name="{predictor.get("latestRolledoutRevision", "")}"',
        }

    async def readiness(self, name, expect):
        """Read the object with the async client and judge it with :func:`isvc_readiness`."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio.client import CustomObjectsApi
        from kubernetes_asyncio.client.exceptions import ApiException

        hook = AsyncKubernetesHook(conn_id=self.config["kubernetes_conn_id"])
        try:
            async with hook.get_conn() as api_client:
                isvc = await CustomObjectsApi(api_client).get_namespaced_custom_object(
                    name=name, namespace=self.namespace, **INFERENCE_SERVICE
                )
        except ApiException as err:
            if err.status == 404:
                return isvc_readiness(None, expect["generation"])
            return "pending", f"Kubernetes API answered {err.status}: {err.reason}"
        return isvc_readiness(isvc, expect["generation"])

    def describe(self, name):
        """URL, rolled-out revision and traffic per version from the object's status."""
        isvc = self.get(name) or {}
        status = isvc.get("status") or {}
        predictor = (status.get("components") or {}).get("predictor") or {}
        version = (isvc.get("metadata", {}).get("labels") or {}).get("mlplat.io/model-version")
        return {
            "url": status.get("url"),
            "revision": predictor.get("latestRolledoutRevision") or predictor.get("latestReadyRevision"),
            "traffic": {
                version: 100 - (isvc.get("spec", {}).get("predictor", {}).get("canaryTrafficPercent") or 0)
            },
        }


def _with_removals(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that turns ``old`` into ``new``: keys ``new`` drops become None (removed)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        patch[key] = (
            _with_removals(old[key], value)
            if isinstance(value, dict) and isinstance(old.get(key), dict)
            else value
        )
    return patch


TARGETS: dict[str, type[RolloutTarget]] = {
    "local": LocalModelServerTarget,
    "kubernetes": InferenceServiceTarget,
}


def make_target(config: dict[str, Any]) -> RolloutTarget:
    """
    Rebuild a target from :meth:`KServeHook.target_config` output (triggers do this).

    :param config: the target settings.
    """
    return TARGETS[config["kind"]](config)


class KServeHook(MLPlatHook):
    """
    Reaches KServe where the connection says: a Kubernetes cluster (through the cncf-kubernetes
    ``KubernetesHook`` named by the ``kubernetes_conn_id`` extra) or the local model server at host.

    :param kserve_conn_id: Airflow connection id of type ``kserve``.
    """

    conn_name_attr = "kserve_conn_id"
    conn_type = "kserve"
    default_conn_name = "kserve_default"
    hook_name = "KServe"

    def __init__(self, kserve_conn_id: str = default_conn_name) -> None:
        super().__init__(conn_id=kserve_conn_id)

    @property
    def on_kubernetes(self) -> bool:
        """Whether this connection targets a Kubernetes cluster."""
        return bool(self.extra("kubernetes_conn_id"))

    @property
    def namespace(self) -> str:
        """Namespace of the InferenceServices (``local`` for the local model server)."""
        return self.extra("namespace", "default" if self.on_kubernetes else "local")

    @property
    def server_url(self) -> str:
        """Base URL of the local model server."""
        host = (self.connection.host or "").rstrip("/")
        if not host:
            raise ValueError(
                f"connection {self.conn_id!r} has neither a host (the local model server URL, e.g. "
                "http://127.0.0.1:8090) nor a kubernetes_conn_id extra"
            )
        return host if "://" in host else f"http://{host}:{self.connection.port or 8080}"

    @property
    def inference_log(self) -> str:
        """
        Where the local model server writes its inference log (the ``inference_log`` extra): a folder
        or a PostgreSQL URL, see :mod:`airflow_provider_mlplat.inference_log`.
        """
        root = self.extra("inference_log")
        if not root:
            raise MLPlatConfigError(
                f"connection {self.conn_id!r} has no inference_log extra: set it to the model server's "
                "inference log folder or PostgreSQL URL (mlplat up sets <home>/inference-log)"
            )
        return root

    def target_config(
        self, namespace: str | None = None, predictor: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """
        JSON-able settings of the rollout target this connection names.

        :param namespace: overrides the connection's namespace.
        :param predictor: extra InferenceService predictor fields (Kubernetes only).
        """
        if not self.on_kubernetes:
            return {"kind": "local", "namespace": namespace or self.namespace, "url": self.server_url}
        mode = self.extra("deployment_mode")
        if mode not in (None, "Serverless", *RAW_MODES):
            raise MLPlatConfigError(
                f"connection {self.conn_id!r}: deployment_mode={mode!r}; valid: Serverless, RawDeployment, Standard"
            )
        return {
            "kind": "kubernetes",
            "namespace": namespace or self.namespace,
            "kubernetes_conn_id": self.extra("kubernetes_conn_id"),
            "deployment_mode": mode,
            "logger_url": self.extra("logger_url"),
            "predictor": predictor or {},
        }

    def target(self, namespace: str | None = None, predictor: dict[str, Any] | None = None) -> RolloutTarget:
        """
        The rollout target of this connection.

        :param namespace: overrides the connection's namespace.
        :param predictor: extra InferenceService predictor fields (Kubernetes only).
        """
        return make_target(self.target_config(namespace, predictor))

    def storage_uri(self, artifact_uri: str) -> str:
        """
        Where KServe downloads a model from: the MLflow artifact URI, with ``mlflow-artifacts:/``
        (the MLflow server's proxy) mapped to the ``mlflow_artifacts_uri`` extra on Kubernetes.

        :param artifact_uri: the model version's download URI.
        """
        if not self.on_kubernetes or not artifact_uri.startswith("mlflow-artifacts:"):
            return artifact_uri
        root = self.extra("mlflow_artifacts_uri")
        if not root:
            raise MLPlatConfigError(
                f"model artifacts at {artifact_uri!r} are behind the MLflow server's proxy, which KServe cannot "
                f"read: set the {self.conn_id!r} connection's mlflow_artifacts_uri extra to the server's "
                "--artifacts-destination (e.g. s3://ml-artifacts/mlflow)"
            )
        return root.rstrip("/") + "/" + artifact_uri.split(":", 1)[1].lstrip("/")

    def kubernetes_hook(self):
        """The cncf-kubernetes ``KubernetesHook`` for the ``kubernetes_conn_id`` extra."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.extra("kubernetes_conn_id"))

    def probe(self) -> str:
        """List InferenceServices on Kubernetes, or ask the local server whether it is live."""
        if self.on_kubernetes:
            from kubernetes import client

            api = client.CustomObjectsApi(self.kubernetes_hook().get_conn())
            found = api.list_namespaced_custom_object(namespace=self.namespace, **INFERENCE_SERVICE)
            return f"KServe on Kubernetes: {len(found.get('items', []))} InferenceService(s) in {self.namespace!r}"
        import httpx

        response = httpx.get(f"{self.server_url}/v2/health/live", timeout=10)
        response.raise_for_status()
        return f"KServe model server at {self.server_url} is live"

    def get_conn(self):
        """A Kubernetes API client on Kubernetes, else an HTTP client for the local model server."""
        if self.on_kubernetes:
            return self.kubernetes_hook().get_conn()
        import httpx

        return httpx.Client(base_url=self.server_url, timeout=30)
