"""KServe hook, and the factory choosing a rollout target: the local model server, or InferenceServices in Knative or Standard mode."""

from __future__ import annotations

from typing import Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.base import MLPlatHook
from airflow_provider_mlplat.hooks.kserve_isvc import (
    INFERENCE_SERVICE,
    MODE_ANNOTATION,
    deployment_mode,
    normalize_mode,
)
from airflow_provider_mlplat.hooks.kserve_knative import KnativeTarget
from airflow_provider_mlplat.hooks.kserve_local import LocalModelServerTarget
from airflow_provider_mlplat.hooks.kserve_standard import StandardTarget
from airflow_provider_mlplat.hooks.kserve_target import RolloutTarget, TargetConfig

#: the model server's port (``mlplat up`` and the model server's own default)
MODEL_SERVER_PORT = 8090
TARGETS: dict[str, type[RolloutTarget]] = {
    "local": LocalModelServerTarget,
    "knative": KnativeTarget,
    "standard": StandardTarget,
}


def make_target(config: TargetConfig | dict[str, Any]) -> RolloutTarget:
    """
    Rebuild a target from :meth:`KServeHook.target_config` output (triggers do this).

    :param config: the target settings, or their :meth:`~TargetConfig.to_dict`.
    """
    if isinstance(config, dict):
        config = TargetConfig.from_dict(config)
    if config.kind not in TARGETS:
        raise MLPlatConfigError(f"rollout target kind {config.kind!r}; valid: {sorted(TARGETS)}")
    return TARGETS[config.kind](config)


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
        return host if "://" in host else f"http://{host}:{self.connection.port or MODEL_SERVER_PORT}"

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
        self,
        namespace: str | None = None,
        predictor: dict[str, Any] | None = None,
        deployment: str | None = None,
    ) -> TargetConfig:
        """
        The settings of the rollout target this connection names. On Kubernetes the deployment mode
        decides the kind: the InferenceService's annotation (or status), else the connection's
        ``deployment_mode`` extra, else KServe's default (Knative); either spelling of a mode.

        :param namespace: overrides the connection's namespace.
        :param predictor: extra InferenceService predictor fields (Kubernetes only).
        :param deployment: the InferenceService whose mode counts (None: the connection's).
        """
        namespace = namespace or self.namespace
        if not self.on_kubernetes:
            return TargetConfig(kind="local", namespace=namespace, url=self.server_url)
        default = self.extra("deployment_mode")
        if default is not None:
            normalize_mode(default, f"connection {self.conn_id!r} deployment_mode")
        config = TargetConfig(
            kind="knative",
            namespace=namespace,
            kubernetes_conn_id=self.extra("kubernetes_conn_id"),
            deployment_mode=default,
            logger_url=self.extra("logger_url"),
            predictor=dict(predictor or {}),
            predictor_url=self.extra("predictor_url"),
        )
        isvc = KnativeTarget(config).get(deployment) if deployment else None
        if isvc is None and default is None:
            return config
        mode = deployment_mode(isvc, default)
        where = (
            f"InferenceService {namespace}/{deployment} ({MODE_ANNOTATION})"
            if isvc
            else f"connection {self.conn_id!r}"
        )
        kind = normalize_mode(mode, where).lower()
        return TargetConfig.from_dict({**config.to_dict(), "kind": kind, "deployment_mode": mode})

    def target(
        self,
        namespace: str | None = None,
        predictor: dict[str, Any] | None = None,
        deployment: str | None = None,
    ) -> RolloutTarget:
        """
        The rollout target of this connection (see :meth:`target_config`).

        :param namespace: overrides the connection's namespace.
        :param predictor: extra InferenceService predictor fields (Kubernetes only).
        :param deployment: the InferenceService whose mode counts.
        """
        return make_target(self.target_config(namespace, predictor, deployment))

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
