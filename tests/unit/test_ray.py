"""RayJobOperator building blocks: job ids, results, manifests, KubeRay status mapping, validation."""

from __future__ import annotations

import asyncio
import re
import time
import zipfile
from pathlib import Path

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatError
from airflow_provider_mlplat.hooks.kuberay import (
    MAX_NAME_LENGTH,
    KubeRayHook,
    cluster_spec,
    package_working_dir,
)
from airflow_provider_mlplat.hooks.ray import RayHook, RayJobState
from airflow_provider_mlplat.hooks.ray_target import ray_job_hook
from airflow_provider_mlplat.links.ray import RayJobLink
from airflow_provider_mlplat.operators.ray import (
    RESULT_MARKER,
    RayJobOperator,
    attempt_job_id,
    job_key,
    parse_result,
)
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.triggers.ray import RayJobTrigger
from tests.conftest import REPO
from tests.ray_support import rebuilt, task_context

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture
def kuberay_conn():
    set_connection(
        "kuberay_unit",
        conn_type="ray",
        extra={"kubernetes_conn_id": "kubernetes_unit", "namespace": "ml"},
    )
    return "kuberay_unit"


@pytest.mark.parametrize(
    "task_id", ["train", "Train.Model_v2", "42-start-with-digit", "x" * 250, "group.inner.train_model"]
)
def test_job_key_is_a_short_valid_rayjob_name_fixed_by_the_task_instance(task_id):
    context = task_context(task_id)
    key = job_key(context)
    assert DNS_1035.match(key) and len(key) <= 41
    assert len(attempt_job_id(key, 99)) <= MAX_NAME_LENGTH and DNS_1035.match(attempt_job_id(key, 99))
    assert job_key(context) == key  # a retry of the same task instance gets the same id
    ti = context["ti"]
    for other in (
        {"run_id": ti.run_id + "x"},
        {"map_index": 3},
        {"dag_id": ti.dag_id + "x"},
        {"task_id": ti.task_id + "x"},
    ):
        changed = task_context()
        vars(changed["ti"]).update({**vars(ti), **other})
        assert job_key(changed) != key


def test_attempt_ids():
    assert attempt_job_id("train-abc", 1) == "train-abc"
    assert attempt_job_id("train-abc", 2) == "train-abc-r2"


def test_parse_result_takes_the_last_marker_line_and_rejects_bad_json():
    lines = [
        "noise",
        f'{RESULT_MARKER}{{"version": "1"}}',
        f"(pid=3) {RESULT_MARKER}{{}}",
        f'{RESULT_MARKER}{{"version": "2"}}',
    ]
    assert parse_result(lines) == {"version": "2"}
    assert parse_result(["nothing here"]) is None
    with pytest.raises(MLPlatError, match="is not JSON"):
        parse_result([f"{RESULT_MARKER}{{oops"])


def test_ray_job_hook_picks_the_target_from_the_connection(kuberay_conn):
    set_connection("ray_unit", conn_type="ray", host="http://127.0.0.1:1")
    assert type(ray_job_hook("ray_unit")) is RayHook
    hook = ray_job_hook(kuberay_conn)
    assert type(hook) is KubeRayHook and hook.target == "kuberay" and hook.on_kubernetes
    assert hook.namespace == "ml"
    assert hook.kubernetes_conn_id == "kubernetes_unit"


