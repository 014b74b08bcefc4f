"""KServeRolloutOperator on the local model server: smoke and metric gates roll back, on_kill, bad input, delete."""

from __future__ import annotations

import httpx
import pytest

from airflow_provider_mlplat.artifacts import read_json
from airflow_provider_mlplat.exceptions import MLPlatConfigError, RolloutFailed
from airflow_provider_mlplat.operators.kserve import KServeDeleteOperator, KServeRolloutOperator
from tests.integration.kserve.conftest import (
    Traffic,
    defer_until,
    deploy_stable,
    in_triggerer,
    mlflow_client,
    run_operator,
)

pytestmark = pytest.mark.integration


def champion(client, model: str, version: str, previous: str) -> None:
    client.set_registered_model_alias(model, "previous-champion", previous)
    client.set_registered_model_alias(model, "champion", version)


def deployment(serving, name: str) -> dict:
    return httpx.get(f"{serving.url}/mlplat/v1/deployments/{name}").json()


def loaded(serving, model_id: str) -> bool:
    return httpx.get(f"{serving.url}/v2/models/{model_id}/ready").status_code == 200


def test_broken_version_fails_the_smoke_request_before_any_traffic_and_is_rolled_back(
    serving, register, mlflow_server
):
    model, (good, broken) = register("good", "broken")
    name = deploy_stable(serving, model, good)
    client = mlflow_client(mlflow_server)
    champion(client, model, broken, previous=good)
    operator = KServeRolloutOperator(task_id="rollout", model_name=model, poll_interval=0.2)

    with pytest.raises(RolloutFailed, match="smoke request") as failed:
        run_operator(operator)

    assert deployment(serving, name) | {"updated_at": None, "revision": None} == {
        "name": name, "model_name": model, "stable": good, "canary": None, "canary_percent": 0,
        "revision": None, "ready": True, "updated_at": None,
    }  # fmt: skip
    assert deployment(serving, name)["revision"] == 1  # the split never changed
    assert not loaded(serving, f"{model}@{broken}")
    assert client.get_model_version_by_alias(model, "champion").version == good
    tags = client.get_model_version(model, broken).tags
    assert tags["mlplat.rollout.status"] == "rolled_back"
    assert "this model version is broken" in tags["mlplat.rollout.reason"]
    record = read_json(tags["mlplat.rollout.decision_record"])
    assert record["outcome"] == "rolled_back" and record["stable"] == good
    assert record["alias"] == f"champion moved back from {broken} to {good} (previous-champion)"
    assert [h["phase"] for h in record["history"]] == ["stage"]
    assert "alias: champion moved back" in str(failed.value) and str(failed.value).count("rolled back") == 1


def test_error_rate_gate_rolls_a_flaky_canary_back_at_the_first_step(serving, register, mlflow_server):
    model, (good, flaky) = register("good", "flaky")
    name = deploy_stable(serving, model, good)
    client = mlflow_client(mlflow_server)
    champion(client, model, flaky, previous=good)
    operator = KServeRolloutOperator(
        task_id="rollout",
        model_name=model,
        canary_steps=[20, 100],
        analysis={"window_seconds": 4, "min_requests": 3},
        poll_interval=0.2,
    )
    with Traffic(serving.url, name, long_trips=0.5) as traffic, pytest.raises(RolloutFailed) as failed:
        run_operator(operator)

    assert "canary analysis at 20% failed" in str(failed.value)
    assert "max_error_rate" in str(failed.value)
    assert (
        traffic.by_version[(good, 200)] > 0 and traffic.by_version[(None, 500)] > 0
    )  # errors carry no version
    state = deployment(serving, name)
    assert (state["stable"], state["canary"], state["revision"]) == (good, None, 3)  # split, then back
    assert client.get_model_version_by_alias(model, "champion").version == good
    record_uri = client.get_model_version(model, flaky).tags["mlplat.rollout.decision_record"]
    history = read_json(record_uri)["history"]
    assert [(h["phase"], h["percent"], h["status"]) for h in history] == [
        ("stage", None, "ready"),
        ("step", 20, "ready"),
    ]
    assert history[0]["smoke"]["rows"] == 3
    analysis = history[1]["analysis"]
    assert analysis["verdict"] == "fail" and analysis["window"] == "4s"
    assert analysis["canary"]["errors"] > 0 and analysis["canary"]["error_rate"] > 0.01
    assert (
        analysis["stable"]["errors"] == 0 and analysis["stable"]["requests"] > analysis["canary"]["requests"]
    )


