"""MLflow triggers and the version sensor against a real MLflow server."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from airflow_provider_mlplat.exceptions import MLPlatValidationFailed
from airflow_provider_mlplat.hooks.mlflow import MLflowHook
from airflow_provider_mlplat.testing.waiting import wait_for
from airflow_provider_mlplat.triggers.mlflow import MLflowAliasChangedTrigger, MLflowModelVersionTrigger

pytestmark = pytest.mark.integration
POLL = 0.1


def model_with_versions(count: int) -> str:
    client, name = MLflowHook().client, f"t_{uuid.uuid4().hex[:10]}"
    client.create_registered_model(name)
    for _ in range(count):
        run = client.create_run("0")
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return name


async def consume(trigger, events: list) -> None:
    async for event in trigger.run():
        events.append(event.payload)


class Polls:
    """Counts a trigger's registry reads (the real reads run), so a test waits for polls, not for time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, read: str) -> None:
        self.count = 0
        real = getattr(MLflowHook, read)

        def counted(hook, *args):
            try:
                return real(hook, *args)
            finally:
                self.count += 1

        monkeypatch.setattr(MLflowHook, read, counted)

    async def settle(self) -> None:
        """Wait for three more reads: the second starts after now, the third after its poll was handled."""
        target = self.count + 3
        await asyncio.to_thread(wait_for, lambda: self.count >= target, 30, "three polls", POLL / 2)

    async def by_hand(self, *call) -> None:
        """A registry change made outside Airflow (like a click in the MLflow UI), then the polls that see it."""
        client = MLflowHook().client
        await asyncio.to_thread(getattr(client, call[0]), *call[1:])
        await self.settle()


def test_alias_trigger_fires_exactly_once_per_move_made_outside_airflow(mlflow_server, monkeypatch):
    name = model_with_versions(2)
    MLflowHook().client.set_registered_model_alias(name, "champion", "1")
    polls = Polls(monkeypatch, "alias_version")
    by_hand = polls.by_hand

    async def scenario() -> list[list[dict]]:
        events: list[dict] = []
        watch = asyncio.create_task(consume(MLflowAliasChangedTrigger(name, poll_interval=POLL), events))
        snapshots = []
        await polls.settle()  # the first poll notes v1: no event
        snapshots.append(list(events))
        await by_hand("set_registered_model_alias", name, "champion", "2")
        snapshots.append(list(events))
        await by_hand("set_registered_model_alias", name, "champion", "2")  # same version again
        await by_hand("set_registered_model_tag", name, "note", "unrelated change")
        snapshots.append(list(events))
        await by_hand("set_registered_model_alias", name, "champion", "1")  # a rollback is a move
        await by_hand("delete_registered_model_alias", name, "champion")  # noted, not announced
        snapshots.append(list(events))
        await by_hand("set_registered_model_alias", name, "champion", "2")
        snapshots.append(list(events))
        watch.cancel()
        return snapshots

    first, moved, repeated, rolled_back, reset = asyncio.run(scenario())
    assert first == []
    version_2 = MLflowHook().client.get_model_version(name, "2")
    assert moved == [
        {
            "model_name": name,
            "alias": "champion",
            "version": "2",
            "previous_version": "1",
            "run_id": version_2.run_id,
            "model_uri": f"models:/{name}/2",
        }
    ]
    assert repeated == moved
    assert [(e["version"], e["previous_version"]) for e in rolled_back] == [("2", "1"), ("1", "2")]
    assert [(e["version"], e["previous_version"]) for e in reset] == [("2", "1"), ("1", "2"), ("2", None)]


def test_version_trigger_waits_for_an_alias_to_reach_a_newer_ready_version(mlflow_server, monkeypatch):
    name = model_with_versions(2)
    by_hand = Polls(monkeypatch, "version_ready").by_hand

    async def scenario():
        events: list[dict] = []
        trigger = MLflowModelVersionTrigger(name, "challenger", newer_than=1, poll_interval=POLL)
        wait = asyncio.create_task(consume(trigger, events))
        await by_hand("set_registered_model_alias", name, "challenger", "1")  # not newer than 1
        waiting = list(events)
        await asyncio.to_thread(MLflowHook().client.set_registered_model_alias, name, "challenger", "2")
        await asyncio.wait_for(wait, 30)  # the trigger's event ends it
        return waiting, events

    waiting, events = asyncio.run(scenario())
    assert waiting == []
    assert events == [
        {
            "status": "success",
            "model_name": name,
            "version": "2",
            "run_id": MLflowHook().client.get_model_version(name, "2").run_id,
            "model_uri": f"models:/{name}/2",
        }
    ]


def test_version_trigger_reports_an_unreachable_registry_as_an_error_event(mlflow_server):
    from airflow_provider_mlplat.testing.airflow import set_connection
    from airflow_provider_mlplat.testing.services import free_port

    url = f"http://127.0.0.1:{free_port()}"
    set_connection("mlflow_gone", conn_type="mlflow", host=url, extra={"timeout": "2"})
    trigger = MLflowModelVersionTrigger("m", "1", poll_interval=POLL, mlflow_conn_id="mlflow_gone")

    async def first_event():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(asyncio.wait_for(first_event(), 60))
    assert event == {
        "status": "error",
        "message": f"MLPlatServiceUnavailable: MLflow at {url}/health is unreachable: no answer within 2 s "
        "(ConnectError)",
    }


def test_sensor_defers_to_the_trigger_until_the_version_exists_and_raises_on_an_error_event(mlflow_server):
    from airflow.sdk.exceptions import TaskDeferred

    from airflow_provider_mlplat.sensors.mlflow import MLflowModelVersionSensor

    name = model_with_versions(1)
    sensor = MLflowModelVersionSensor(task_id="wait", model_name=name, version="challenger", poke_interval=7)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})  # no alias yet: nothing to report, straight to the triggerer
    assert (
        deferred.value.trigger.serialize()
        == MLflowModelVersionTrigger(name, "challenger", None, 7).serialize()
    )
    assert deferred.value.method_name == "execute_complete"
    with pytest.raises(MLPlatValidationFailed, match="failed to register: disk full"):
        sensor.execute_complete({}, {"status": "error", "message": "failed to register: disk full"})
