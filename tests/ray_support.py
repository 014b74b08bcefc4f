"""Helpers for the Ray / KubeRay tests: a task context, running a deferrable operator to its end."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk.exceptions import TaskDeferred


@dataclass
class TaskInstanceStandIn:
    """
    What an operator reads from ``context["ti"]``: ids and ``xcom_push``. The operator tests call
    ``execute`` / ``execute_complete`` / ``on_kill`` directly because a worker crash, a second try
    and a kill cannot be provoked through ``dag.test()``; the DAG tests run the real task runner.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def task_context(task_id: str = "train", dag_id: str = "ray_tests", map_index: int = -1) -> dict[str, Any]:
    """A context for one task instance of a fresh DAG run."""
    ti = TaskInstanceStandIn(dag_id, f"manual__{uuid.uuid4().hex[:12]}", task_id, map_index)
    return {"ti": ti}


def rebuilt(trigger):
    """The trigger as the triggerer gets it: serialized, then instantiated from the class path."""
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


async def first_event(trigger) -> dict[str, Any]:
    """Run a trigger until its first event; return the payload."""
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def run_to_end(operator, context: dict[str, Any]) -> Any:
    """Execute an operator; if it defers, run its (re-serialized) trigger and resume it."""
    try:
        return operator.execute(context)
    except TaskDeferred as deferred:
        event = asyncio.run(first_event(rebuilt(deferred.trigger)))
        return getattr(operator, deferred.method_name)(context, event)
