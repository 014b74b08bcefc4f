"""KServe hook: the local KServe model server, or InferenceServices on Kubernetes."""

from __future__ import annotations

from airflow_provider_mlplat.hooks.base import MLPlatHook

INFERENCE_SERVICE = {"group": "serving.kserve.io", "version": "v1beta1", "plural": "inferenceservices"}


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
