"""The model_promotion DAG end to end: wait, evaluate on a holdout set, promote, Asset event, links."""

from __future__ import annotations

import uuid

import pytest

from airflow_provider_mlplat.hooks.mlflow import EVALUATION_RUN_TAG, MLflowHook

pytestmark = pytest.mark.integration
FEATURES = ["trip_distance_km", "acceptance_rate", "avg_rating", "conv_rate", "trips_today"]


def trips(rows: int, seed: int):
    """Labelled trips with the platform's columns: entity key, timestamp, features, ``completed``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)
    signal = frame.acceptance_rate + 0.7 * frame.conv_rate - 0.5 * frame.trip_distance_km
    frame["completed"] = (signal + rng.normal(scale=0.6, size=rows) > 0).astype(int)
    frame.insert(0, "driver_id", rng.integers(1000, 1100, size=rows))
    frame.insert(
        1, "event_timestamp", pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(rows), "min")
    )
    return frame


def register(name: str, labels_shuffled: bool = False) -> str:
    """Train a tiny logistic regression, log and register it, point ``challenger`` at it."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    data = trips(300, seed=1)
    labels = data.completed.sample(frac=1, random_state=0).to_numpy() if labels_shuffled else data.completed
    model = LogisticRegression().fit(data[FEATURES], labels)
    hook = MLflowHook()
    with hook.fluent(), mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name=name, pip_requirements=["scikit-learn"]
        )
    version = str(info.registered_model_version)
    hook.client.set_registered_model_alias(name, "challenger", version)
    return version


def asset_events(name: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = (
            select(AssetEvent.extra, AssetEvent.source_task_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == f"mlflow://models/{name}")
            .order_by(AssetEvent.id)
        )
        return [{**extra, "task": task} for extra, task in session.execute(query)]


def links(dag_id: str, run_id: str) -> dict[str, str]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(XComModel.run_id == run_id, XComModel.key.like("_link_%"))
        ).all()
        return {f"{r.task_id}:{r.key}": XComModel.deserialize_value(r) for r in rows if r.dag_id == dag_id}


def test_model_promotion_dag_promotes_a_good_first_model_and_rejects_a_worse_one(
    run_dag, mlflow_server, tmp_path
):
    name = f"trip_completion_{uuid.uuid4().hex[:8]}"
    holdout = tmp_path / "holdout.parquet"
    trips(200, seed=2).to_parquet(holdout)
    conf = {"model_name": name, "holdout_uri": str(holdout), "thresholds": {"roc_auc": 0.7}}
    hook = MLflowHook()

    assert register(name) == "1"
    result = run_dag("model_promotion", conf=conf)
    assert result.state == "success", result.states
    evaluated, decided = result.xcoms["evaluate"], result.xcoms["promote"]
    assert evaluated["rows"] == 200 and evaluated["version"] == "1"
    assert evaluated["metrics"]["roc_auc"] > 0.8 and "accuracy" in evaluated["metrics"]
    assert hook.client.get_model_version(name, "1").tags[EVALUATION_RUN_TAG] == evaluated["run_id"]
    assert hook.client.get_run(evaluated["run_id"]).data.metrics["roc_auc"] == evaluated["metrics"]["roc_auc"]
    assert (decided["decision"], decided["champion_moved"]) == ("promoted", True)
    assert decided["metrics"]["roc_auc"] == evaluated["metrics"]["roc_auc"]  # the gate read the evaluation
    assert hook.client.get_registered_model(name).aliases == {"challenger": "1", "champion": "1"}
    [event] = asset_events(name)
    assert (
        event["task"] == "promote" and event["version"] == "1" and event["model_uri"] == f"models:/{name}/1"
    )
    assert event["metrics"]["roc_auc"] == evaluated["metrics"]["roc_auc"] and event["run_id"]
    urls = links("model_promotion", result.run_id)
    assert urls["promote:_link_MLflowModelVersionLink"] == f"{mlflow_server}/#/models/{name}/versions/1"
    assert urls["evaluate:_link_MLflowRunLink"].endswith(f"/runs/{evaluated['run_id']}")
    assert urls["wait_for_challenger:_link_MLflowModelVersionLink"].endswith("/versions/1")

    assert register(name, labels_shuffled=True) == "2"  # a model that learned nothing
    result = run_dag("model_promotion", conf=conf)
    assert result.state == "success", result.states
    decided = result.xcoms["promote"]
    assert (decided["decision"], decided["champion_moved"], decided["compared_to"]) == (
        "rejected",
        False,
        "1",
    )
    assert any(reason.startswith("roc_auc") for reason in decided["reasons"])
    assert hook.client.get_registered_model(name).aliases["champion"] == "1"
    assert len(asset_events(name)) == 1  # no event: the champion did not move

    result = run_dag("model_promotion", conf={**conf, "fail_on_reject": True})
    assert result.state == "failed"
    assert result.states["evaluate"] == "success" and result.states["promote"] == "failed"
    assert hook.client.get_registered_model(name).aliases["champion"] == "1"