def test_generated_rayjob_has_the_cluster_lifecycle_and_identity(kuberay_conn):
    # validated against the official CRD where the operator really creates it: tests/integration/test_kuberay.py
    hook = KubeRayHook(kuberay_conn)
    manifest = hook.rayjob_manifest(
        "train-0123456789",
        "python train.py",
        {"working_dir": "s3://bucket/pkg.zip", "env_vars": {"A": "1"}, "pip": ["scikit-learn"]},
        {"airflow_dag_id": "training_pipeline", "airflow_task_id": "group.train", "airflow_run_id": "r:1+x"},
        entrypoint_num_cpus=0.5,
        cluster=cluster_spec("example/ray:1", {"cpu": "2", "memory": "4Gi"}, worker_replicas=3),
        ttl_seconds_after_finished=120,
        active_deadline_seconds=3600,
        backoff_limit=2,
    )
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == spec["jobId"] == "train-0123456789"
    assert manifest["metadata"]["namespace"] == "ml"
    assert manifest["metadata"]["labels"]["mlplat.io/task-id"] == "group.train"
    assert manifest["metadata"]["annotations"]["mlplat.io/airflow_run_id"] == "r:1+x"
    assert (spec["shutdownAfterJobFinishes"], spec["ttlSecondsAfterFinished"]) == (True, 120)
    assert (spec["activeDeadlineSeconds"], spec["backoffLimit"]) == (3600, 2)
    assert "working_dir: s3://bucket/pkg.zip" in spec["runtimeEnvYAML"]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "example/ray:1"
    assert head["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    (workers,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 3

    head_only = hook.rayjob_manifest("a-1", "python x.py", {}, {}, cluster=cluster_spec(worker_replicas=0))
    assert "workerGroupSpecs" not in head_only["spec"]["rayClusterSpec"]
    assert head_only["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"
    ].startswith("rayproject/ray:2.")


def test_cluster_template_file_is_rendered(kuberay_conn, tmp_path):
    op = RayJobOperator(
        task_id="train",
        entrypoint="python train.py",
        ray_conn_id=kuberay_conn,
        cluster_spec_file=str(REPO / "include" / "kuberay" / "raycluster.yaml"),
        backoff_limit=1,
    )
    context = {**task_context(), "var": {"value": {"mlplat_ray_image": "registry.local/ray-train:7"}}}
    options = op._cluster_options(context)
    manifest = KubeRayHook(kuberay_conn).rayjob_manifest("train-1", "python train.py", {}, {}, **options)
    cluster = manifest["spec"]["rayClusterSpec"]
    assert (
        cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/ray-train:7"
    )
    assert cluster["workerGroupSpecs"][0]["replicas"] == 2 and manifest["spec"]["backoffLimit"] == 1

    not_a_cluster = tmp_path / "bad.yaml"
    not_a_cluster.write_text("entrypoint: python x.py\n")
    op.cluster_spec_file = str(not_a_cluster)
    with pytest.raises(MLPlatConfigError, match="must hold a rayClusterSpec"):
        op._cluster_options(context)


def _rayjob(status=None, created="2026-01-01T00:00:00Z"):
    return {"metadata": {"name": "j", "creationTimestamp": created}, "status": status or {}}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, "PENDING"),
        ({"jobDeploymentStatus": "Initializing"}, "PENDING"),
        ({"jobDeploymentStatus": "Running"}, "PENDING"),
        ({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, "RUNNING"),
        ({"jobDeploymentStatus": "Running", "jobStatus": "SUCCEEDED"}, "RUNNING"),  # submitter not done yet
        ({"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED"}, "PENDING"),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, "SUCCEEDED"),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, "STOPPED"),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "FAILED"),  # KubeRay < 1.2
        ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}, "FAILED"),
        ({"jobDeploymentStatus": "Failed", "jobStatus": "RUNNING", "reason": "DeadlineExceeded"}, "FAILED"),
        ({"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed"}, "FAILED"),
    ],
)
def test_kuberay_status_maps_to_ray_job_status(kuberay_conn, status, expected):
    state = KubeRayHook(kuberay_conn)._state("j", _rayjob(status))
    assert state.status == expected
    assert state.phase == (status.get("jobDeploymentStatus") or "New")
    assert state.created_at == 1767225600.0
    assert state.reason == status.get("reason", "")


def test_kuberay_state_explains_a_stuck_cluster_and_finds_the_dashboard(kuberay_conn):
    hook = KubeRayHook(kuberay_conn)
    cluster = {
        "reason": "",
        "conditions": [
            {
                "type": "HeadPodReady",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes: Insufficient cpu",
            },
            {"type": "RayClusterReplicaFailure", "status": "False", "reason": "", "message": ""},
        ],
    }
    state = hook._state("j", _rayjob({"jobDeploymentStatus": "Initializing", "rayClusterStatus": cluster}))
    assert state.message == "HeadPodReady: Unschedulable 0/3 nodes: Insufficient cpu"
    assert state.dashboard_url == ""
    running = hook._state(
        "j", _rayjob({"jobDeploymentStatus": "Running", "dashboardURL": "j-head-svc.ml.svc:8265"})
    )
    assert running.dashboard_url == "http://j-head-svc.ml.svc:8265"
    set_connection(
        "kuberay_host", conn_type="ray", host="https://ray.example.com", extra={"kubernetes_conn_id": "k"}
    )
    assert KubeRayHook("kuberay_host")._state("j", _rayjob({"dashboardURL": "x:8265"})).dashboard_url == (
        "https://ray.example.com"
    )


def test_state_description():
    state = RayJobState("j", "FAILED", time.time(), "Job failed\nlast logs: ...", "AppFailed", "Failed")
    assert state.describe() == "FAILED (Failed): AppFailed: Job failed\nlast logs: ..."
    assert state.describe(full_message=False) == "FAILED (Failed): AppFailed: Job failed"
    assert RayJobState(**state.to_dict()) == state
    assert RayJobState("j", "RUNNING", 0.0).describe() == "RUNNING"


