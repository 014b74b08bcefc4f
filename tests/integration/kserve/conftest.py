"""Serving fixtures: the platform's model server and Prometheus, registered models, traffic, an operator driver."""

from __future__ import annotations

import asyncio
import importlib
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

HERE = Path(__file__).parent
FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips", "trip_distance_km")


@dataclass(frozen=True)
class Serving:
    """The running model server, Prometheus and the Pushgateway."""

    platform: Any
    url: str
    prometheus_url: str
    pushgateway_url: str
    inference_log: Path
    state_file: Path


@pytest.fixture(scope="session")
def serving(model_server, prometheus) -> Serving:
    """The plugin's model server and the Prometheus scraping it, as one (``kserve_default``, ``prometheus_default``)."""
    return Serving(
        platform=model_server.platform,
        url=model_server.url,
        prometheus_url=prometheus.url,
        pushgateway_url=prometheus.pushgateway_url,
        inference_log=model_server.inference_log,
        state_file=model_server.state_file,
    )


def rows(n: int, long_trips: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
    """Feature rows like the trip model's; ``long_trips`` of them have trip_distance_km > 8."""
    rng = random.Random(seed)
    return [
        {
            "conv_rate": round(rng.random(), 4),
            "acc_rate": round(rng.random(), 4),
            "avg_daily_trips": rng.randint(0, 40),
            "trip_distance_km": round(
                rng.uniform(8.5, 30) if rng.random() < long_trips else rng.uniform(0.5, 7.5), 2
            ),
        }
        for _ in range(n)
    ]


@pytest.fixture(scope="session")
def logged_models(mlflow_server):
    """One logged model per behaviour: a real sklearn model (good) and slow/flaky/broken pyfunc ones."""
    import mlflow
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from airflow_provider_mlplat.hooks.base import scoped_env

    mlflow.set_tracking_uri(mlflow_server)
    frame = pd.DataFrame(rows(200, seed=1))
    frame["avg_daily_trips"] = frame["avg_daily_trips"].astype("int64")
    example = frame.head(3)
    model = LogisticRegression().fit(frame, (frame["conv_rate"] > 0.5).astype(int))
    experiment = mlflow.set_experiment("kserve-tests")
    # MLFLOW_LOG_UV_FILES: else every model copies this repository's uv.lock
    with (
        scoped_env({"MLFLOW_LOG_UV_FILES": "false"}),
        mlflow.start_run(experiment_id=experiment.experiment_id) as run,
    ):
        uris = {
            "good": mlflow.sklearn.log_model(
                model, name="good", input_example=example, pip_requirements=["scikit-learn"]
            ).model_uri
        }
        for behaviour in ("slow", "flaky", "broken"):
            uris[behaviour] = mlflow.pyfunc.log_model(
                name=behaviour,
                python_model=str(HERE / "pyfunc_models.py"),
                model_config={"behaviour": behaviour},
                input_example=example,
                pip_requirements=["mlflow"],
            ).model_uri
    return SimpleNamespace(uris=uris, run_id=run.info.run_id, good=model)


@pytest.fixture
def register(mlflow_server, logged_models):
    """Register behaviours as consecutive versions of a fresh model; returns (name, [versions])."""
    import mlflow

    def register(*behaviours: str, name: str | None = None) -> tuple[str, list[str]]:
        name = name or f"tc_{uuid.uuid4().hex[:8]}"
        versions = [mlflow.register_model(logged_models.uris[b], name).version for b in behaviours]
        return name, [str(v) for v in versions]

    return register


def deploy_stable(serving, model: str, version: str) -> str:
    """Serve a version directly through the server's API (the starting point of a rollout)."""
    import httpx

    name = model.replace("_", "-")
    assert (
        httpx.post(f"{serving.url}/v2/repository/models/{model}@{version}/load", timeout=300).status_code
        == 200
    )
    body = {"model_name": model, "stable": version}
    assert httpx.put(f"{serving.url}/mlplat/v1/deployments/{name}", json=body).status_code == 200
    return name


def mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


class Traffic:
    """Sends V1 requests to a deployment from a background thread and counts answers per version."""

    def __init__(self, url: str, deployment: str, long_trips: float = 0.0, interval: float = 0.01) -> None:
        self.url = f"{url}/v1/models/{deployment}:predict"
        self.long_trips, self.interval = long_trips, interval
        self.by_version: Counter[tuple[str | None, int]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.wait(self.interval):
                i += 1
                try:
                    r = client.post(self.url, json={"instances": rows(1, self.long_trips, seed=i)})
                except httpx.HTTPError:
                    continue
                self.by_version[(r.headers.get("x-mlplat-model-version"), r.status_code)] += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_operator(operator, run_id: str | None = None, timeout: float = 240) -> tuple[Any, dict[str, Any]]:
    """
    Run an operator the way Airflow does across deferrals: execute, and on each TaskDeferred
    round-trip the trigger and its kwargs through Airflow's serialization, run the trigger to its
    first event, and resume with the method it named. Returns (result, context); fails when the
    triggers have not let the operator finish within ``timeout`` seconds.
    """
    from airflow.sdk.exceptions import TaskDeferred
    from airflow.sdk.execution_time.context import OutletEventAccessors
    from airflow.sdk.serde import deserialize, serialize

    xcoms: dict[str, Any] = {}
    ti = SimpleNamespace(
        dag_id="kserve_tests",
        run_id=run_id or f"test__{uuid.uuid4().hex[:8]}",
        task_id=operator.task_id,
        map_index=-1,
        xcoms=xcoms,  # what the task pushed (extra links)
        xcom_push=lambda key, value: xcoms.__setitem__(key, value),
    )
    context: dict[str, Any] = {"ti": ti, "outlet_events": OutletEventAccessors()}
    method, kwargs = operator.execute, {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            return method(context, **kwargs), context
        except TaskDeferred as deferred:
            classpath, trigger_kwargs = deferred.trigger.serialize()
            module, _, cls = classpath.rpartition(".")
            trigger = getattr(importlib.import_module(module), cls)(**deserialize(serialize(trigger_kwargs)))
            try:
                event = asyncio.run(asyncio.wait_for(_first_event(trigger), deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(
                    f"{operator.task_id} not done after {timeout:g} s, waiting on {cls}"
                ) from None
            method = getattr(operator, deferred.method_name)
            kwargs = {**deserialize(serialize(deferred.kwargs or {})), "event": event.payload}


async def _first_event(trigger):
    async for event in trigger.run():
        return event
    raise AssertionError("the trigger ended without an event")


def in_triggerer(trigger, kill: bool, after: float = 1.0) -> None:
    """
    Run a trigger in Airflow's own ``TriggerRunner`` (the triggerer's event loop code), rebuilt from
    its serialized form as the triggerer does, and cancel it after ``after`` seconds: as a person
    killing the task does (mark failed / clear: ``cancel_triggers`` with the user-action message,
    which calls the trigger's ``on_kill``), or as a triggerer shutting down does (a plain cancel).
    Fails when the trigger fired an event before it was cancelled.
    """
    from airflow.jobs.triggerer_job_runner import TriggerRunner
    from airflow.sdk.serde import deserialize, serialize

    classpath, kwargs = trigger.serialize()
    module, _, cls = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), cls)(**deserialize(serialize(kwargs)))

    async def run() -> None:
        runner = TriggerRunner()
        runner.triggers[1] = {"name": "rollout", "events": 0, "is_watcher": False}
        task = runner.triggers[1]["task"] = asyncio.create_task(runner.run_trigger(1, rebuilt))
        await asyncio.sleep(after)
        assert not task.done() and not runner.events, f"the trigger ended early: {list(runner.events)}"
        if kill:
            runner.to_cancel.append(1)
            await runner.cancel_triggers()
        else:
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(run())


def defer_until(operator, phase: str, timeout: float = 240):
    """
    Run an operator until it defers in ``phase`` (running the triggers of earlier waits to their
    event, as :func:`run_operator` does); returns the deferred trigger.
    """
    from airflow.sdk.exceptions import TaskDeferred
    from airflow.sdk.execution_time.context import OutletEventAccessors

    ti = SimpleNamespace(dag_id="kserve_tests", run_id=f"test__{uuid.uuid4().hex[:8]}", task_id=operator.task_id,
                         map_index=-1)  # fmt: skip
    context: dict[str, Any] = {"ti": ti, "outlet_events": OutletEventAccessors()}
    method, kwargs = operator.execute, {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            method(context, **kwargs)
        except TaskDeferred as deferred:
            if deferred.trigger.carry["phase"] == phase:
                return deferred.trigger
            event = asyncio.run(asyncio.wait_for(_first_event(deferred.trigger), deadline - time.monotonic()))
            method, kwargs = getattr(operator, deferred.method_name), {"event": event.payload}
        else:
            raise AssertionError(f"{operator.task_id} finished without deferring in phase {phase!r}")
