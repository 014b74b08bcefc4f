"""The local KServe model server: MLflow versions by name, exact canary split, metrics, inference log, restarts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from airflow_provider_mlplat.inference_log import read_inference_log
from airflow_provider_mlplat.operators.kserve import v2_request
from airflow_provider_mlplat.testing.waiting import wait_for
from tests.integration.kserve.conftest import FEATURES, rows

pytestmark = pytest.mark.integration


def load(serving, model_id: str) -> httpx.Response:
    return httpx.post(f"{serving.url}/v2/repository/models/{model_id}/load", timeout=300)


def put(serving, name: str, **body) -> httpx.Response:
    return httpx.put(f"{serving.url}/mlplat/v1/deployments/{name}", json=body, timeout=30)


def test_versions_split_metrics_and_inference_log(serving, register, logged_models):
    import pandas as pd

    model, (v1, v2) = register("good", "good")
    name = model.replace("_", "-")
    for version in (v1, v2):
        assert load(serving, f"{model}@{version}").json() == {"name": f"{model}@{version}", "load": True}
    state = put(serving, name, model_name=model, stable=v1, canary=v2, canary_percent=10).json()
    assert state | {"updated_at": None} == {
        "name": name, "model_name": model, "stable": v1, "canary": v2, "canary_percent": 10,
        "revision": 1, "ready": True, "updated_at": None,
    }  # fmt: skip

    sent = rows(100, seed=7)
    with httpx.Client(base_url=serving.url, timeout=10) as client:
        answers = [client.post(f"/v1/models/{name}:predict", json={"instances": [row]}) for row in sent]
        v2_answer = client.post(f"/v2/models/{name}/infer", json=v2_request(sent[:2]))
        metrics = client.get("/metrics").text
    assert all(a.status_code == 200 for a in answers)
    versions = [a.headers["x-mlplat-model-version"] for a in answers]
    assert versions.count(v2) == 10 and versions.count(v1) == 90  # exact, not random
    expected = logged_models.good.predict(pd.DataFrame(sent)).tolist()
    assert [a.json()["predictions"][0] for a in answers] == expected
    body = v2_answer.json()
    assert body["model_name"] == name and body["outputs"][0]["shape"] == [2]
    assert body["outputs"][0]["data"] == expected[:2]

    canary_count = f'mlplat_inference_requests_total{{deployment="{name}",model_name="{model}",model_version="{v2}",status_code="200"}} 10.0'
    assert canary_count in metrics
    assert f'mlplat_inference_request_duration_seconds_bucket{{deployment="{name}",le="0.0001"' in metrics
    assert (
        f'mlplat_deployment_traffic_percent{{deployment="{name}",model_name="{model}",model_version="{v2}",role="canary"}} 10.0'
        in metrics
    )

    wait_for(lambda: read_inference_log(serving.inference_log, name).shape[0] == 102, what="102 log rows")
    log = read_inference_log(serving.inference_log, name)
    assert set(FEATURES) <= set(log.columns)
    assert log["model_version"].value_counts().to_dict() == {
        v1: 92,
        v2: 10,
    }  # the V2 request (2 rows) went to v1
    assert log[log["model_version"] == v2]["status_code"].eq(200).all()
    first = log.iloc[0]
    assert (first["conv_rate"], first["prediction"]) == (sent[0]["conv_rate"], expected[0])
    assert str(log["timestamp"].dt.tz) == "UTC"

    def scraped():
        result = httpx.get(
            f"{serving.prometheus_url}/api/v1/query",
            params={
                "query": f'sum by (model_version) (mlplat_inference_requests_total{{deployment="{name}"}})'
            },
        ).json()["data"]["result"]
        return {r["metric"]["model_version"]: float(r["value"][1]) for r in result}

    assert wait_for(lambda: scraped().get(v2) == 10.0 and scraped(), what="Prometheus to scrape")[v1] >= 90
    assert httpx.delete(f"{serving.url}/mlplat/v1/deployments/{name}").status_code == 200


def test_repository_and_deployment_api_refuse_bad_requests(serving, register):
    model, (v1,) = register("good")
    name = model.replace("_", "-")
    bad_name = load(serving, "no-version-here")
    assert bad_name.status_code >= 400 and "'<registered model>@<version number>'" in bad_name.text
    missing = load(serving, f"{model}@99")
    assert missing.status_code >= 400 and model in missing.text
    not_loaded = put(serving, name, model_name=model, stable=v1)
    assert (
        not_loaded.status_code == 409 and f"POST /v2/repository/models/{model}@{v1}/load" in not_loaded.text
    )
    assert load(serving, f"{model}@{v1}").status_code == 200
    assert put(serving, name, model_name=model, stable=v1, canary_percent=20).status_code == 422
    assert put(serving, name, model_name=model, stable=v1).json()["revision"] == 1
    assert put(serving, name, model_name=model, stable=v1).json()["revision"] == 1  # no-op: same revision
    serving_version = httpx.post(f"{serving.url}/v2/repository/models/{model}@{v1}/unload")
    assert serving_version.status_code == 500 and "shift their traffic away first" in serving_version.text
    assert httpx.delete(f"{serving.url}/mlplat/v1/deployments/{name}").status_code == 200
    assert httpx.get(f"{serving.url}/v2/models/{model}@{v1}/ready").status_code == 404  # unloaded with it
    assert httpx.get(f"{serving.url}/mlplat/v1/deployments/{name}").status_code == 404


def test_sigterm_loses_no_logged_request_and_restart_restores_deployments(serving, register):
    model, (v1,) = register("good")
    name = model.replace("_", "-")
    assert load(serving, f"{model}@{v1}").status_code == 200
    before = put(serving, name, model_name=model, stable=v1).json()
    url = f"{serving.url}/v1/models/{name}:predict"
    ok = []

    def client_loop(seed: int) -> None:
        with httpx.Client(timeout=5) as client:
            for i in range(100_000):
                try:
                    response = client.post(url, json={"instances": rows(1, seed=seed * 1000 + i)})
                except httpx.HTTPError:
                    return
                if response.status_code == 200:
                    ok.append(1)

    rpc = serving.platform.rpc()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client_loop, seed) for seed in range(4)]
        wait_for(lambda: len(ok) > 300, what="some traffic")
        rpc.stopProcess("model-server", True)  # SIGTERM while the clients keep sending
        for future in futures:
            future.result()
    served = len(ok)
    assert read_inference_log(serving.inference_log, name).shape[0] == served

    rpc.startProcess("model-server", True)
    wait_for(lambda: _live(serving.url), timeout=120, what="the model server to restart")
    after = httpx.get(f"{serving.url}/mlplat/v1/deployments/{name}").json()
    assert (after["stable"], after["revision"], after["ready"]) == (v1, before["revision"], True)
    assert httpx.post(url, json={"instances": rows(1)}).status_code == 200
    assert httpx.delete(f"{serving.url}/mlplat/v1/deployments/{name}").status_code == 200


def _live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/live", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_platform_check_dag_tests_the_kserve_and_prometheus_connections(run_dag, serving):
    result = run_dag("platform_check", conf={"connections": ["kserve_default", "prometheus_default"]})
    assert result.state == "success", result.states
    assert result.xcoms["check_connection[0]"]["message"] == f"KServe model server at {serving.url} is live"
    assert result.xcoms["check_connection[1]"]["message"].startswith("Prometheus 2.")
