"""RayJobOperator on KubeRay: RayJob resources on the Kubernetes emulator, moved by a fake KubeRay."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_mlplat.exceptions import MLPlatError
from airflow_provider_mlplat.hooks.kuberay import RAYJOB
from airflow_provider_mlplat.operators.ray import RESULT_MARKER, RayJobOperator, job_key
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.kubernetes.kuberay_controller import FakeKubeRay
from airflow_provider_mlplat.testing.waiting import wait_for
from tests.conftest import REPO
from tests.ray_support import first_event, rebuilt, run_to_end, task_context

pytestmark = pytest.mark.integration

NS = "default"
GVR = (RAYJOB["group"], RAYJOB["version"])


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
