"""The harness itself: CRD validation catches bad manifests; the Redis fixture gives a clean DB."""

from __future__ import annotations

import jsonschema
import pytest


def test_validate_manifest_accepts_a_valid_rayjob_and_names_a_bad_field(validate_manifest):
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "train"},
        "spec": {"entrypoint": "python train.py", "shutdownAfterJobFinishes": True},
    }
    validate_manifest(rayjob)
    rayjob["spec"]["shutdownAfterJobFinishes"] = "yes"
    with pytest.raises(jsonschema.ValidationError, match="'yes' is not of type 'boolean'"):
        validate_manifest(rayjob)


def test_validate_manifest_checks_inference_services(validate_manifest):
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "eta"},
        "spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"modelFormat": {"name": "mlflow"}}}},
    }
    validate_manifest(isvc)
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    with pytest.raises(jsonschema.ValidationError, match="'ten' is not of type 'integer'"):
        validate_manifest(isvc)


def test_redis_fixture_gives_an_empty_database(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.set("mlplat:harness", "1")
    assert client.get("mlplat:harness") == b"1"


def test_the_demo_client_retries_5xx_and_transport_errors_then_gives_the_last_answer():
    import httpx

    from mlplat.airflow_api import _retrying_client

    answers = iter([httpx.ConnectError("refused"), 500, 200])
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, json={"n": len(seen)})

    client = _retrying_client(base_url="http://airflow/api/v2", transport=httpx.MockTransport(handler))
    response = client.post("/variables", json={"key": "k", "value": "1"})
    assert response.status_code == 200 and response.json() == {"n": 3}
    assert seen == [("POST", "/api/v2/variables")] * 3

    always = _retrying_client(
        base_url="http://airflow", transport=httpx.MockTransport(lambda r: httpx.Response(503))
    )
    assert always.get("/health").status_code == 503  # after 4 attempts, the last answer
