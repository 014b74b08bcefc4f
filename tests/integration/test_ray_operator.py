"""RayJobOperator against a real local Ray head: success, failure, retry reattach, kill, startup timeout."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import httpx
import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_mlplat.exceptions import MLPlatError
from airflow_provider_mlplat.hooks.ray import RayHook
from airflow_provider_mlplat.operators.ray import RESULT_MARKER, RayJobOperator, job_key
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.waiting import wait_for
from tests.ray_support import first_event, rebuilt, run_to_end, task_context

pytestmark = pytest.mark.integration


def script(folder, code: str) -> dict[str, str]:
    """Operator arguments running ``code`` as job.py from a working dir Ray uploads."""
    folder.mkdir(exist_ok=True)
    (folder / "job.py").write_text(code)
    return {"working_dir": str(folder), "entrypoint": "python job.py"}


def jobs_of(context) -> list[str]:
    """Submission ids on the Ray head that belong to this task instance."""
    key = job_key(context)
    return sorted(
        j.submission_id for j in RayHook().client.list_jobs() if (j.submission_id or "").startswith(key)
    )


def wait_status(job_id: str, wanted: str, timeout: float = 60) -> None:
    seen: list[str | None] = [None]

    def reached() -> bool:
        state = RayHook().get_job(job_id)
        seen[0] = state and state.status
        return seen[0] == wanted

    wait_for(reached, timeout, lambda: f"job {job_id} to be {wanted} (it is {seen[0]})", 0.2)


RESULT = f"""
import json, os
print("job", os.environ["MLPLAT_RAY_JOB_ID"])
print("{RESULT_MARKER}" + json.dumps({{"version": "3", "metrics": {{"roc_auc": 0.9}}}}))
"""


def test_deferred_job_returns_its_result_and_links_the_dashboard(ray_cluster, tmp_path):
    op = RayJobOperator(task_id="echo", poll_interval=0.2, **script(tmp_path, RESULT))
    context = task_context("echo")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = rebuilt(deferred.value.trigger)
    assert trigger.job_id == job_key(context) and trigger.poll_interval == 0.2
    event = asyncio.run(first_event(trigger))
    assert event["event"] == "finished" and event["state"]["status"] == "SUCCEEDED", event

    assert op.execute_complete(context, event) == {"version": "3", "metrics": {"roc_auc": 0.9}}
    job_id = job_key(context)
    xcoms = context["ti"].xcoms
    assert xcoms["ray_job"] == {
        "job_id": job_id,
        "target": "ray",
        "status": "SUCCEEDED",
        "dashboard_url": ray_cluster.address,
    }
    assert xcoms["_link_RayJobLink"] == f"{ray_cluster.address}/#/jobs/{job_id}"
    assert f"job {job_id}" in RayHook().job_logs(RayHook().get_job(job_id))  # the job saw its own id


def test_failing_entrypoint_fails_the_task_with_rays_error_and_the_log_tail(ray_cluster, tmp_path):
    failing = "import sys\nprint('loading the training set')\nsys.exit('boom: no rows')\n"
    op = RayJobOperator(task_id="fail", poll_interval=0.2, **script(tmp_path / "a", failing))
    context = task_context("fail")
    with pytest.raises(MLPlatError) as failure:
        run_to_end(op, context)
    message = str(failure.value)
    assert f"ray job {job_key(context)} FAILED: JOB_ENTRYPOINT_COMMAND_ERROR" in message
    assert "Job entrypoint command failed with exit code 1" in message
    assert "--- last" in message and "loading the training set" in message and "boom: no rows" in message
    assert context["ti"].xcoms["ray_job"]["status"] == "FAILED"

    # the next try does not reattach to the failed job: it submits the task instance's second job
    fixed = RayJobOperator(task_id="fail", poll_interval=0.2, **script(tmp_path / "b", RESULT))
    assert run_to_end(fixed, context)["version"] == "3"
    assert jobs_of(context) == [job_key(context), f"{job_key(context)}-r2"]


def test_retry_reattaches_to_the_running_job_and_a_finished_job_is_not_rerun(ray_cluster, tmp_path):
    context = task_context("reattach")
    args = script(tmp_path, "import time\ntime.sleep(3)\n" + RESULT)

    def operator():
        return RayJobOperator(task_id="reattach", poll_interval=0.2, **args)

    with pytest.raises(TaskDeferred) as first:
        operator().execute(context)
    # the worker dies while the job runs; the retry runs execute() again on a new operator object
    with pytest.raises(TaskDeferred) as second:
        operator().execute(context)
    assert first.value.trigger.job_id == second.value.trigger.job_id == job_key(context)
    assert jobs_of(context) == [job_key(context)]

    event = asyncio.run(first_event(rebuilt(second.value.trigger)))
    result = operator().execute_complete(context, event)
    assert result["version"] == "3"
    # a third try after success returns the same result without running anything
    assert operator().execute(context) == result
    assert jobs_of(context) == [job_key(context)]


def test_not_deferred_streams_the_log_and_kill_stops_the_job(ray_cluster, tmp_path, capsys):
    code = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"
    op = RayJobOperator(task_id="kill", deferrable=False, poll_interval=0.2, **script(tmp_path, code))
    context = task_context("kill")
    outcome: dict[str, BaseException] = {}

    def run():
        try:
            op.execute(context)
        except BaseException as err:
            outcome["error"] = err

    worker = threading.Thread(target=run)
    worker.start()
    lines: list[str] = []

    def started() -> bool:  # the task log (structlog, on stdout) shows it while it runs
        assert worker.is_alive(), (outcome, lines)
        lines.append(capsys.readouterr().out)
        return "] started " in "".join(lines)

    wait_for(started, 60, "the job's first line in the task log", 0.1)
    printed = "".join(lines)
    op.on_kill()
    worker.join(timeout=60)
    printed += capsys.readouterr().out
    assert not worker.is_alive()
    assert RayHook().get_job(job_key(context)).status == "STOPPED"
    assert isinstance(outcome["error"], MLPlatError) and "STOPPED" in str(outcome["error"])
    assert "line(s) of the log" not in printed  # streamed: not repeated at the end


def test_trigger_on_kill_stops_a_deferred_job(ray_cluster, tmp_path):
    args = script(tmp_path, "import time\ntime.sleep(120)\n")
    op = RayJobOperator(task_id="killdeferred", poll_interval=0.2, **args)
    context = task_context("killdeferred")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = rebuilt(deferred.value.trigger)
    wait_status(trigger.job_id, "RUNNING")
    asyncio.run(trigger.on_kill())
    wait_status(trigger.job_id, "STOPPED")


def test_job_pending_past_the_startup_timeout_fails_with_the_reason_and_asks_to_stop(ray_cluster, tmp_path):
    op = RayJobOperator(
        task_id="pending",
        entrypoint_num_cpus=64,  # more than the head has: Ray keeps it PENDING
        poll_interval=0.2,
        startup_timeout=2,
        **script(tmp_path, "print(1)\n"),
    )
    context = task_context("pending")
    with pytest.raises(MLPlatError) as failure:
        run_to_end(op, context)
    message = str(failure.value)
    assert f"ray job {job_key(context)} did not start: still pending" in message
    assert "startup_timeout=2 s" in message and "waiting for resources" in message
    assert message.endswith("Asked to stop it.")
    # Ray 2.60 queues the stop until the job's supervisor gets its resources: it never ran
    assert RayHook().get_job(job_key(context)).status == "PENDING"


def test_mlflow_credentials_reach_the_job_from_a_0600_file_never_the_dashboard(ray_cluster, tmp_path):
    password = "pw-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    set_connection(
        "mlflow_basic", conn_type="mlflow", host="http://127.0.0.1:1", login="ml", password=password
    )
    code = (
        "import hashlib, json, os\n"
        "print('MLFLOW_TRACKING_USERNAME' in os.environ, 'in the environment')\n"  # no value printed
        "seen = {'user': os.environ['MLFLOW_TRACKING_USERNAME'], 'uri': os.environ['MLFLOW_TRACKING_URI'],\n"
        "        'sha': hashlib.sha256(os.environ['MLFLOW_TRACKING_PASSWORD'].encode()).hexdigest()}\n"
        f"print('{RESULT_MARKER}' + json.dumps(seen))\n"
    )
    op = RayJobOperator(
        task_id="creds", poll_interval=0.2, mlflow_conn_id="mlflow_basic", **script(tmp_path, code)
    )
    context = task_context("creds")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    job_id = job_key(context)
    submitted = httpx.get(f"{ray_cluster.address}/api/jobs/{job_id}", headers=RayHook().headers)
    assert password not in submitted.text  # entrypoint, runtime env, metadata as the dashboard shows them
    secret_file = Path(submitted.json()["entrypoint"].split(" ")[4])
    assert secret_file.stat().st_mode & 0o777 == 0o600 and secret_file.read_text().count(password) == 1
    event = asyncio.run(first_event(rebuilt(deferred.value.trigger)))
    assert op.execute_complete(context, event) == {
        "user": "ml",
        "uri": "http://127.0.0.1:1",
        "sha": hashlib.sha256(password.encode()).hexdigest(),
    }
    shown = httpx.get(f"{ray_cluster.address}/api/jobs/{job_id}", headers=RayHook().headers).text
    listed = httpx.get(f"{ray_cluster.address}/api/jobs/", headers=RayHook().headers).text
    logs = RayHook().job_logs(RayHook().get_job(job_id))
    assert "True in the environment" in logs and '"runtime_env"' in shown
    assert password not in shown + listed + logs  # job info (entrypoint, runtime env, metadata), list, log
    assert not secret_file.exists()  # the finished job's file is gone
