"""RayJobOperator on KubeRay: RayJob resources on the Kubernetes emulator, moved by a fake KubeRay."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest
import yaml
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_mlplat.exceptions import MLPlatError
from airflow_provider_mlplat.hooks.kuberay import RAYJOB
from airflow_provider_mlplat.operators.ray import RESULT_MARKER, RayJobOperator, job_key
from tests.conftest import REPO, set_connection
from tests.ray_support import first_event, rebuilt, run_to_end, task_context
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

NS = "default"
GVR = (RAYJOB["group"], RAYJOB["version"])


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
                unschedulable = {"type": "HeadPodReady", "status": "False", "reason": "Unschedulable",
                                 "lastTransitionTime": now}  # required by the CRD's schema  # fmt: skip
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


@pytest.fixture
def kuberay_conn(k8s):
    """A ray connection targeting KubeRay through the emulator's kubernetes_default connection."""
    set_connection(
        "kuberay_test", conn_type="ray", extra={"kubernetes_conn_id": "kubernetes_default", "namespace": NS}
    )
    return "kuberay_test"


@pytest.fixture
def kuberay_on_ray_head(k8s, ray_cluster):
    """A ray connection targeting KubeRay whose clusters' dashboard holds the Ray token; the fake
    KubeRay runs the jobs on the real Ray head."""
    set_connection(
        "kuberay_ray",
        conn_type="ray",
        password=ray_cluster.token,
        extra={"kubernetes_conn_id": "kubernetes_default", "namespace": NS},
    )
    with FakeKubeRay(k8s, ray_cluster) as controller:
        yield controller


def operator(conn_id: str, **kwargs) -> RayJobOperator:
    return RayJobOperator(
        **{
            "task_id": "train",
            "entrypoint": "python train.py",
            "ray_conn_id": conn_id,
            "poll_interval": 0.1,
            **kwargs,
        }
    )


