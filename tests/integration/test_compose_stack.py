"""The whole platform as containers, for real: Docker Engine, images on a Debian base, the loop, down."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter

import pytest

from airflow_provider_mlplat.testing.ci import unavailable
from tests.compose_support import COMPOSE_FILE, ComposeProject, EngineUnavailable, build_images, docker_engine

pytestmark = pytest.mark.integration

#: the DAGs whose tasks must have run on the Celery workers
LOOP_DAGS = ("feature_pipeline", "training_pipeline", "deployment_pipeline")


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    """A Docker engine (installed from Debian and started when missing) and the Debian base image."""
    try:
        return docker_engine()
    except EngineUnavailable as err:
        unavailable(f"no Docker engine: {err}")


@pytest.mark.timeout(900)  # on a fresh machine the engine fixture installs Docker and debootstraps a base
def test_up_without_env_file_fails_in_one_line_that_says_how_to_make_it(engine, tmp_path):
    env = {k: v for k, v in engine.items() if not k.startswith("MLPLAT_")}
    command = ["docker-compose", "--project-directory", str(tmp_path), "-f", str(COMPOSE_FILE), "up", "-d"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1 and "make compose-env" in lines[0], lines


@pytest.mark.timeout(1800)  # builds, up, the whole loop and a worker kill: 9-12 min with cached layers
def test_the_stack_runs_the_loop_on_celery_workers_and_ray_worker_nodes_and_leaves_nothing(engine, tmp_path):
    started = time.monotonic()
    built = build_images(engine)
    print(f"\nimages built in {time.monotonic() - started:.0f} s: {built}")
    project = ComposeProject(engine, tmp_path, name=f"mlplat-test-{os.getpid()}")
    try:
        up = time.monotonic()
        project.up(airflow_worker=2)
        healthy = project.wait_healthy(timeout=300)
        print(f"up -> every service healthy: {healthy:.0f} s ({time.monotonic() - up:.0f} s with `up`)")
        services = Counter(name.split("_")[1] for name in project.health())
        assert services["airflow-worker"] == 2 and services["ray-worker"] >= 1, services
        assert {
            "airflow-api-server",
            "airflow-scheduler",
            "airflow-dag-processor",
            "airflow-triggerer",
        } <= set(services)

        workers = _worker_hosts(project)
        loop = time.monotonic()
        demo = project.compose_process(tmp_path / "demo.log", "run", "--rm", "demo")
        killed = _kill_the_worker_running_the_first_training(project)
        demo.wait(timeout=1200)
        out = (tmp_path / "demo.log").read_text()
        print(f"the closed loop through the containers: {time.monotonic() - loop:.0f} s")
        print(out[-4000:])
        assert demo.returncode == 0, out[-6000:]
        assert "Timeline" in out and "rolled out" in out

        _assert_the_killed_task_was_retried_on_another_worker(project, killed)
        _assert_tasks_ran_on_celery_workers(project, workers)
        _assert_training_ran_once_per_run_on_ray_worker_nodes(project)
    finally:
        down = time.monotonic()
        project.down()
        print(f"down: {time.monotonic() - down:.0f} s; whole test {time.monotonic() - started:.0f} s")
    assert project.leftovers() == {"containers": [], "networks": [], "volumes": []}


def _api(project: ComposeProject):
    from mlplat.airflow_api import AirflowRestClient

    password = _env_value(project, "MLPLAT_ADMIN_PASSWORD")
    return AirflowRestClient(f"http://127.0.0.1:{project.ports['airflow']}", "admin", password)


def _env_value(project: ComposeProject, name: str) -> str:
    values = dict(line.split("=", 1) for line in project.env_file.read_text().splitlines() if "=" in line)
    return values[name]


def _worker_hosts(project: ComposeProject) -> dict[str, str]:
    """Hostname -> container id of each Celery worker."""
    return {
        c["Config"]["Hostname"]: c["Id"]
        for c in project.containers()
        if c["Config"]["Labels"]["com.docker.compose.service"] == "airflow-worker"
    }


def _kill_the_worker_running_the_first_training(project: ComposeProject, timeout: float = 600) -> dict:
    """
    Wait until the first training run's Ray ``train`` task runs on a Celery worker, then kill that
    worker's container (SIGKILL, removed: nothing restarts it); the task instance as it was then.
    """
    api, deadline = _api(project), time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api.run_ids("training_pipeline") if _dag_exists(api, "training_pipeline") else []
        for run_id in runs:
            ti = api.http.get(f"/dags/training_pipeline/dagRuns/{run_id}/taskInstances/train").json()
            if ti.get("state") == "running" and ti.get("hostname"):
                container = _worker_hosts(project)[ti["hostname"]]
                project.docker("rm", "--force", container)
                print(
                    f"killed Celery worker {ti['hostname']} while it ran {run_id} / train (try {ti['try_number']})"
                )
                return ti
        time.sleep(0.2)
    raise TimeoutError("the first training run's train task never ran")


def _dag_exists(api, dag_id: str) -> bool:
    return api.http.get(f"/dags/{dag_id}").status_code == 200


def _assert_the_killed_task_was_retried_on_another_worker(project: ComposeProject, killed: dict) -> None:
    api = _api(project)
    ti = api.http.get(f"/dags/training_pipeline/dagRuns/{killed['dag_run_id']}/taskInstances/train").json()
    print(f"after the kill: train try {ti['try_number']} {ti['state']} on {ti['hostname']}")
    assert ti["state"] == "success" and ti["try_number"] == killed["try_number"] + 1
    assert ti["hostname"] and ti["hostname"] != killed["hostname"]


def _assert_tasks_ran_on_celery_workers(project: ComposeProject, workers: dict[str, str]) -> None:
    api = _api(project)
    hosts: Counter[str] = Counter()
    for dag_id in LOOP_DAGS:
        for run_id in api.run_ids(dag_id):
            tis = api.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
            hosts.update(ti["hostname"] for ti in tis if ti["state"] == "success")
    print(f"task instances per Celery worker: {dict(hosts)}")
    assert hosts and set(hosts) <= set(workers), (hosts, workers)


def _assert_training_ran_once_per_run_on_ray_worker_nodes(project: ComposeProject) -> None:
    import httpx

    token = _env_value(project, "MLPLAT_RAY_TOKEN")
    with httpx.Client(
        base_url=f"http://127.0.0.1:{project.ports['ray_dashboard']}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as ray:
        jobs = [j for j in ray.get("/api/jobs/").json() if j["metadata"].get("airflow_task_id") == "train"]
        per_run = Counter(j["metadata"]["airflow_run_id"] for j in jobs)
        assert jobs and all(n == 1 for n in per_run.values()), per_run  # no duplicate Ray job
        nodes = ray.get("/api/v0/nodes", params={"detail": "true"}).json()["data"]["result"]["result"]
        head = {n["node_id"] for n in nodes if n["is_head_node"]}
        for job in jobs:
            assert job["status"] == "SUCCEEDED", job
            params = {"filter_keys": "job_id", "filter_predicates": "=", "filter_values": job["job_id"]}
            tasks = ray.get("/api/v0/tasks", params={**params, "detail": "true"}).json()["data"]["result"][
                "result"
            ]
            placed = Counter(t["node_id"] for t in tasks if t["type"] == "NORMAL_TASK")
            print(f"Ray job {job['submission_id']}: tasks per node {dict(placed)}; head {head}")
            assert placed and not (set(placed) & head), (placed, head)
