"""RayJobOperator on KubeRay: RayJob resources on the Kubernetes emulator, moved by a fake KubeRay."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import httpx
import pytest
import yaml
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_mlplat.exceptions import MLPlatError
from airflow_provider_mlplat.operators.ray import RESULT_MARKER, RayJobOperator, job_key
from airflow_provider_mlplat.ray_results import result_path
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.kubernetes.kuberay_controller import NS, FakeKubeRay
from airflow_provider_mlplat.testing.waiting import wait_for
from tests.conftest import REPO
from tests.ray_support import first_event, rebuilt, run_to_end, task_context

pytestmark = pytest.mark.integration

SECRET = "mlplat-mlflow"  # the Secret include/k8s/rbac.yaml lets Airflow read


@pytest.fixture
def kuberay_conn(k8s):
    """A ray connection targeting KubeRay through the emulator's kubernetes_default connection."""
    set_connection(
        "kuberay_test", conn_type="ray", extra={"kubernetes_conn_id": "kubernetes_default", "namespace": NS}
    )
    return "kuberay_test"


@pytest.fixture
def kuberay_on_ray_head(k8s, ray_cluster):
    """A ray connection targeting KubeRay whose host overrides the in-cluster dashboard URL with the
    fake's gateway (holding the Ray token); the fake KubeRay runs the jobs on the real Ray head."""
    with FakeKubeRay(k8s, ray_cluster) as controller:
        set_connection(
            "kuberay_ray",
            conn_type="ray",
            host=controller.gateway.url,
            password=ray_cluster.token,
            extra={"kubernetes_conn_id": "kubernetes_default", "namespace": NS, "env_secret": SECRET},
        )
        yield controller


def create_secret(k8s, data: dict[str, str]) -> None:
    """The env_secret, created by an administrator (not by the provider: not audited)."""
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NS},
        "data": encoded,
    }
    k8s.create_object("", "v1", "secrets", body)


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
    create_secret(k8s, {})
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
        "dashboard_url": kuberay_on_ray_head.gateway.url,  # the host override, not the in-cluster URL
        "namespace": NS,
    }


def test_kuberay_app_failure_streams_the_log_and_fails_with_rays_error(
    k8s, kuberay_on_ray_head, tmp_path, capsys
):
    create_secret(k8s, {})
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
        # no dashboard answers at the in-cluster URL and no task saved a result: a failure, never None
        with pytest.raises(MLPlatError) as unreadable:
            operator(kuberay_conn, **args).execute_complete(context, event)
        assert f"kuberay job {job_key(context)} SUCCEEDED but its result cannot be read: its log could not be read " \
            f"from http://{job_key(context)}-a1x-head-svc.default.svc.cluster.local:8265" in str(unreadable.value)  # fmt: skip
        assert f"no result of this run of the job was saved at {result_path(job_key(context))}" in str(
            unreadable.value
        )
        with pytest.raises(MLPlatError, match="SUCCEEDED but its result cannot be read"):
            operator(kuberay_conn, **args).execute(context)  # finished: not rerun, and still no result
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


def test_connection_test_lists_the_rayjobs(k8s, kuberay_conn):
    from airflow_provider_mlplat.hooks.ray_target import RayConnectionHook

    assert RayConnectionHook(kuberay_conn).test_connection() == (
        True,
        "KubeRay: 0 RayJob(s) in namespace 'default'",
    )
    assert k8s.count("GET", "rayjobs") == 1


@pytest.mark.timeout(180)
def test_retry_after_success_returns_the_saved_result_after_the_clusters_ttl(
    k8s, kuberay_on_ray_head, tmp_path
):
    create_secret(k8s, {})
    (tmp_path / "job.py").write_text(f"import time\nprint('{RESULT_MARKER}' + str(time.time_ns()))\n")
    args = {"entrypoint": "python job.py", "working_dir": str(tmp_path), "ttl_seconds_after_finished": 2}
    context = task_context()
    result = run_to_end(operator("kuberay_ray", **args), context)
    assert isinstance(result, int)
    (rayjob,) = k8s.objects("rayjobs")
    cluster = rayjob["status"]["rayClusterName"]
    assert rayjob["status"]["dashboardURL"] == f"{cluster}-head-svc.{NS}.svc.cluster.local:8265"
    assert operator("kuberay_ray", **args).execute(context) == result  # reattached: read from the log again

    wait_for(lambda: cluster in kuberay_on_ray_head.deleted, 30, "the cluster deleted after its TTL", 0.1)
    gone = httpx.get(f"{kuberay_on_ray_head.gateway.url}/api/jobs/{job_key(context)}/logs")
    assert gone.status_code == 503  # the dashboard went with the cluster
    assert operator("kuberay_ray", **args).execute(context) == result  # from ray/results/<job id>.json
    saved = json.loads(result_path(job_key(context)).read_text())
    assert saved["result"] == result and saved["started_at"] > 0

    result_path(job_key(context)).unlink()  # a dropped result: the retry must fail, and say why
    with pytest.raises(MLPlatError) as lost:
        operator("kuberay_ray", **args).execute(context)
    assert "SUCCEEDED but its result cannot be read: its log could not be read from " in str(lost.value)
    assert "503" in str(lost.value) and k8s.count("POST", "rayjobs") == 4


