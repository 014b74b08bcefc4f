"""KubeRay hook: Ray jobs as ``RayJob`` custom resources, through the cncf-kubernetes hooks."""

from __future__ import annotations

import hashlib
import io
import re
import sys
import zipfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.ray import (
    TERMINAL_STATUSES,
    JobReader,
    RayHook,
    RayJobState,
    shared_client,
)
from airflow_provider_mlplat.kubernetes_api import kubernetes_call

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook, KubernetesHook

RAYJOB = {"group": "ray.io", "version": "v1", "plural": "rayjobs"}
#: KubeRay refuses longer RayJob names (it appends 6 characters for the RayCluster).
MAX_NAME_LENGTH = 47
DEFAULT_RESOURCES = {"cpu": "1", "memory": "2Gi"}
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")


def _label(value: str) -> str:
    """A Kubernetes label value: at most 63 characters, alphanumeric at both ends."""
    return _LABEL_VALUE.sub("-", value)[:63].strip("-_.")


def _container(name: str, image: str, resources: Mapping[str, str], ports: list[dict] | None = None) -> dict:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
    }
    if ports:
        container["ports"] = ports
    return container


def cluster_spec(
    image: str | None = None,
    head_resources: Mapping[str, str] | None = None,
    worker_resources: Mapping[str, str] | None = None,
    worker_replicas: int = 1,
) -> dict[str, Any]:
    """
    A ``rayClusterSpec``: one head and ``worker_replicas`` identical workers of one image.

    :param image: container image (default: ``rayproject/ray`` of the installed Ray and Python).
    :param head_resources: head container requests = limits (e.g. ``{"cpu": "2", "memory": "4Gi"}``).
    :param worker_resources: each worker's requests = limits.
    :param worker_replicas: number of workers (0: the head does all the work).
    """
    ray_version = version("ray")
    image = image or f"rayproject/ray:{ray_version}-py{sys.version_info.major}{sys.version_info.minor}"
    ports = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    head = _container("ray-head", image, head_resources or DEFAULT_RESOURCES, ports)
    spec: dict[str, Any] = {
        "rayVersion": ray_version,
        "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [head]}}},
    }
    if worker_replicas:
        worker = _container("ray-worker", image, worker_resources or DEFAULT_RESOURCES)
        spec["workerGroupSpecs"] = [
            {
                "groupName": "workers",
                "replicas": worker_replicas,
                "minReplicas": worker_replicas,
                "maxReplicas": worker_replicas,
                "rayStartParams": {},
                "template": {"spec": {"containers": [worker]}},
            }
        ]
    return spec