def test_killing_the_deferred_rollout_in_the_triggerer_rolls_back_traffic_and_alias_once(
    serving, register, mlflow_server
):
    model, (good, new) = register("good", "good")
    name = deploy_stable(serving, model, good)
    client = mlflow_client(mlflow_server)
    champion(client, model, new, previous=good)
    operator = KServeRolloutOperator(
        task_id="rollout", model_name=model, analysis={"window_seconds": 60}, poll_interval=0.2
    )
    trigger = defer_until(operator, "step")  # smoke passed, 10%, holding for the analysis
    assert (deployment(serving, name)["canary"], deployment(serving, name)["canary_percent"]) == (new, 10)

    in_triggerer(trigger, kill=False)  # a triggerer restart cancels the trigger: nothing is undone
    assert (deployment(serving, name)["canary"], deployment(serving, name)["canary_percent"]) == (new, 10)
    assert client.get_model_version_by_alias(model, "champion").version == new

    in_triggerer(trigger, kill=True)  # the task is marked failed while deferred: Airflow calls on_kill

    state = deployment(serving, name)
    assert (state["stable"], state["canary"], state["canary_percent"]) == (good, None, 0)
    assert state["revision"] == 3  # split, then back once
    assert not loaded(serving, f"{model}@{new}")
    assert client.get_model_version_by_alias(model, "champion").version == good
    tags = client.get_model_version(model, new).tags
    assert tags["mlplat.rollout.status"] == "rolled_back"
    record = read_json(tags["mlplat.rollout.decision_record"])
    assert (
        record["outcome"] == "rolled_back"
        and "killed while the rollout waited in phase 'step'" in record["reason"]
    )
    assert record["alias"] == f"champion moved back from {new} to {good} (previous-champion)"
    assert [h["phase"] for h in record["history"]] == ["stage"]


def test_bad_input_fails_before_anything_changes(serving, register, mlflow_server):
    model, (good,) = register("good")
    name = deploy_stable(serving, model, good)
    before = deployment(serving, name)
    bad = [
        ({"canary_steps": [50, 20, 100]}, "canary_steps=\\[50, 20, 100\\] must be increasing"),
        ({"canary_steps": [10, 50]}, "ending at 100"),
        ({"strategy": "bluegreen"}, "strategy='bluegreen'; valid: 'canary', 'direct'"),
        ({"analysis": {"window": 5}}, "unknown analysis setting\\(s\\) \\['window'\\]"),
        ({"deployment_name": "Trip_Completion"}, "not a valid InferenceService name"),
        ({"model_alias": "nope"}, f"MLflow model '{model}' alias @nope not found"),
    ]
    for kwargs, message in bad:
        with pytest.raises(MLPlatConfigError, match=message):
            run_operator(KServeRolloutOperator(task_id="rollout", model_name=model, **kwargs))
    assert deployment(serving, name) == before


def test_rerun_on_the_served_version_is_a_no_op_and_delete_is_idempotent(serving, register, mlflow_server):
    model, (good,) = register("good")
    name = deploy_stable(serving, model, good)
    mlflow_client(mlflow_server).set_registered_model_alias(model, "champion", good)
    result, context = run_operator(KServeRolloutOperator(task_id="rollout", model_name=model))
    assert (result["outcome"], result["version"], result["traffic"]) == ("unchanged", good, {good: 100})
    assert deployment(serving, name)["revision"] == 1
    assert len(context["outlet_events"]) == 0  # no asset event for a no-op

    delete = KServeDeleteOperator(task_id="delete", deployment_name=name)
    assert run_operator(delete)[0] == {"deployment": name, "namespace": "local", "deleted": True}
    assert run_operator(delete)[0]["deleted"] is False
    assert not loaded(serving, f"{model}@{good}")


def test_direct_strategy_switches_all_traffic_after_the_smoke_request(serving, register):
    model, (old, new) = register("good", "good")
    name = deploy_stable(serving, model, old)
    operator = KServeRolloutOperator(
        task_id="rollout", model_name=model, model_version=new, strategy="direct"
    )
    result, context = run_operator(operator)
    assert (result["outcome"], result["steps"], result["traffic"]) == ("promoted", [100], {new: 100})
    assert context["ti"].xcoms["_link_KServeEndpointLink"] == result["url"]  # the rollout's extra link
    state = deployment(serving, name)
    assert (state["stable"], state["canary"], state["revision"]) == (new, None, 2)  # one switch, no split
    assert not loaded(serving, f"{model}@{old}")