def test_trigger_serializes_to_what_rebuilds_it():
    trigger = RayJobTrigger("train-abc", "ray_x", poll_interval=0.5, startup_timeout=30)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_mlplat.triggers.ray.RayJobTrigger"
    assert kwargs == {
        "job_id": "train-abc",
        "ray_conn_id": "ray_x",
        "poll_interval": 0.5,
        "startup_timeout": 30,
    }
    assert rebuilt(trigger).serialize() == (classpath, kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"entrypoint": " "}, "entrypoint=' ' is invalid"),
        (
            {"working_dir": "include/training"},
            "working_dir='include/training' is invalid: expected an existing absolute",
        ),
        ({"working_dir": "/no/such/folder"}, "working_dir='/no/such/folder' is invalid"),
        ({"env_vars": ["A=1"]}, "env_vars=\\['A=1'\\] is invalid: expected a dict"),
        ({"poll_interval": 0}, "poll_interval=0 is invalid: expected a number > 0"),
        ({"startup_timeout": -1}, "startup_timeout=-1 is invalid"),
        ({"worker_replicas": -2}, "worker_replicas=-2 is invalid: expected a number >= 0"),
        ({"backoff_limit": True}, "backoff_limit=True is invalid"),
        ({"cluster_spec": {"headGroupSpec": {}}, "image": "x"}, "image='x' is invalid: a cluster_spec"),
        ({"cluster_spec": {"workerGroupSpecs": []}}, "a rayClusterSpec needs a headGroupSpec"),
        (
            {"cluster_spec_file": "/no/such.yaml"},
            "cluster_spec_file='/no/such.yaml' is invalid: no such file",
        ),
    ],
)
def test_bad_parameters_fail_before_any_connection_is_read(kwargs, message):
    op = RayJobOperator(
        task_id="t", ray_conn_id="never_defined_anywhere", **{"entrypoint": "python x.py", **kwargs}
    )
    with pytest.raises(MLPlatConfigError, match=message):
        op.execute(task_context())


def test_runtime_env_merges_parameters_and_passes_mlflow_settings(tmp_path):
    set_connection("mlflow_tok", conn_type="mlflow", host="http://mlflow.local:5000", password="t0k")
    op = RayJobOperator(
        task_id="t",
        entrypoint="python train.py",
        working_dir=str(tmp_path),
        pip=["scikit-learn==1.9.1"],
        env_vars={"PLAIN": "x", "SUMMARY": {"uri": "s3://b/t.parquet", "rows": 3}},
        runtime_env={"env_vars": {"KEEP": 1, "PLAIN": "old"}, "config": {"setup_timeout_seconds": 60}},
        mlflow_conn_id="mlflow_tok",
    )
    env = op._runtime_env("train-abc")
    assert env["working_dir"] == str(tmp_path) and env["pip"] == ["scikit-learn==1.9.1"]
    assert env["config"] == {"setup_timeout_seconds": 60}
    assert env["env_vars"] == {
        "KEEP": "1",
        "PLAIN": "x",
        "SUMMARY": '{"uri": "s3://b/t.parquet", "rows": 3}',
        "MLFLOW_TRACKING_URI": "http://mlflow.local:5000",
        "MLPLAT_RAY_JOB_ID": "train-abc",
    }
    assert "t0k" not in repr(env)  # credentials never enter the runtime env the dashboard shows


def test_secret_env_goes_to_a_0600_file_the_entrypoint_sources(tmp_path):
    import os
    import subprocess

    hook = RayHook("ray_default")
    secret = "p@ss 'word' $HOME"
    entrypoint = hook.prepare_secret_env("train-abc", {"MLFLOW_TRACKING_PASSWORD": secret}, "env")
    path = Path(entrypoint.split(" ")[4].strip("'"))
    assert path.name == "train-abc.env" and secret not in entrypoint
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    out = subprocess.run(["/bin/sh", "-c", entrypoint], capture_output=True, text=True, env={}, check=True)
    assert f"MLFLOW_TRACKING_PASSWORD={secret}" in out.stdout.splitlines()  # exported, quoted verbatim
    assert hook.prepare_secret_env("train-abc", {}, "python x.py") == "python x.py"
    hook.discard_secret_env("train-abc")
    assert not path.exists() and os.access(path.parent, os.W_OK)


def test_kuberay_pods_take_secrets_from_the_env_secret_never_the_spec(kuberay_conn):
    set_connection(
        "kuberay_secret",
        conn_type="ray",
        extra={"kubernetes_conn_id": "kubernetes_unit", "namespace": "ml", "env_secret": "mlflow-creds"},
    )
    manifest = KubeRayHook("kuberay_secret").rayjob_manifest("train-abc", "python x.py", {}, {})
    cluster = manifest["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert [c["envFrom"] for g in groups for c in g["template"]["spec"]["containers"]] == [
        [{"secretRef": {"name": "mlflow-creds"}}]
    ] * 2
    with pytest.raises(MLPlatConfigError) as no_secret:  # credentials but no env_secret: refused
        KubeRayHook(kuberay_conn).prepare_secret_env(
            "train-abc", {"MLFLOW_TRACKING_TOKEN": "t0k"}, "python x.py"
        )
    assert "namespace 'ml'" in str(
        no_secret.value
    ) and "env_secret extra of connection 'kuberay_unit'" in str(no_secret.value)
    assert "t0k" not in str(no_secret.value)