def package_working_dir(directory: str | Path) -> str:
    """
    Zip a local working dir into artifact storage under a content hash (so pods can fetch it, and
    an unchanged folder is uploaded once); return its URI for the runtime env.

    :param directory: local folder.
    """
    from airflow_provider_mlplat.artifacts import artifact_root, artifact_uri, write

    root = Path(directory).resolve()
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            relative, data = path.relative_to(root).as_posix(), path.read_bytes()
            digest.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
            # one top-level folder: Ray unpacks a remote package's single top folder as the working dir
            info = zipfile.ZipInfo(f"{root.name}/{relative}", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    target = artifact_root() / "ray" / "working_dirs" / f"{_label(root.name)}-{digest.hexdigest()[:16]}.zip"
    return artifact_uri(target) if target.exists() else write(target, buffer.getvalue())


class KubeRayHook(RayHook):
    """
    Runs Ray jobs on Kubernetes as KubeRay ``RayJob`` resources.

    Uses a ``ray`` connection whose ``kubernetes_conn_id`` extra names a cncf-kubernetes connection
    (kube config, context, in-cluster) and whose ``namespace`` extra (default: the Kubernetes
    connection's) holds the RayJobs. The host, when set, is a dashboard address that overrides the
    RayJob's in-cluster ``status.dashboardURL`` for logs and links; the password is the Ray token.
    The ``env_secret`` extra names a Secret of that namespace that every Ray pod takes its
    environment from (``envFrom``): how credentials reach the job without entering the RayJob.

    :param ray_conn_id: Airflow connection id of type ``ray``.
    """

    hook_name = "KubeRay"
    required_extras = ("ray", "kubernetes")
    target = "kuberay"
    async_client_modules = ("kubernetes_asyncio.client", "airflow.providers.cncf.kubernetes.hooks.kubernetes")

    @property
    def kubernetes_conn_id(self) -> str:
        """The cncf-kubernetes connection id from the ``kubernetes_conn_id`` extra."""
        conn_id = self.extra("kubernetes_conn_id")
        if not conn_id:
            raise MLPlatConfigError(
                f"connection {self.conn_id!r} has no kubernetes_conn_id extra: KubeRay needs one "
                "(a connection of type kubernetes)"
            )
        return conn_id

    @cached_property
    def kubernetes_hook(self) -> KubernetesHook:
        """The cncf-kubernetes ``KubernetesHook`` (cached)."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.kubernetes_conn_id)

    @cached_property
    def async_kubernetes_hook(self) -> AsyncKubernetesHook:
        """The cncf-kubernetes ``AsyncKubernetesHook`` (cached; it caches its config)."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        return AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)

    @cached_property
    def namespace(self) -> str:
        """Namespace of the RayJobs: the ``namespace`` extra, else the Kubernetes connection's."""
        return self.extra("namespace") or self.kubernetes_hook.get_namespace() or "default"

    async def anamespace(self) -> str:
        """:attr:`namespace`, reading the Kubernetes connection without blocking the event loop."""
        if "namespace" not in self.__dict__:
            extras = await self.async_kubernetes_hook.get_conn_extras()
            self.__dict__["namespace"] = self.extra("namespace") or extras.get("namespace") or "default"
        return self.namespace

    def _async_api(self):
        """The async Kubernetes API client, shared in this event loop (see ``shared_client``)."""
        return shared_client(("kubernetes", self.kubernetes_conn_id), self.async_kubernetes_hook.get_conn)

    def _call(self, verb: str, namespace: str | None = None):
        """:func:`kubernetes_call` for a RayJob call of this connection."""
        return kubernetes_call(
            verb,
            "rayjobs.ray.io",
            namespace or self.namespace,
            f"kubernetes connection {self.kubernetes_conn_id!r}",
        )

    def probe(self) -> str:
        """List the RayJobs of the namespace (proves the API answers and KubeRay's CRD is there)."""
        with self._call("list"):
            found = self.kubernetes_hook.custom_object_client.list_namespaced_custom_object(
                namespace=self.namespace, **RAYJOB
            )
        return f"KubeRay: {len(found.get('items', []))} RayJob(s) in namespace {self.namespace!r}"

    # -- secrets ------------------------------------------------------------------------------

    def prepare_secret_env(self, job_id: str, env: Mapping[str, str], entrypoint: str) -> str:
        """
        Check that the connection's ``env_secret`` (which every Ray pod takes its environment from)
        holds the secret variables; the values never enter the RayJob.

        :param job_id: RayJob name.
        :param env: variable names and secret values.
        :param entrypoint: the job's shell command (returned unchanged).
        """
        from kubernetes.client import ApiException

        name = self.extra("env_secret")
        if not env and not name:
            return entrypoint
        keys = ", ".join(env)
        if not name:
            raise MLPlatConfigError(
                f"RayJob {job_id} needs {keys}, which on KubeRay come from a Kubernetes Secret, never the "
                f"RayJob spec: create one in namespace {self.namespace!r} with those keys and name it in the "
                f"env_secret extra of connection {self.conn_id!r}"
            )
        try:
            with kubernetes_call(
                "get", "secrets", self.namespace, f"kubernetes connection {self.kubernetes_conn_id!r}"
            ):
                secret = self.kubernetes_hook.core_v1_client.read_namespaced_secret(name, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            raise MLPlatConfigError(
                f"Secret {name!r} (env_secret of connection {self.conn_id!r}) does not exist in namespace "
                f"{self.namespace!r}: create it there{f' with the keys {keys}' if keys else ''}"
            ) from None
        missing = [key for key in env if key not in (secret.data or {})]
        if missing:
            raise MLPlatConfigError(
                f"Secret {name!r} in namespace {self.namespace!r} lacks the key(s) {', '.join(missing)} "
                f"that RayJob {job_id} needs; it has: {', '.join(sorted(secret.data or {})) or 'none'}"
            )
        return entrypoint

    def discard_secret_env(self, job_id: str) -> None:
        """Nothing to discard: the Secret belongs to the namespace, not to one job.

        :param job_id: RayJob name.
        """

    # -- manifests ----------------------------------------------------------------------------

    def rayjob_manifest(
        self,
        job_id: str,
        entrypoint: str,
        runtime_env: dict[str, Any],
        metadata: dict[str, str],
        entrypoint_num_cpus: float | None = None,
        cluster: dict[str, Any] | None = None,
        shutdown_after_job_finishes: bool = True,
        ttl_seconds_after_finished: int = 600,
        active_deadline_seconds: int | None = None,
        backoff_limit: int = 0,
    ) -> dict[str, Any]:
        """
        The ``RayJob`` resource for a job (valid against KubeRay's ``ray.io/v1`` CRD).

        :param job_id: resource name and Ray submission id (``spec.jobId``).
        :param entrypoint: shell command the job runs.
        :param runtime_env: Ray runtime env (``working_dir`` must be a URI or a path in the image).
        :param metadata: job metadata (also labels/annotations: ``airflow_*`` keys).
        :param entrypoint_num_cpus: CPUs reserved for the entrypoint.
        :param cluster: the ``rayClusterSpec`` (default: :func:`cluster_spec`).
        :param shutdown_after_job_finishes: delete the RayCluster when the job ends.
        :param ttl_seconds_after_finished: seconds the cluster stays after the job ends (logs stay
            readable for the operator meanwhile).
        :param active_deadline_seconds: KubeRay fails the job after this many seconds.
        :param backoff_limit: how many times KubeRay retries a failed job on a new cluster.
        """
        import yaml

        spec: dict[str, Any] = {
            "entrypoint": entrypoint,
            "jobId": job_id,
            "metadata": dict(metadata),
            "shutdownAfterJobFinishes": shutdown_after_job_finishes,
            "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            "backoffLimit": backoff_limit,
            "rayClusterSpec": cluster or cluster_spec(),
        }
        if runtime_env:
            spec["runtimeEnvYAML"] = yaml.safe_dump(runtime_env, sort_keys=True)
        if entrypoint_num_cpus is not None:
            spec["entrypointNumCpus"] = entrypoint_num_cpus
        if active_deadline_seconds is not None:
            spec["activeDeadlineSeconds"] = active_deadline_seconds
        labels = {"app.kubernetes.io/managed-by": "airflow-provider-mlplat"}
        for key in ("airflow_dag_id", "airflow_task_id"):
            if metadata.get(key):
                labels[f"mlplat.io/{key.removeprefix('airflow_').replace('_', '-')}"] = _label(metadata[key])
        if self.extra("env_secret"):
            spec["rayClusterSpec"] = _with_env_from(spec["rayClusterSpec"], self.extra("env_secret"))
        return {
            "apiVersion": f"{RAYJOB['group']}/{RAYJOB['version']}",
            "kind": "RayJob",
            "metadata": {
                "name": job_id,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": {f"mlplat.io/{key}": str(value) for key, value in metadata.items()},
            },
            "spec": spec,
        }

    # -- jobs ---------------------------------------------------------------------------------

    def _state(self, job_id: str, obj: dict[str, Any]) -> RayJobState:
        """Read a RayJob's status the way KubeRay documents it (``jobDeploymentStatus``, ``jobStatus``)."""
        status = obj.get("status") or {}
        phase, job_status = status.get("jobDeploymentStatus") or "", status.get("jobStatus") or ""
        if phase == "Failed":  # DeadlineExceeded, SubmissionFailed, AppFailed: whatever the Ray job says
            state = "STOPPED" if job_status == "STOPPED" else "FAILED"
        elif phase == "Complete":
            state = job_status if job_status in TERMINAL_STATUSES else "FAILED"
        elif phase == "Running" and job_status:
            state = "RUNNING"  # K8sJobMode: terminal only once the submitter finished as well
        else:  # New, Initializing, Waiting, Retrying, Suspended, ... or Running before the job exists
            state = "PENDING"
        # the start of this attempt (a retry under backoffLimit starts anew), else of the resource
        created = status.get("startTime") or obj["metadata"].get("creationTimestamp")
        return RayJobState(
            job_id=job_id,
            status=state,
            created_at=datetime.fromisoformat(created).timestamp() if created else 0.0,
            message=status.get("message") or _cluster_problem(status.get("rayClusterStatus") or {}),
            reason=status.get("reason") or "",
            phase=phase or "New",
            dashboard_url=self._dashboard(status),
        )

    def _dashboard(self, status: dict[str, Any]) -> str:
        if self.connection.host:
            return self.address
        url = status.get("dashboardURL") or ""
        return url if not url or "://" in url else f"http://{url}"

    def get_job(self, job_id: str) -> RayJobState | None:
        """
        The state of a RayJob, or None when there is no RayJob of that name.

        :param job_id: RayJob name.
        """
        from kubernetes.client import ApiException

        try:
            with self._call("get"):
                obj = self.kubernetes_hook.get_custom_object(name=job_id, namespace=self.namespace, **RAYJOB)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return self._state(job_id, obj)

    def submit_job(
        self,
        job_id: str,
        entrypoint: str,
        runtime_env: dict[str, Any],
        metadata: dict[str, str],
        entrypoint_num_cpus: float | None = None,
        **cluster_options: Any,
    ) -> tuple[RayJobState, bool]:
        """
        Create the RayJob, or attach to the one of that name (a create answered 409 reads it).

        Returns the job's state and whether this call created it. A local ``working_dir`` is
        zipped into artifact storage first (:func:`package_working_dir`): pods cannot see it.

        :param job_id: RayJob name and Ray submission id.
        :param entrypoint: shell command the job runs.
        :param runtime_env: Ray runtime env.
        :param metadata: job metadata.
        :param entrypoint_num_cpus: CPUs reserved for the entrypoint.
        :param cluster_options: the other :meth:`rayjob_manifest` arguments.
        """
        from kubernetes.client import ApiException

        working_dir = runtime_env.get("working_dir")
        if working_dir and "://" not in str(working_dir):
            runtime_env = {**runtime_env, "working_dir": package_working_dir(working_dir)}
        manifest = self.rayjob_manifest(
            job_id, entrypoint, runtime_env, metadata, entrypoint_num_cpus, **cluster_options
        )
        try:
            with self._call("create"):
                created = self.kubernetes_hook.create_custom_object(
                    body=manifest, namespace=self.namespace, **RAYJOB
                )
        except ApiException as err:
            if err.status != 409:
                raise
            existing = self.get_job(job_id)
            if existing is None:
                raise
            return existing, False
        return self._state(job_id, created), True

    def stop_job(self, job_id: str) -> None:
        """
        Delete the RayJob (KubeRay stops the job and removes its cluster); no-op when it is gone.

        :param job_id: RayJob name.
        """
        from kubernetes.client import ApiException

        try:
            with self._call("delete"):
                self.kubernetes_hook.delete_custom_object(name=job_id, namespace=self.namespace, **RAYJOB)
        except ApiException as err:
            if err.status != 404:
                raise

    @asynccontextmanager
    async def job_reader(self) -> AsyncIterator[JobReader]:
        """An async function reading RayJob states over one Kubernetes API client, open for the block."""
        from kubernetes_asyncio.client import ApiException, CustomObjectsApi

        namespace = await self.anamespace()
        async with self._async_api() as api_client:
            api = CustomObjectsApi(api_client)

            async def read(job_id: str) -> RayJobState | None:
                try:
                    with self._call("get", namespace):
                        obj = await api.get_namespaced_custom_object(
                            name=job_id, namespace=namespace, **RAYJOB
                        )
                except ApiException as err:
                    if err.status == 404:
                        return None
                    raise
                return self._state(job_id, obj)

            yield read

    async def astop_job(self, job_id: str) -> None:
        """
        Delete the RayJob without blocking the event loop.

        :param job_id: RayJob name.
        """
        from kubernetes_asyncio.client import ApiException, CustomObjectsApi

        namespace = await self.anamespace()
        async with self._async_api() as api_client:
            try:
                with self._call("delete", namespace):
                    await CustomObjectsApi(api_client).delete_namespaced_custom_object(
                        name=job_id, namespace=namespace, **RAYJOB
                    )
            except ApiException as err:
                if err.status != 404:
                    raise


def _cluster_problem(cluster_status: dict[str, Any]) -> str:
    """What the RayCluster status says is wrong (reason, failed conditions), for a stuck job."""
    problems = [cluster_status.get("reason") or ""]
    problems += [
        f"{c.get('type')}: {c.get('reason') or ''} {c.get('message') or ''}".strip()
        for c in cluster_status.get("conditions") or []
        # RayClusterReplicaFailure is a problem when True; HeadPodReady, RayClusterProvisioned when False
        if c.get("status") == ("True" if c.get("type") == "RayClusterReplicaFailure" else "False")
    ]
    return "; ".join(p for p in problems if p)


def _with_env_from(cluster: dict[str, Any], secret: str) -> dict[str, Any]:
    """A copy of a ``rayClusterSpec`` whose every container takes its environment from the Secret."""
    import copy

    cluster = copy.deepcopy(cluster)
    groups = [cluster["headGroupSpec"], *(cluster.get("workerGroupSpecs") or [])]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            refs = container.setdefault("envFrom", [])
            if {"secretRef": {"name": secret}} not in refs:
                refs.append({"secretRef": {"name": secret}})
    return cluster