def test_kuberay_job_runs_from_a_packaged_working_dir_and_returns_its_result(
    k8s, kuberay_on_ray_head, validate_manifest, tmp_path
):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.py").write_text(f"print('{RESULT_MARKER}' + '{{\"rows\": 3}}')\n")
    op = operator(
        "kuberay_ray",
        entrypoint="python job.py",
        working_dir=str(tmp_path / "job"),
        cluster_spec_file=str(REPO / "include" / "kuberay" / "raycluster.yaml"),
        active_deadline_seconds=3600,
        job_metadata={"team": "ml"},
    )
    context = {**task_context(), "var": {"value": {}}}
    assert run_to_end(op, context) == {"rows": 3}

    (rayjob,) = k8s.objects("rayjobs")
    validate_manifest({k: rayjob[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    assert rayjob["metadata"]["name"] == rayjob["spec"]["jobId"] == job_key(context)
    assert (
        rayjob["status"]["jobDeploymentStatus"] == "Complete" and rayjob["status"]["jobStatus"] == "SUCCEEDED"
    )
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"].startswith("file://") and runtime_env["working_dir"].endswith(".zip")
    assert rayjob["spec"]["metadata"]["team"] == "ml"
    assert context["ti"].xcoms["ray_job"] == {
        "job_id": job_key(context),
        "target": "kuberay",
        "status": "SUCCEEDED",
        "dashboard_url": kuberay_on_ray_head.ray_address,
        "namespace": NS,
    }


def test_kuberay_app_failure_streams_the_log_and_fails_with_rays_error(
    k8s, kuberay_on_ray_head, tmp_path, capsys
):
    (tmp_path / "job.py").write_text("print('reading features')\nraise SystemExit('no label column')\n")
    op = operator("kuberay_ray", entrypoint="python job.py", working_dir=str(tmp_path), deferrable=False)
    context = task_context()
    with pytest.raises(MLPlatError) as failure:
        op.execute(context)
    message = str(failure.value)
    assert (
        f"kuberay job {job_key(context)} FAILED (Failed): AppFailed: Job entrypoint command failed" in message
    )
    assert "reading features" in message and "no label column" in message
    assert "] reading features " in capsys.readouterr().out  # streamed from the cluster's dashboard


def test_kuberay_failure_reason_without_a_reachable_dashboard(k8s, kuberay_conn):
    with FakeKubeRay(k8s):
        op = operator(kuberay_conn, job_metadata={"fake-kuberay": "deadline"}, active_deadline_seconds=5)
        with pytest.raises(MLPlatError) as failure:
            run_to_end(op, task_context())
    message = str(failure.value)
    assert "FAILED (Failed): DeadlineExceeded: The RayJob has passed the activeDeadlineSeconds" in message
    assert "ActiveDeadlineSeconds: 5" in message


def test_kuberay_job_stuck_initializing_times_out_with_the_reason_and_is_deleted(k8s, kuberay_conn):
    with FakeKubeRay(k8s):
        op = operator(kuberay_conn, job_metadata={"fake-kuberay": "stuck"}, startup_timeout=1)
        context = task_context()
        with pytest.raises(MLPlatError) as failure:
            run_to_end(op, context)
    message = str(failure.value)
    assert f"kuberay job {job_key(context)} did not start: still pending" in message
    assert (
        "PENDING (Initializing): HeadPodReady: Unschedulable 0/3 nodes are available: 3 Insufficient cpu."
        in message
    )
    assert k8s.objects("rayjobs") == [] and k8s.count("DELETE", "rayjobs") == 1


def test_conflict_on_create_reattaches_and_a_finished_rayjob_is_not_rerun(k8s, kuberay_conn):
    context = task_context()
    with FakeKubeRay(k8s) as controller:
        args = {"job_metadata": {"fake-kuberay": "hold"}}
        with pytest.raises(TaskDeferred) as first:
            operator(kuberay_conn, **args).execute(context)
        # a retry after a worker crash: the create answers 409 AlreadyExists, the RayJob is read instead
        with pytest.raises(TaskDeferred) as second:
            operator(kuberay_conn, **args).execute(context)
        assert first.value.trigger.job_id == second.value.trigger.job_id == job_key(context)
        assert k8s.count("POST", "rayjobs") == 2 and len(k8s.objects("rayjobs")) == 1
        assert [c.method for c in k8s.requests if c.plural == "rayjobs"][:3] == ["POST", "POST", "GET"]

        controller.release(job_key(context))
        event = asyncio.run(first_event(rebuilt(second.value.trigger)))
        assert event["state"]["status"] == "SUCCEEDED"
        assert operator(kuberay_conn, **args).execute_complete(context, event) is None  # no result line
        assert operator(kuberay_conn, **args).execute(context) is None  # finished: nothing new
    assert k8s.count("POST", "rayjobs") == 3 and len(k8s.objects("rayjobs")) == 1
    assert k8s.count("DELETE", "rayjobs") == 0


def test_triggerer_restart_resumes_the_same_rayjob_and_deletes_nothing(k8s, kuberay_conn):
    context = task_context()
    with FakeKubeRay(k8s) as controller:
        with pytest.raises(TaskDeferred) as deferred:
            operator(kuberay_conn, job_metadata={"fake-kuberay": "hold"}).execute(context)
        trigger = rebuilt(deferred.value.trigger)

        async def run_until_restart():
            before = k8s.count("GET", "rayjobs")
            task = asyncio.create_task(first_event(trigger))
            await asyncio.to_thread(
                wait_for,
                lambda: k8s.count("GET", "rayjobs") >= before + 3,
                30,
                "three reads while it runs",
                0.05,
            )
            task.cancel()  # the triggerer stops: the trigger is cancelled and cleaned up
            with pytest.raises(asyncio.CancelledError):
                await task
            await trigger.cleanup()

        asyncio.run(run_until_restart())
        reads = k8s.count("GET", "rayjobs")
        assert k8s.objects("rayjobs")[0]["status"]["jobStatus"] == "RUNNING"

        controller.release(job_key(context))
        event = asyncio.run(first_event(rebuilt(trigger)))  # a new triggerer rebuilds it from the DB
    assert event["job_id"] == job_key(context) and event["state"]["status"] == "SUCCEEDED"
    assert k8s.count("GET", "rayjobs") > reads
    assert k8s.count("DELETE", "rayjobs") == 0 and len(k8s.objects("rayjobs")) == 1


def test_trigger_on_kill_deletes_the_rayjob(k8s, kuberay_conn):
    with FakeKubeRay(k8s):
        with pytest.raises(TaskDeferred) as deferred:
            operator(kuberay_conn, job_metadata={"fake-kuberay": "hold"}).execute(task_context())
        asyncio.run(rebuilt(deferred.value.trigger).on_kill())
    assert k8s.objects("rayjobs") == [] and k8s.count("DELETE", "rayjobs") == 1


def test_transient_api_errors_do_not_end_the_wait_but_a_dead_api_does(k8s, kuberay_conn):
    with FakeKubeRay(k8s):
        op = operator(kuberay_conn, job_metadata={"fake-kuberay": "hold"})
        context = task_context()
        with pytest.raises(TaskDeferred) as deferred:
            op.execute(context)
        trigger = rebuilt(deferred.value.trigger)
        k8s.fail_next("GET", "rayjobs", status=500, times=3)

        async def blips_then_outage():
            waiting = asyncio.create_task(first_event(trigger))
            await asyncio.to_thread(
                wait_for,
                lambda: k8s.count("GET", "rayjobs") >= 6,
                30,
                "three failed reads, then good ones",
                0.05,
            )
            assert not waiting.done()
            k8s.fail_next("GET", "rayjobs", status=503, times=None)  # the API stays down
            return await waiting

        event = asyncio.run(blips_then_outage())
    assert event["event"] == "error" and "503" in event["message"]
    with pytest.raises(MLPlatError) as failed:
        op.execute_complete(context, event)
    assert (
        f"waiting for kuberay job {job_key(context)} failed: MLPlatServiceUnavailable: the Kubernetes API "
        "answered 503 Service Unavailable to get rayjobs.ray.io in namespace 'default': injected"
        in str(failed.value)
    )


def test_a_refused_call_names_verb_resource_namespace_and_account(k8s, kuberay_conn):
    k8s.fail_next("POST", "rayjobs", status=403, message='rayjobs.ray.io is forbidden: User '
                  '"system:serviceaccount:airflow:airflow-worker" cannot create resource "rayjobs"')  # fmt: skip
    with pytest.raises(MLPlatError) as refused:
        operator(kuberay_conn).execute(task_context())
    assert str(refused.value) == (
        "the Kubernetes API refused to create rayjobs.ray.io in namespace 'default' for service account "
        "system:serviceaccount:airflow:airflow-worker (403 Forbidden): grant it 'create' on 'rayjobs.ray.io' "
        "in that namespace"
    )
    assert k8s.objects("rayjobs") == []