@pytest.mark.timeout(180)
def test_backoff_limit_retries_a_failed_job_on_a_new_cluster(k8s, kuberay_on_ray_head, tmp_path):
    create_secret(k8s, {})
    marker = tmp_path / "failed-once"
    (tmp_path / "job.py").write_text(
        "import pathlib, sys\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n    marker.touch()\n    sys.exit('first attempt fails')\n"
        f"print('{RESULT_MARKER}' + '\"second\"')\n"
    )
    context = task_context()
    op = operator("kuberay_ray", entrypoint="python job.py", working_dir=str(tmp_path), backoff_limit=1)
    assert run_to_end(op, context) == "second"
    (rayjob,) = k8s.objects("rayjobs")
    status = rayjob["status"]
    assert (status["failed"], status["succeeded"], status["jobDeploymentStatus"]) == (1, 1, "Complete")
    first, second = f"{job_key(context)}-a1x", f"{job_key(context)}-a2x"
    assert status["rayClusterName"] == second and kuberay_on_ray_head.deleted[:1] == [first]
    assert k8s.count("POST", "rayjobs") == 1  # KubeRay retried it, not the operator


@pytest.mark.timeout(180)
def test_mlflow_credentials_reach_the_pods_from_the_secret_never_the_rayjob(
    k8s, kuberay_on_ray_head, tmp_path
):
    password = "s3cr3t-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    set_connection(
        "mlflow_auth", conn_type="mlflow", host="http://127.0.0.1:1", login="ml", password=password
    )
    (tmp_path / "job.py").write_text(
        "import hashlib, json, os\n"
        "seen = {k: os.environ.get(k) for k in ('MLFLOW_TRACKING_URI', 'MLFLOW_TRACKING_USERNAME')}\n"
        "seen['sha'] = hashlib.sha256(os.environ['MLFLOW_TRACKING_PASSWORD'].encode()).hexdigest()\n"
        f"print('{RESULT_MARKER}' + json.dumps(seen))\n"
    )
    args = {"entrypoint": "python job.py", "working_dir": str(tmp_path), "mlflow_conn_id": "mlflow_auth"}
    with pytest.raises(MLPlatError) as missing:  # no Secret yet: refused before anything is created
        operator("kuberay_ray", **args).execute(task_context())
    assert (
        f"Secret '{SECRET}' (env_secret of connection 'kuberay_ray') does not exist in namespace 'default'"
        in str(missing.value)
    )
    assert k8s.objects("rayjobs") == []
    create_secret(k8s, {"MLFLOW_TRACKING_USERNAME": "ml", "MLFLOW_TRACKING_PASSWORD": password})
    set_connection("mlflow_token", conn_type="mlflow", host="http://127.0.0.1:1", password=password)
    with pytest.raises(MLPlatError) as lacking:  # a token connection needs MLFLOW_TRACKING_TOKEN
        operator("kuberay_ray", **{**args, "mlflow_conn_id": "mlflow_token"}).execute(task_context())
    assert f"Secret '{SECRET}' in namespace 'default' lacks the key(s) MLFLOW_TRACKING_TOKEN" in str(
        lacking.value
    )
    assert password not in str(missing.value) + str(lacking.value) and k8s.objects("rayjobs") == []

    context = task_context()
    seen = run_to_end(operator("kuberay_ray", **args), context)
    assert seen == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:1",
        "MLFLOW_TRACKING_USERNAME": "ml",
        "sha": hashlib.sha256(password.encode()).hexdigest(),
    }
    (rayjob,) = k8s.objects("rayjobs")
    assert password not in json.dumps(rayjob)  # neither in the spec nor in its runtimeEnvYAML
    cluster = rayjob["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
        for container in group["template"]["spec"]["containers"]:
            assert {"secretRef": {"name": SECRET}} in container["envFrom"]
    posted = [c.body for c in k8s.requests if c.method == "POST" and c.plural == "rayjobs"]
    assert posted and password not in json.dumps(posted)
