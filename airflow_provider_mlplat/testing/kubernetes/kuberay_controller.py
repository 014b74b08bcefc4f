"""A small fake KubeRay controller for the Kubernetes emulator: moves RayJob status as KubeRay documents it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import yaml

GVR = ("ray.io", "v1")  # RayJobs
NS = "default"  # the namespace it reconciles


class FakeKubeRay(threading.Thread):
    """
    Moves RayJob status the way KubeRay's RayJob controller documents it (K8sJobMode):
    ``jobDeploymentStatus`` New -> Initializing (cluster created) -> Running (job submitted,
    ``jobStatus`` PENDING/RUNNING from the dashboard) -> Complete (SUCCEEDED/STOPPED) or Failed
    (``reason`` AppFailed, DeadlineExceeded; ``message``). A job's behaviour comes from its
    ``spec.metadata["fake-kuberay"]``:

    - ``ray`` (default with a Ray head): the "cluster" is the real local Ray head; the job is
      submitted to it with ``spec.jobId``, ``spec.entrypoint`` and ``spec.runtimeEnvYAML``, and its
      status mirrored. Deleting the RayJob stops that job (as garbage collection of the cluster would).
    - ``succeed``: Running/RUNNING, then Complete/SUCCEEDED (no Ray).
    - ``hold``: stays Running/RUNNING until :meth:`release`, then Complete/SUCCEEDED.
    - ``deadline``: Running/RUNNING, then Failed/DeadlineExceeded (activeDeadlineSeconds passed).
    - ``stuck``: stays Initializing: the head pod cannot be scheduled.

    :param emulator: the Kubernetes emulator (the ``k8s`` fixture).
    :param ray_cluster: a running Ray head (the ``ray_cluster`` fixture) for mode ``ray``; None: no Ray.
    :param tick: seconds between reconcile passes.
    """

    def __init__(self, emulator, ray_cluster=None, tick: float = 0.1) -> None:
        super().__init__(daemon=True, name="fake-kuberay")
        self.emulator, self.tick, self.ray = emulator, tick, None
        if ray_cluster is not None:
            from ray.job_submission import JobSubmissionClient

            self.ray_address = ray_cluster.address
            self.ray = JobSubmissionClient(
                ray_cluster.address, headers={"Authorization": f"Bearer {ray_cluster.token}"}
            )
        self.submitted: dict[str, str] = {}  # RayJob name -> Ray submission id
        self.released: set[str] = set()
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def release(self, name: str) -> None:
        """Let a ``hold`` RayJob complete."""
        self.released.add(name)

    def __enter__(self) -> FakeKubeRay:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join(timeout=10)
        assert not self.errors, self.errors

    def run(self) -> None:
        while not self._halt.wait(self.tick):
            try:
                objects = self.emulator.objects("rayjobs", NS)
                for obj in objects:
                    self.reconcile(obj)
                alive = {o["metadata"]["name"] for o in objects}
                for name in [n for n in self.submitted if n not in alive]:  # RayJob deleted: its cluster goes
                    self.ray.stop_job(self.submitted.pop(name))
            except KeyError:
                pass  # deleted while reconciling
            except Exception as err:
                self.errors.append(err)

    def reconcile(self, obj: dict) -> None:
        """Move one RayJob a step further, as KubeRay would."""
        name, spec, status = obj["metadata"]["name"], obj["spec"], obj.get("status") or {}
        mode = (spec.get("metadata") or {}).get("fake-kuberay", "ray" if self.ray else "succeed")
        phase = status.get("jobDeploymentStatus", "")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def update(**changes) -> None:
            new = {**status, **changes, "observedGeneration": obj["metadata"]["generation"]}
            self.emulator.set_status(*GVR, NS, "rayjobs", name, new)

        if phase == "":
            update(
                jobDeploymentStatus="Initializing",
                jobId=spec.get("jobId") or name,
                rayClusterName=f"{name}-x7k2p",
                startTime=now,
                failed=0,
                succeeded=0,
            )
        elif phase == "Initializing" and mode == "stuck":
            if "rayClusterStatus" not in status:
                unschedulable = {"type": "HeadPodReady", "status": "False", "reason": "Unschedulable"}
                unschedulable["message"] = "0/3 nodes are available: 3 Insufficient cpu."
                update(rayClusterStatus={"state": "", "conditions": [unschedulable]})
        elif phase == "Initializing":
            dashboard = f"{name}-head-svc.{NS}.svc.cluster.local:8265"
            if mode == "ray":
                runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
                self.ray.submit_job(
                    entrypoint=spec["entrypoint"],
                    submission_id=status["jobId"],
                    runtime_env=runtime_env,
                    metadata=spec.get("metadata"),
                    entrypoint_num_cpus=spec.get("entrypointNumCpus"),
                )
                self.submitted[name] = status["jobId"]
                dashboard = self.ray_address.removeprefix("http://")
            update(jobDeploymentStatus="Running", dashboardURL=dashboard, rayClusterStatus={"state": "ready"})
        elif phase == "Running" and mode == "ray":
            info = self.ray.get_job_info(status["jobId"])
            job_status, message = info.status.value, info.message or ""
            if job_status in ("SUCCEEDED", "FAILED", "STOPPED"):
                failed = job_status == "FAILED"
                update(
                    jobStatus=job_status,
                    message=message,
                    jobDeploymentStatus="Failed" if failed else "Complete",
                    reason="AppFailed" if failed else "",
                    endTime=now,
                    **({"failed": 1} if failed else {"succeeded": 1}),
                )
            elif job_status != status.get("jobStatus"):
                update(jobStatus=job_status, message=message)
        elif phase == "Running" and not status.get("jobStatus"):
            update(jobStatus="RUNNING")
        elif phase == "Running" and mode == "deadline":
            message = f"The RayJob has passed the activeDeadlineSeconds. StartTime: {status['startTime']}. "
            message += f"ActiveDeadlineSeconds: {spec.get('activeDeadlineSeconds')}"
            update(
                jobDeploymentStatus="Failed",
                reason="DeadlineExceeded",
                message=message,
                endTime=now,
                failed=1,
            )
        elif phase == "Running" and (mode == "succeed" or name in self.released):
            update(jobStatus="SUCCEEDED", jobDeploymentStatus="Complete", endTime=now, succeeded=1)
