"""Helpers of the EvidentlyDriftOperator tests: training data, registered models, served traffic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from airflow_provider_mlplat.artifacts import artifact_root
from airflow_provider_mlplat.hooks.mlflow import MLflowHook
from airflow_provider_mlplat.inference_log import inference_log_writer
from airflow_provider_mlplat.operators.evidently import DRIFT_EVENTS, TRAINING_SET_TAG, EvidentlyDriftOperator
from include import datagen
from tests.ray_support import TaskInstanceStandIn

FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips", "avg_speed_kmh", "cancel_rate")
DAY = datetime(2026, 3, 2, tzinfo=UTC)
# hours outside the rush hours (datagen slows traffic at 7-9 and 17-19): one distribution all day
TRAINING_HOURS = [DAY + timedelta(hours=h) for h in range(10, 17)]
WINDOW = (DAY + timedelta(days=1, hours=10), DAY + timedelta(days=1, hours=14))


def stats(hours: list[datetime], magnitude: float = 0.0):
    """Driver stats rows of these hours (100 drivers an hour), shifted by ``magnitude`` (0-1)."""
    import pyarrow as pa

    shift = datagen.Shift(magnitude, hours[0])
    tables = [datagen.generate_hour(h, shift=shift)["driver_hourly_stats"] for h in hours]
    return pa.concat_tables(tables).to_pandas()


def register(training_set: str | None, versions: int = 1) -> str:
    """A fresh registered model with ``versions`` versions; only version 1 names its training set."""
    name = f"drift_{uuid.uuid4().hex[:8]}"
    add_versions(name, training_set, versions)
    return name


def add_versions(name: str, training_set: str | None, count: int) -> list[str]:
    """
    Register ``count`` new versions of a model (created when missing); only the first names its
    training set. Returns their version numbers.
    """
    from mlflow.exceptions import MlflowException

    client = MLflowHook().client
    experiment = client.get_experiment_by_name("drift-tests")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("drift-tests")
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    numbers = []
    for number in range(count):
        run = client.create_run(experiment_id)
        tags = {TRAINING_SET_TAG: training_set} if number == 0 and training_set else {}
        version = client.create_model_version(
            name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags
        )
        numbers.append(str(version.version))
    return numbers


def serve(location: Path | str, model: str, versions: dict[str, int], magnitude: float = 0.0) -> None:
    """
    Log served rows of the window for a model's deployment: ``versions`` maps version -> rows.
    ``location`` is the inference log (folder or PostgreSQL URL).
    """
    hours = [WINDOW[0] + timedelta(hours=h) for h in range(4)]
    frame = stats(hours, magnitude)
    assert sum(versions.values()) <= len(frame)
    order = [v for v, n in versions.items() for _ in range(n)]
    writer = inference_log_writer(location)
    writer.append(
        [
            {
                "timestamp": row["event_timestamp"].isoformat(),
                "deployment": model.replace("_", "-"),
                "model_name": model,
                "model_version": version,
                "request_id": uuid.uuid4().hex,
                "status_code": 200,
                "prediction": 1,
                "features": {f: row[f] for f in FEATURES},
            }
            for version, (_, row) in zip(order, frame.iterrows(), strict=False)
        ]
    )
    writer.close()


def context(task_id: str) -> dict[str, Any]:
    from airflow.sdk.execution_time.context import OutletEventAccessors

    ti = TaskInstanceStandIn("drift_tests", f"manual__{uuid.uuid4().hex[:12]}", task_id)
    return {
        "ti": ti,
        "data_interval_start": WINDOW[0],
        "data_interval_end": WINDOW[1],
        "outlet_events": OutletEventAccessors(),
    }


def operator(task_id: str, model: str, **kwargs: Any) -> EvidentlyDriftOperator:
    """The operator on the ``drift_env`` connections (``kwargs`` may name other ones)."""
    settings = {"kserve_conn_id": "kserve_drift", "prometheus_conn_id": "prometheus_drift", **kwargs}
    return EvidentlyDriftOperator(task_id=task_id, model_name=model, **settings)


def pushed(pushgateway: str, model: str) -> dict[tuple[str, str], float]:
    """(metric, feature) -> value of the samples the Pushgateway holds for a model."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{pushgateway}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("mlplat_drift_") and sample.labels.get("model") == model:
                assert sample.labels["job"] == "mlplat_drift"
                assert sample.labels["deployment"] == model.replace("_", "-")
                found[sample.name, sample.labels.get("feature", "")] = sample.value
    return found


def drift_events(ctx: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Asset URI -> extra of the events the task added through the drift alias."""
    events = ctx["outlet_events"][DRIFT_EVENTS].asset_alias_events
    return {event.dest_asset_key.uri: event.extra for event in events}


def task_folder(ctx: dict[str, Any]) -> Any:
    ti = ctx["ti"]
    return artifact_root() / ti.dag_id / ti.run_id / ti.task_id
