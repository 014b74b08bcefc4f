"""EvidentlyDriftOperator against a real MLflow server and a real Pushgateway, on a real inference log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from airflow_provider_mlplat.artifacts import artifact_root
from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.mlflow import MLflowHook
from airflow_provider_mlplat.operators.evidently import DRIFT_EVENTS, TRAINING_SET_TAG, EvidentlyDriftOperator
from airflow_provider_mlplat.serving.inference_log import InferenceLogWriter
from include import datagen
from tests.conftest import set_connection, unavailable
from tests.ray_support import TaskInstanceStandIn
from tests.services import running_platform

pytestmark = pytest.mark.integration

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


@pytest.fixture(scope="module")
def drift_env(mlflow_server, tmp_path_factory):
    """A Pushgateway, an inference log folder, a training set; sets the kserve/prometheus connections."""
    import shutil

    if not shutil.which("prometheus-pushgateway"):
        unavailable("the Pushgateway is not installed (Debian: apt-get install prometheus-pushgateway)")
    tmp = tmp_path_factory.mktemp("drift")
    training = stats(TRAINING_HOURS)
    training["completed"] = (training["conv_rate"] > 0.5).astype("int64")
    training.to_parquet(tmp / "training_set.parquet")
    with running_platform(tmp / "platform", ("pushgateway",)) as platform:
        pushgateway = f"http://127.0.0.1:{platform.settings.pushgateway_port}"
        # no Prometheus server needed here: the operator only pushes
        set_connection(
            "prometheus_drift",
            conn_type="prometheus",
            host="http://127.0.0.1:1",
            extra={"pushgateway_url": pushgateway},
        )
        set_connection(
            "kserve_drift",
            conn_type="kserve",
            host="http://127.0.0.1:1",
            extra={"inference_log": str(tmp / "inference-log")},
        )
        yield {
            "training_set": str(tmp / "training_set.parquet"),
            "log": tmp / "inference-log",
            "pushgateway": pushgateway,
        }


def register(training_set: str | None, versions: int = 1) -> str:
    """A fresh registered model with ``versions`` versions; only version 1 names its training set."""
    client, name = MLflowHook().client, f"drift_{uuid.uuid4().hex[:8]}"
    experiment = client.get_experiment_by_name("drift-tests")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("drift-tests")
    client.create_registered_model(name)
    for number in range(1, versions + 1):
        run = client.create_run(experiment_id)
        tags = {TRAINING_SET_TAG: training_set} if number == 1 and training_set else {}
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags)
    return name


def serve(log: Path, model: str, versions: dict[str, int], magnitude: float = 0.0) -> None:
    """Log served rows of the window for a model's deployment: ``versions`` maps version -> rows."""
    hours = [WINDOW[0] + timedelta(hours=h) for h in range(4)]
    frame = stats(hours, magnitude)
    assert sum(versions.values()) <= len(frame)
    order = [v for v, n in versions.items() for _ in range(n)]
    writer = InferenceLogWriter(log)
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
    writer.flush()


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
    return EvidentlyDriftOperator(
        task_id=task_id,
        model_name=model,
        kserve_conn_id="kserve_drift",
        prometheus_conn_id="prometheus_drift",
        **kwargs,
    )


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


def test_same_distribution_is_no_drift_and_emits_no_event(drift_env):
    model = register(drift_env["training_set"])
    serve(drift_env["log"], model, {"1": 300})
    ctx = context("drift_check")
    summary = operator("drift_check", model).execute(ctx)

    assert summary["detected"] is False
    assert summary["version"] == "1"
    assert summary["rows_current"] == 300 and summary["rows_reference"] == 700
    assert summary["features"] == list(FEATURES)  # ids, timestamps, label and log fields left out
    assert summary["drift_share"] < 0.5
    assert set(summary["scores"]) == set(FEATURES)
    assert drift_events(ctx) == {}  # no drift, no asset event
    metrics = pushed(drift_env["pushgateway"], model)
    assert metrics["mlplat_drift_detected", ""] == 0
    assert metrics["mlplat_drift_share", ""] == pytest.approx(summary["drift_share"])
    for feature, score in summary["scores"].items():
        assert metrics["mlplat_drift_score", feature] == pytest.approx(score)
    report = Path(summary["report_uri"].removeprefix("file://"))
    assert "<html" in report.read_text()[:1000].lower()
    assert ctx["ti"].xcoms["_link_EvidentlyReportLink"] == summary["report_uri"]


