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
    context,
    drift_events,
    operator,
    pushed,
    register,
    serve,
    task_folder,
)

pytestmark = pytest.mark.integration


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
