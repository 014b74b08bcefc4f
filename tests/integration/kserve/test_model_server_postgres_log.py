"""The model server process logging to PostgreSQL (its environment's configuration) through an outage."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from contextlib import contextmanager

import httpx
import pytest
import sqlalchemy

from airflow_provider_mlplat.inference_log import read_inference_log
from airflow_provider_mlplat.testing.ci import unavailable
from airflow_provider_mlplat.testing.services import PASSWORD, free_port, postgres_admin, with_password
from airflow_provider_mlplat.testing.waiting import wait_for
from tests.integration.kserve.conftest import rows

pytestmark = pytest.mark.integration

KEPT = "record(s) not written, kept for the next flush"


@contextmanager
def model_server(env: dict[str, str], log_file):
    """``mlplat-model-server`` as its own process (the checkout's environment), output to ``log_file``."""
    from mlplat.platform import CHECKOUT_MODEL_SERVER

    if not CHECKOUT_MODEL_SERVER.exists():
        unavailable(f"no model server environment at {CHECKOUT_MODEL_SERVER}: make install")
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            [str(CHECKOUT_MODEL_SERVER)],
            env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@contextmanager
def unreachable(database: str):
    """PostgreSQL refuses connections to ``database``, and the open ones are cut; restored afterwards."""
    postgres_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        postgres_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        yield
    finally:
        postgres_admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


@pytest.mark.timeout(420)
def test_a_postgres_outage_during_traffic_loses_no_logged_request(
    register, mlflow_server, postgres_url, tmp_path
):
    model, (v1,) = register("good")
    name = model.replace("_", "-")
    port, log_file = free_port(), tmp_path / "model-server.log"
    env = {
        "MLPLAT_SERVING_PORT": str(port),
        "MLPLAT_SERVING_INFERENCE_LOG": with_password(postgres_url),
        "MLPLAT_SERVING_LOG_FLUSH_SECONDS": "0.2",
        "MLFLOW_TRACKING_URI": mlflow_server,
    }
    url = f"http://127.0.0.1:{port}"

    def logged() -> list[str]:
        return read_inference_log(postgres_url, name)["request_id"].tolist()

    def output() -> str:
        return log_file.read_text(errors="replace")

    with model_server(env, log_file) as server, httpx.Client(base_url=url, timeout=30) as client:

        def live() -> bool:
            assert server.poll() is None, f"the model server exited: {output()[-3000:]}"
            try:
                return client.get("/v2/health/live").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(live, timeout=120, what="the model server to start")
        assert client.post(f"/v2/repository/models/{model}@{v1}/load", timeout=300).status_code == 200
        body = {"model_name": model, "stable": v1}
        assert client.put(f"/mlplat/v1/deployments/{name}", json=body).status_code == 200

        def send(phase: str, count: int) -> list[str]:
            ids = [f"{phase}-{n}" for n in range(count)]
            for n, rid in enumerate(ids):
                answer = client.post(
                    f"/v1/models/{name}:predict",
                    json={"instances": rows(1, seed=n)},
                    headers={"x-request-id": rid},
                )
                assert answer.status_code == 200, answer.text  # serving never waits on the log
            return ids

        sent = send("before", 20)
        wait_for(lambda: sorted(logged()) == sorted(sent), what="the 20 rows before the outage")
        with unreachable(sqlalchemy.make_url(postgres_url).database):
            sent += send("during", 30)
            wait_for(lambda: KEPT in output(), what=lambda: f"a failed flush in: {output()[-2000:]}")
        sent += send("after", 10)
        wait_for(lambda: len(logged()) >= 60, timeout=30, what=lambda: f"60 rows, found {len(logged())}")

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, output()[-3000:]

    log = read_inference_log(postgres_url, name)
    assert Counter(log["request_id"]) == Counter(sent)  # each request exactly once: none lost, none twice
    assert set(log["model_version"]) == {v1} and set(log["status_code"]) == {200}
    text = output()
    assert "inference log flushed: 60 records written" in text
    assert ":***@" in text  # the warning names the log with its password masked
    assert PASSWORD not in text
