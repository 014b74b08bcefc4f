"""A fake KubeRay for the Kubernetes emulator: moves RayJob status, runs jobs on a real Ray head, and a
dashboard gateway that, like an ingress to the clusters' head services, answers 503 once a cluster is gone."""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import aiohttp.web
import yaml

NS = "default"
GVR = ("ray.io", "v1")


class DashboardGateway:
    """
    One address for the dashboards of all the fake's clusters (the ``ray`` connection's host
    override): ``/api/jobs/<RayJob jobId>...`` goes to the current cluster of that RayJob on the real
    Ray head (HTTP and the log-tail websocket), or answers 503 when that cluster has been deleted.
    """

    def __init__(self, controller: FakeKubeRay) -> None:
        self.controller = controller
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ray-gateway", daemon=True)
        self.url = ""

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    async def _start(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = aiohttp.web.AppRunner(app)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession()

    def stop(self) -> None:
        async def close() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _forward(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        parts = request.path.strip("/").split("/")
        path = request.path
        if parts[:2] == ["api", "jobs"] and len(parts) > 2:
            ray_id = self.controller.live_submission(parts[2])
            if ray_id is None:
                return aiohttp.web.Response(status=503, text=f"no healthy upstream for job {parts[2]}")
            path = "/".join(["", "api", "jobs", ray_id, *parts[3:]])
        target = self.controller.ray_address + path
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        if request.headers.get("Upgrade", "").lower() == "websocket":
            downstream = aiohttp.web.WebSocketResponse()
            await downstream.prepare(request)
            async with self._session.ws_connect(target.replace("http", "ws", 1), headers=headers) as upstream:
                async for message in upstream:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    await downstream.send_str(message.data)
            await downstream.close()
            return downstream
        async with self._session.request(
            request.method, target, headers=headers, params=request.query, data=await request.read()
        ) as answer:
            body = await answer.read()
            return aiohttp.web.Response(status=answer.status, body=body, content_type=answer.content_type)


class FakeKubeRay(threading.Thread):
    """
    Moves RayJob status the way KubeRay's RayJob controller does (K8sJobMode):
    ``jobDeploymentStatus`` New -> Initializing (a RayCluster ``<name>-<suffix>``) -> Running (job
    submitted; ``dashboardURL`` the in-cluster head service) -> Complete or Failed. A failed job is
    retried while ``status.failed < backoffLimit + 1`` (not after DeadlineExceeded): Retrying, the
    cluster is deleted and the status reset, then a new attempt on a new cluster. With
    ``shutdownAfterJobFinishes`` the cluster is deleted ``ttlSecondsAfterFinished`` after the end.
    A job's behaviour comes from its ``spec.metadata["fake-kuberay"]``:

    - ``ray`` (default with a Ray head): each cluster's job runs on the real local Ray head (its
      environment from the containers' ``envFrom`` Secrets, as pods get it); its status is mirrored.
    - ``succeed``: Running/RUNNING, then Complete/SUCCEEDED (no Ray).
    - ``hold``: stays Running/RUNNING until :meth:`release`, then Complete/SUCCEEDED.
    - ``deadline``: Running/RUNNING, then Failed/DeadlineExceeded (activeDeadlineSeconds passed).
    - ``stuck``: stays Initializing: the head pod cannot be scheduled.
    """

    def __init__(self, emulator, ray_cluster=None, tick: float = 0.1) -> None:
        super().__init__(daemon=True, name="fake-kuberay")
        self.emulator, self.tick, self.ray = emulator, tick, None
        self.gateway: DashboardGateway | None = None
        if ray_cluster is not None:
            from ray.job_submission import JobSubmissionClient

            self.ray_address = ray_cluster.address
            self.ray = JobSubmissionClient(
                ray_cluster.address, headers={"Authorization": f"Bearer {ray_cluster.token}"}
            )
            self.gateway = DashboardGateway(self)
        self.clusters: dict[str, str] = {}  # live RayCluster name -> Ray submission id on the head
        self.deleted: list[str] = []  # RayCluster names, in the order they were deleted
        self.released: set[str] = set()
        self.errors: list[BaseException] = []
        self._current: dict[str, str] = {}  # RayJob jobId -> its current RayCluster
        self._owner: dict[str, str] = {}  # RayCluster -> its RayJob
        self._ended: dict[str, float] = {}  # RayCluster -> monotonic time its job ended
        self._secrets = tempfile.TemporaryDirectory(prefix="fake-kuberay-pods-")
        self._halt = threading.Event()

    def release(self, name: str) -> None:
        self.released.add(name)

    def live_submission(self, job_id: str) -> str | None:
        """The Ray submission id of a RayJob's current cluster, or None when that cluster is gone."""
        return self.clusters.get(self._current.get(job_id, ""))

    def __enter__(self) -> FakeKubeRay:
        if self.gateway is not None:
            self.gateway.start()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join(timeout=10)
        if self.gateway is not None:
            self.gateway.stop()
        self._secrets.cleanup()
        assert not self.errors, self.errors

    def run(self) -> None:
        while not self._halt.wait(self.tick):
            try:
                objects = self.emulator.objects("rayjobs", NS)
                for obj in objects:
                    self.reconcile(obj)
                rayjobs = {o["metadata"]["name"] for o in objects}
                for cluster in [c for c in self.clusters if self._owner[c] not in rayjobs]:  # RayJob deleted
                    self._delete_cluster(cluster)
            except KeyError:
                pass  # deleted while reconciling
            except Exception as err:
                self.errors.append(err)

    def _delete_cluster(self, cluster: str) -> None:
        submission = self.clusters.pop(cluster, None)
        if submission and self.ray is not None:
            self.ray.stop_job(submission)
        if cluster not in self.deleted:
            self.deleted.append(cluster)

    def _pod_env_entrypoint(self, spec: dict, entrypoint: str, cluster: str) -> str:
        """The entrypoint with the environment the head pod would get from its ``envFrom`` Secrets."""
        containers = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
        env: dict[str, str] = {}
        for ref in [r for c in containers for r in c.get("envFrom") or []]:
            name = ref["secretRef"]["name"]
            secret = self.emulator.get_object("", "v1", NS, "secrets", name)
            assert secret is not None, (
                f"pod of {cluster}: CreateContainerConfigError: secret {name!r} not found"
            )
            env |= {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        if not env:
            return entrypoint
        path = Path(self._secrets.name) / f"{cluster}.env"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
        return f"set -a && . {shlex.quote(str(path))} && set +a && {entrypoint}"

    def reconcile(self, obj: dict) -> None:
        name, spec, status = obj["metadata"]["name"], obj["spec"], obj.get("status") or {}
        mode = (spec.get("metadata") or {}).get("fake-kuberay", "ray" if self.ray else "succeed")
        phase = status.get("jobDeploymentStatus", "")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def update(**changes) -> None:
            new = {**status, **changes, "observedGeneration": obj["metadata"]["generation"]}
            self.emulator.set_status(*GVR, NS, "rayjobs", name, new)

        def end(failed: bool, **changes) -> None:
            self._ended[status["rayClusterName"]] = time.monotonic()
            counts = {"failed": status.get("failed", 0) + 1} if failed else {"succeeded": 1}
            retry = failed and counts["failed"] < spec.get("backoffLimit", 0) + 1
            retry = retry and changes.get("reason") != "DeadlineExceeded"
            changes["jobDeploymentStatus"] = "Retrying" if retry else ("Failed" if failed else "Complete")
            update(endTime=now, **changes, **counts)

        cluster = status.get("rayClusterName", "")
        if phase == "":
            attempt = status.get("failed", 0) + 1
            cluster = f"{name}-a{attempt}x"
            self.clusters[cluster], self._owner[cluster] = "", name
            self._current[spec.get("jobId") or name] = cluster
            update(
                jobDeploymentStatus="Initializing",
                jobId=spec.get("jobId") or name,
                rayClusterName=cluster,
                startTime=now,
                failed=status.get("failed", 0),
                succeeded=0,
            )
        elif phase == "Retrying":  # KubeRay deletes the cluster, then resets the status to New
            self._delete_cluster(cluster)
            kept = {k: status[k] for k in ("failed", "succeeded", "observedGeneration") if k in status}
            self.emulator.set_status(*GVR, NS, "rayjobs", name, {**kept, "jobDeploymentStatus": ""})
        elif phase in ("Complete", "Failed"):
            ttl = spec.get("ttlSecondsAfterFinished", 0)
            ended = self._ended.setdefault(cluster, time.monotonic())
            if (
                spec.get("shutdownAfterJobFinishes")
                and cluster in self.clusters
                and time.monotonic() - ended >= ttl
            ):
                self._delete_cluster(cluster)
        elif phase == "Initializing" and mode == "stuck":
            if "rayClusterStatus" not in status:
                unschedulable = {"type": "HeadPodReady", "status": "False", "reason": "Unschedulable",
                                 "lastTransitionTime": now}  # required by the CRD's schema  # fmt: skip
                unschedulable["message"] = "0/3 nodes are available: 3 Insufficient cpu."
                update(rayClusterStatus={"state": "", "conditions": [unschedulable]})
        elif phase == "Initializing":
            if mode == "ray":
                submission = f"{status['jobId']}--{cluster}"
                self.ray.submit_job(
                    entrypoint=self._pod_env_entrypoint(spec, spec["entrypoint"], cluster),
                    submission_id=submission,
                    runtime_env=yaml.safe_load(spec.get("runtimeEnvYAML") or "{}"),
                    metadata=spec.get("metadata"),
                    entrypoint_num_cpus=spec.get("entrypointNumCpus"),
                )
                self.clusters[cluster] = submission
            dashboard = f"{cluster}-head-svc.{NS}.svc.cluster.local:8265"
            update(jobDeploymentStatus="Running", dashboardURL=dashboard, rayClusterStatus={"state": "ready"})
        elif phase == "Running" and mode == "ray":
            info = self.ray.get_job_info(self.clusters[cluster])
            job_status, message = info.status.value, info.message or ""
            if job_status in ("SUCCEEDED", "FAILED", "STOPPED"):
                failed = job_status == "FAILED"
                end(failed, jobStatus=job_status, message=message, reason="AppFailed" if failed else "")
            elif job_status != status.get("jobStatus"):
                update(jobStatus=job_status, message=message)
        elif phase == "Running" and not status.get("jobStatus"):
            update(jobStatus="RUNNING")
        elif phase == "Running" and mode == "deadline":
            message = f"The RayJob has passed the activeDeadlineSeconds. StartTime: {status['startTime']}. "
            message += f"ActiveDeadlineSeconds: {spec.get('activeDeadlineSeconds')}"
            end(True, reason="DeadlineExceeded", message=message)
        elif phase == "Running" and (mode == "succeed" or name in self.released):
            end(False, jobStatus="SUCCEEDED")
