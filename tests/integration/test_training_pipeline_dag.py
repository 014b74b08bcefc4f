"""The training_pipeline DAG end to end: a real Ray head trains, a real MLflow server registers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from tests.training_support import FEATURES

pytestmark = pytest.mark.integration


@pytest.fixture
def rides_history(tmp_path):
    """The feature repo applied over 60-72 hours of raw data up to the current hour (3,000+ labelled trips)."""
    from airflow_provider_mlplat.hooks.feast import FeastHook
    from include import datagen
    from tests.feast_support import feast_connection

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    # profiles are daily snapshots, written at midnight: start at one, 60 to 72 hours back whatever the hour
    start = now.replace(hour=0) - timedelta(days=2 if now.hour >= 12 else 3)
    datagen.generate(tmp_path / "data", start, now + timedelta(hours=1))
    feast_connection("feast_default", tmp_path)
    FeastHook().apply()
    return tmp_path / "data"


@pytest.mark.timeout(600)  # up to 3.5 min measured
def test_training_pipeline_trains_on_ray_evaluates_on_the_holdout_and_promotes(
    run_dag, ray_cluster, mlflow_server, rides_history
):
    result = run_dag("training_pipeline", conf={"lookback_hours": 72})
    assert result.state == "success", result.states
    assert result.states == {
        "training_set": "success",
        "validate_training_set": "success",
        "holdout_split": "success",
        "train": "success",
        "evaluate": "success",
        "evaluate_champion": "skipped",  # no champion yet
        "promote": "success",
    }
    trips = pd.read_parquet(rides_history / "trips")
    in_window = trips[trips.event_timestamp >= result.run_after - timedelta(hours=72)]
    built = result.xcoms["training_set"]
    assert built["feature_service"] == "trip_completion_v1"
    # trips of the first hour before their driver's first stats row have no features: dropped, counted
    expected = len(in_window[in_window.event_timestamp < result.run_after])
    assert built["rows"] + built["rows_missing_features"] == expected
    assert built["rows_missing_features"] < 50
    assert built["rows"] > 2500
    validation = result.xcoms["validate_training_set"]
    assert validation["success"] is True and validation["failed"] == []
    summary = result.xcoms["holdout_split"]
    assert summary["features"] == FEATURES and summary["label"] == "completed"
    assert summary["holdout_rows"] == int(built["rows"] * 0.2)
    assert summary["rows"] + summary["holdout_rows"] == built["rows"]
    holdout = pd.read_parquet(summary["holdout_uri"])
    trained_on = pd.read_parquet(summary["uri"])
    assert holdout["event_timestamp"].min() >= trained_on["event_timestamp"].max()  # newest rows held out

    trained = result.xcoms["train"]
    assert set(trained) == {
        "run_id",
        "model_uri",
        "model_name",
        "version",
        "metrics",
        "training_set",
        "feature_service",
    }
    assert trained["model_name"] == "trip_completion"
    assert trained["model_uri"] == f"models:/trip_completion/{trained['version']}"
    assert trained["training_set"] == {"uri": summary["uri"], "content_hash": summary["content_hash"]}
    assert trained["feature_service"] == "trip_completion_v1"
    assert {"roc_auc", "accuracy", "log_loss"} <= set(trained["metrics"])
    assert trained["metrics"]["roc_auc"] > 0.7  # the synthetic label has real signal

    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("trip_completion", "challenger")
    assert version.version == trained["version"] and version.run_id == trained["run_id"]
    assert version.tags["mlplat.feature_service"] == "trip_completion_v1"
    assert version.tags["mlplat.training_set.content_hash"] == summary["content_hash"]
    run = client.get_run(trained["run_id"])
    assert run.data.metrics["roc_auc"] == pytest.approx(trained["metrics"]["roc_auc"])
    assert run.data.params["model_family"] in ("logistic_regression", "hist_gradient_boosting")
    assert run.data.tags["mlplat.ray_job_id"].startswith("train-")

    evaluated = result.xcoms["evaluate"]
    assert evaluated["version"] == trained["version"] and evaluated["rows"] == summary["holdout_rows"]
    assert evaluated["metrics"]["roc_auc"] > 0.7
    promoted = result.xcoms["promote"]
    assert (promoted["decision"], promoted["champion_moved"]) == ("promoted", True)  # the first model
    assert client.get_model_version_by_alias("trip_completion", "champion").version == trained["version"]
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:  # what schedules the deployment pipeline
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(
                AssetModel.uri == "mlflow://models/trip_completion", AssetEvent.source_run_id == result.run_id
            )
        ).all()
        assert [e.extra["version"] for e in events] == [trained["version"]]

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/trip_completion@challenger")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == FEATURES
    holdout = pd.read_parquet(summary["holdout_uri"])
    predictions = model.predict(holdout[FEATURES].head(20).astype("float64"))
    assert set(np.unique(predictions)) <= {0, 1}

    # a second run: the champion is evaluated on the new holdout too, and the gate compares the two
    again = run_dag("training_pipeline", conf={"lookback_hours": 72})
    assert again.state == "success", again.states
    champion_eval = again.xcoms["evaluate_champion"]
    assert champion_eval["version"] == trained["version"]
    assert champion_eval["holdout_uri"] == again.xcoms["evaluate"]["holdout_uri"]
    decided = again.xcoms["promote"]
    assert decided["compared_to"] == trained["version"]
    champion_auc = champion_eval["metrics"]["roc_auc"]
    challenger_auc = again.xcoms["evaluate"]["metrics"]["roc_auc"]
    assert (decided["decision"] == "promoted") == (challenger_auc > champion_auc)


def test_training_pipeline_refuses_missing_trips(run_dag, rides_history, tmp_path):
    result = run_dag("training_pipeline", conf={"entity_source": str(tmp_path / "nope.parquet")})
    assert result.state == "failed"
    assert result.states["training_set"] == "failed"
    downstream = ("validate_training_set", "holdout_split", "train", "evaluate", "promote")
    assert {result.states[t] for t in downstream} == {"upstream_failed"}


def test_training_pipeline_stops_at_the_gx_gate_before_training(run_dag, rides_history, tmp_path):
    path = tmp_path / "trips.parquet"
    trips = pd.read_parquet(rides_history / "trips")
    trips["trip_distance_km"] = -trips["trip_distance_km"]  # negative distances: a broken upstream
    trips.to_parquet(path)
    result = run_dag("training_pipeline", conf={"entity_source": str(path)})
    assert result.state == "failed"
    assert result.states["training_set"] == "success"
    assert result.states["validate_training_set"] == "failed"
    assert result.states["train"] == "upstream_failed"  # nothing reached Ray or MLflow
