"""The deployment_pipeline DAG end to end: local model server, real Prometheus, real MLflow."""

from __future__ import annotations

import httpx
import pytest

from airflow_provider_mlplat.artifacts import read_json
from tests.integration.kserve.conftest import Traffic, mlflow_client

pytestmark = pytest.mark.integration


def asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri)
        )
        return [event.extra for event in session.scalars(query)]


def test_first_rollout_canary_promotion_and_rollback_of_a_slow_champion(
    run_dag, serving, register, mlflow_server
):
    model, (v1, v2, v3) = register("good", "good", "slow")
    name = model.replace("_", "-")
    client = mlflow_client(mlflow_server)
    conf = {
        "model_name": model,
        "canary_steps": [10, 50, 100],
        # with a 50 ms p99 floor only canary requests slower than 100 ms (2 x the floor) can fail a good
        # canary, not the few-ms stalls of a loaded machine; the slow model (200 ms a request) still fails
        "analysis": {"window_seconds": 3, "min_requests": 2, "p99_floor_seconds": 0.05},
    }

    # first deployment: nothing serves yet, so the champion takes all traffic after its smoke request
    client.set_registered_model_alias(model, "champion", v1)
    first = run_dag("deployment_pipeline", conf=conf)
    assert first.state == "success", first.states
    assert first.xcoms["rollout"] | {"revision": None, "decision_record": None} == {
        "deployment": name, "namespace": "local", "asset": f"kserve://local/{name}", "model_name": model,
        "version": v1, "previous_version": None, "outcome": "promoted", "steps": [100],
        "url": f"{serving.url}/v2/models/{name}/infer", "traffic": {v1: 100}, "revision": None,
        "decision_record": None,
    }  # fmt: skip

    # a new champion: canary 10% -> 50% -> 100% with live traffic, each step judged on Prometheus
    client.set_registered_model_alias(model, "previous-champion", v1)
    client.set_registered_model_alias(model, "champion", v2)
    with Traffic(serving.url, name) as traffic:
        second = run_dag("deployment_pipeline", conf=conf)
    assert second.state == "success", second.states
    result = second.xcoms["rollout"]
    assert (result["version"], result["previous_version"], result["traffic"]) == (v2, v1, {v2: 100})
    assert traffic.by_version[(v1, 200)] > 0 and traffic.by_version[(v2, 200)] > 0
    assert sum(n for (_, status), n in traffic.by_version.items() if status != 200) == 0
    record = read_json(result["decision_record"])
    assert [(h["phase"], h["percent"]) for h in record["history"]] == [
        ("stage", None), ("step", 10), ("step", 50), ("promote", None),
    ]  # fmt: skip
    for step in record["history"][1:3]:
        assert step["analysis"]["verdict"] == "pass", step["analysis"]
        assert step["analysis"]["canary"]["requests"] >= 2 and step["analysis"]["canary"]["p99"] < 0.5
    assert client.get_model_version(model, v2).tags["mlplat.rollout.status"] == "serving"
    events = asset_events(f"kserve://local/{name}")
    assert [(e["version"], e["traffic"], e["previous_version"]) for e in events] == [
        (v1, {v1: 100}, None), (v2, {v2: 100}, v1),
    ]  # fmt: skip
    assert httpx.get(f"{serving.url}/v2/models/{model}@{v1}/ready").status_code == 404  # old version unloaded

    # a slow champion: its p99 fails the 10% step; traffic goes back to v2 and so does the alias
    client.set_registered_model_alias(model, "previous-champion", v2)
    client.set_registered_model_alias(model, "champion", v3)
    with Traffic(serving.url, name) as traffic:
        third = run_dag("deployment_pipeline", conf=conf)
    assert third.state == "failed" and third.states == {"rollout": "failed"}
    state = httpx.get(f"{serving.url}/mlplat/v1/deployments/{name}").json()
    assert (state["stable"], state["canary"], state["canary_percent"]) == (v2, None, 0)
    assert client.get_model_version_by_alias(model, "champion").version == v2
    tags = client.get_model_version(model, v3).tags
    assert tags["mlplat.rollout.status"] == "rolled_back"
    assert (
        "canary analysis at 10% failed" in tags["mlplat.rollout.reason"]
        and "p99" in tags["mlplat.rollout.reason"]
    )
    assert traffic.by_version[(v3, 200)] > 0  # it served (slowly) before the gate closed
    assert len(asset_events(f"kserve://local/{name}")) == 2  # no serving event for the failed rollout