def test_shifted_traffic_is_drift_and_emits_the_drift_event(drift_env):
    # version 1 served most rows; version 2 (no training-set tag) only a few: the reference is v1's
    model = register(drift_env["training_set"], versions=2)
    serve(drift_env["log"], model, {"1": 250, "2": 50}, magnitude=1.0)
    ctx = context("drift_check")
    summary = operator("drift_check", model).execute(ctx)

    assert summary["detected"] is True
    assert summary["version"] == "1"
    assert summary["versions_served"] == {"1": 250, "2": 50}
    assert {"conv_rate", "avg_speed_kmh", "cancel_rate"} <= set(summary["drifted_features"])
    assert summary["drift_share"] >= 0.5
    events = drift_events(ctx)
    assert list(events) == [f"drift://models/{model}"]
    assert events[f"drift://models/{model}"] == {
        "model_name": model,
        "version": "1",
        "deployment": model.replace("_", "-"),
        "window_start": WINDOW[0].isoformat(),
        "window_end": WINDOW[1].isoformat(),
        "drift_share": summary["drift_share"],
        "drifted_features": summary["drifted_features"],
        "report_uri": summary["report_uri"],
    }
    assert pushed(drift_env["pushgateway"], model)["mlplat_drift_detected", ""] == 1
    snapshot = Path(summary["snapshot_uri"].removeprefix("file://")).read_text()
    assert "DriftedColumnsCount" in snapshot


def test_too_little_traffic_is_skipped_not_a_drift(drift_env):
    from airflow.sdk.exceptions import AirflowSkipException

    model = register(drift_env["training_set"])
    serve(drift_env["log"], model, {"1": 40}, magnitude=1.0)
    ctx = context("drift_check")
    with pytest.raises(AirflowSkipException, match=r"40 served rows .* fewer than min_rows=200"):
        operator("drift_check", model).execute(ctx)
    assert drift_events(ctx) == {}
    assert not task_folder(ctx).exists()
    assert pushed(drift_env["pushgateway"], model) == {}


@pytest.mark.parametrize(
    ("case", "kwargs", "message"),
    [
        (
            "unknown column",
            {"columns": ["conv_rate", "surge_factor"]},
            r"unknown column\(s\) in columns=\['conv_rate', 'surge_factor'\]: the training set lacks "
            r"\['surge_factor'\].*the inference log lacks \['surge_factor'\]",
        ),
        ("missing tag", {"model_version": 2}, r"version 2 has no 'mlplat.training_set.uri' tag"),
        ("unknown version", {"model_version": 9}, r"registered model 'drift_\w+' has no version 9"),
        (
            "unknown method",
            {"method": "no_such_test"},
            r"drift method: No stattest found of name no_such_test",
        ),
        ("bad drift share", {"drift_share": 1.5}, r"drift_share=1.5 must be a number in \(0, 1\]"),
    ],
)
def test_bad_settings_fail_clearly_before_anything_is_written(drift_env, case, kwargs, message):
    model = register(drift_env["training_set"], versions=2)
    serve(drift_env["log"], model, {"1": 300})
    ctx = context("drift_check")
    with pytest.raises(MLPlatConfigError, match=message):
        operator("drift_check", model, **kwargs).execute(ctx)
    assert not task_folder(ctx).exists()
    assert pushed(drift_env["pushgateway"], model) == {}
    assert drift_events(ctx) == {}
