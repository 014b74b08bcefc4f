"""The training_pipeline DAG end to end: a real Ray head trains, a real MLflow server registers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration

# the feature repo's training set (feature service trip_completion_v1), in its column order
FEATURES = [
    "trip_distance_km",
    "conv_rate",
    "acc_rate",
    "avg_daily_trips",
    "avg_speed_kmh",
    "cancel_rate",
    "rating",
    "tenure_days",
    "expected_trip_minutes",
    "is_long_trip",
]


def synthetic_trips(rows: int = 3000, seed: int = 7) -> pd.DataFrame:
    """Labelled trips as the Feast training-set step writes them: ids, UTC timestamps, features, label."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    frame = pd.DataFrame(
        {
            "driver_id": rng.integers(1001, 1101, rows).astype("int64"),
            "event_timestamp": start + pd.to_timedelta(rng.uniform(0, 30 * 86400, rows), unit="s"),
            "trip_distance_km": rng.gamma(2.0, 3.0, rows),
            "conv_rate": rng.uniform(0, 1, rows),
            "acc_rate": rng.uniform(0.5, 1, rows),
            "avg_daily_trips": rng.integers(0, 40, rows).astype("int64"),
            "avg_speed_kmh": rng.normal(32, 6, rows),
            "cancel_rate": rng.beta(2, 10, rows),
            "rating": rng.normal(4.6, 0.2, rows),
            "tenure_days": rng.integers(1, 2000, rows).astype("int64"),
        }
    )
    frame["expected_trip_minutes"] = frame.trip_distance_km / frame.avg_speed_kmh * 60
    frame["is_long_trip"] = (frame.trip_distance_km > 10).astype("int64")
    logit = (
        2.5 * frame.conv_rate
        + 2.0 * (frame.acc_rate - 0.75)
        - 6 * frame.cancel_rate
        - 0.08 * frame.trip_distance_km
        + 0.8
    )
    frame["completed"] = (rng.uniform(0, 1, rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    return frame


def test_training_pipeline_trains_on_ray_evaluates_on_the_holdout_and_promotes(
    run_dag, ray_cluster, mlflow_server, tmp_path
):
    path = tmp_path / "training_set.parquet"
    trips = synthetic_trips()
    trips.to_parquet(path)

    result = run_dag("training_pipeline", conf={"training_set_uri": str(path)})
    assert result.state == "success", result.states
    assert result.states == {
        "training_set": "success",
        "validate_training_set": "success",
        "holdout_split": "success",
        "train": "success",
        "evaluate": "success",
        "promote": "success",
    }
    assert result.xcoms["training_set"]["rows"] == 3000
    validation = result.xcoms["validate_training_set"]
    assert validation["success"] is True and validation["failed"] == []
    summary = result.xcoms["holdout_split"]
    assert summary["features"] == FEATURES and summary["label"] == "completed"
    assert (summary["rows"], summary["holdout_rows"]) == (2400, 600)
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
    assert evaluated["version"] == trained["version"] and evaluated["rows"] == 600
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
    predictions = model.predict(trips[FEATURES].head(20).astype("float64"))
    assert set(np.unique(predictions)) <= {0, 1}


def test_training_pipeline_refuses_a_missing_training_set(run_dag, tmp_path):
    result = run_dag("training_pipeline", conf={"training_set_uri": str(tmp_path / "nope.parquet")})
    assert result.state == "failed"
    assert result.states["training_set"] == "failed"
    downstream = ("validate_training_set", "holdout_split", "train", "evaluate", "promote")
    assert {result.states[t] for t in downstream} == {"upstream_failed"}


def test_training_pipeline_stops_at_the_gx_gate_before_training(run_dag, tmp_path):
    path = tmp_path / "training_set.parquet"
    trips = synthetic_trips(rows=500)
    trips["conv_rate"] = trips["conv_rate"] * 5  # rates far outside [0, 1]
    trips.to_parquet(path)
    result = run_dag("training_pipeline", conf={"training_set_uri": str(path)})
    assert result.state == "failed"
    assert result.states["training_set"] == "success"
    assert result.states["validate_training_set"] == "failed"
    assert result.states["train"] == "upstream_failed"  # nothing reached Ray or MLflow
