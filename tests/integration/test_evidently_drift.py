"""EvidentlyDriftOperator against a real MLflow server and a real Pushgateway, on a real inference log."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.mlflow import DRIFT_TAG, MLflowHook
from tests.drift_support import (
    FEATURES,
    WINDOW,
    add_versions,
    context,
    drift_events,
    operator,
    pushed,
    register,
    serve,
    task_folder,
)

pytestmark = pytest.mark.integration

MODEL = "trip_completion"  # the monitoring_pipeline DAG's


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
    link = ctx["ti"].xcoms["_link_EvidentlyReportLink"]  # served by the UI plugin: file:// does not open
    assert link.endswith("/mlplat/reports?uri=" + quote(summary["report_uri"], safe=""))
    # the Models view reads the last check from the served version's tag
    tag = json.loads(MLflowHook().client.get_model_version(model, "1").tags[DRIFT_TAG])
    assert (tag["drift_share"], tag["detected"], tag["report_uri"]) == (
        summary["drift_share"],
        False,
        summary["report_uri"],
    )


def drift_events_of_run(run_id: str) -> dict[str, dict]:
    """Asset URI -> extra of the events a monitoring_pipeline run emitted (from Airflow's DB)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.uri, AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetEvent.source_dag_id == "monitoring_pipeline", AssetEvent.source_run_id == run_id)
        ).all()
    return dict(rows)


def test_monitoring_pipeline_on_object_storage_finds_drift_and_emits_the_event(
    run_dag, drift_env, s3_store, s3_artifact_root, monkeypatch
):
    """The reference DAG end to end with artifact_root on S3: training set read, reports written there."""
    import os

    bucket, prefix = s3_store.bucket, s3_artifact_root.removeprefix(f"s3://{s3_store.bucket}/")
    s3 = s3_store.client()
    s3.put_object(
        Bucket=bucket, Key=f"{prefix}/training_set.parquet", Body=Path(drift_env["training_set"]).read_bytes()
    )
    # version v1 served most rows; v2 (no training-set tag) only a few: the reference is v1's
    v1, v2 = add_versions(MODEL, f"{s3_artifact_root}/training_set.parquet", 2)
    serve(drift_env["log"], MODEL, {v1: 250, v2: 50}, magnitude=1.0)
    for conn in ("kserve", "prometheus"):  # the DAG's default connections, restored afterwards
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn.upper()}_DEFAULT", os.environ[f"AIRFLOW_CONN_{conn.upper()}_DRIFT"]
        )
    window = {"window_start": WINDOW[0].isoformat(), "window_end": WINDOW[1].isoformat()}
    result = run_dag("monitoring_pipeline", conf=window)

    assert result.states == {"detect_drift": "success"}, result.states
    summary = result.xcoms["detect_drift"]
    assert summary["detected"] is True
    assert (summary["version"], summary["versions_served"]) == (v1, {v1: 250, v2: 50})
    assert summary["rows_reference"] == 700  # the training set, read from the bucket
    assert {"conv_rate", "avg_speed_kmh", "cancel_rate"} <= set(summary["drifted_features"])
    assert summary["drift_share"] >= 0.5
    folder = (
        f"{prefix}/monitoring_pipeline/{result.run_id.replace(':', '_').replace('+', '_')}/detect_drift/drift"
    )
    assert summary["report_uri"] == f"s3://{bucket}/{folder}/report.html"  # plain URIs in XCom
    assert summary["snapshot_uri"] == f"s3://{bucket}/{folder}/snapshot.json"

    def read(key: str) -> str:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    assert "<html" in read(f"{folder}/report.html")[:1000].lower()
    assert "DriftedColumnsCount" in read(f"{folder}/snapshot.json")
    assert json.loads(read(f"{folder}/summary.json"))["report_uri"] == summary["report_uri"]
    assert drift_events_of_run(result.run_id) == {
        f"drift://models/{MODEL}": {
            "model_name": MODEL,
            "version": v1,
            "deployment": "trip-completion",
            **window,
            "drift_share": summary["drift_share"],
            "drifted_features": summary["drifted_features"],
            "report_uri": summary["report_uri"],
        }
    }
    assert pushed(drift_env["pushgateway"], MODEL)["mlplat_drift_detected", ""] == 1
    assert s3_store.secret_access_key not in json.dumps(result.xcoms)


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