def test_working_dir_package_is_content_addressed_with_one_top_folder(tmp_path):
    src = tmp_path / "training"
    (src / "pkg").mkdir(parents=True)
    (src / "train.py").write_text("print('hi')\n")
    (src / "pkg" / "util.py").write_text("X = 1\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    uri = package_working_dir(src)
    assert uri.startswith("file://") and uri.endswith(".zip") and "/ray/working_dirs/training-" in uri
    with zipfile.ZipFile(Path(uri.removeprefix("file://"))) as archive:
        assert sorted(archive.namelist()) == ["training/pkg/util.py", "training/train.py"]
    assert package_working_dir(src) == uri  # unchanged folder: same package
    (src / "train.py").write_text("print('changed')\n")
    assert package_working_dir(src) != uri


def test_ray_job_link_url():
    assert RayJobLink.url("http://127.0.0.1:8265/", "train-abc") == "http://127.0.0.1:8265/#/jobs/train-abc"
    context = task_context()
    RayJobLink().persist(context, "http://ray:8265", "train-abc")
    assert context["ti"].xcoms == {"_link_RayJobLink": "http://ray:8265/#/jobs/train-abc"}


def test_triggers_in_one_event_loop_share_one_client_per_target():
    from contextlib import asynccontextmanager

    from airflow_provider_mlplat.hooks.ray import shared_client

    events: list[str] = []

    @asynccontextmanager
    async def open_client():
        events.append("open")
        await asyncio.sleep(0.01)  # opening takes a while: concurrent users must not open twice
        yield object()
        events.append("close")

    async def use(key, hold):
        async with shared_client(key, open_client) as client:
            await asyncio.sleep(hold)
            return client

    async def scenario():
        a, b, c = await asyncio.gather(use("k8s-a", 0.05), use("k8s-a", 0.02), use("k8s-b", 0.01))
        assert a is b and a is not c
        assert events == ["open", "open", "close", "close"]  # one per key, closed by the last user
        again = await use("k8s-a", 0)
        assert again is not a and events[-2:] == ["open", "close"]  # reopened after everyone left

    asyncio.run(scenario())


def test_submission_waits_for_a_fresh_heads_job_agent_and_detects_a_race(monkeypatch):
    set_connection("ray_submit", conn_type="ray", host="http://127.0.0.1:1")
    hook = RayHook("ray_submit")
    calls, failures = (
        [],
        [RuntimeError("status code 500: No available agent to submit job, please try again later")],
    )

    class Client:  # stands in for ray's JobSubmissionClient: only the call is checked
        def submit_job(self, **kwargs):
            calls.append(kwargs)
            if failures:
                raise failures.pop(0)

    hook.__dict__["client"] = Client()
    states = iter([None, RayJobState("j", "PENDING", 1.0)])
    monkeypatch.setattr(hook, "get_job", lambda job_id: next(states))
    state, created = hook.submit_job("j", "python x.py", {"pip": ["x"]}, {"k": "v"})
    assert created and state.status == "PENDING"
    expected = {
        "entrypoint": "python x.py",
        "submission_id": "j",
        "runtime_env": {"pip": ["x"]},
        "metadata": {"k": "v"},
        "entrypoint_num_cpus": None,
    }
    assert calls == [expected, expected]  # retried once the agent answered

    # another worker submitted the same id in between: this one attaches instead of failing
    calls.clear()
    failures.append(RuntimeError("status code 500: Job with submission_id j already exists"))
    states = iter([None, RayJobState("j", "RUNNING", 1.0)])
    state, created = hook.submit_job("j", "python x.py", {"pip": ["x"]}, {"k": "v"})
    assert (state.status, created, calls) == ("RUNNING", False, [expected])


def test_a_saved_result_belongs_to_one_run_of_the_job():
    from airflow_provider_mlplat.ray_results import result_path, save_result, saved_result

    state = RayJobState("train-saved", "SUCCEEDED", created_at=1767225600.0)
    assert saved_result(state) == (False, None)
    uri = save_result(state, {"version": "7"})
    assert uri == str(result_path("train-saved")) and uri.endswith("/ray/results/train-saved.json")
    assert saved_result(state) == (True, {"version": "7"})
    resubmitted = RayJobState("train-saved", "SUCCEEDED", created_at=1767225660.0)  # same id, a later run
    assert saved_result(resubmitted) == (False, None)
    save_result(state, None)  # a job that printed no result line returns None on a retry too
    assert saved_result(state) == (True, None)
