"""The batch_scoring DAG end to end: real Feast offline store, a real MLflow server, a real Ray head."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from include import datagen
from tests.feast_support import DRIVERS, T0, feast_connection
from tests.training_support import FEATURES, synthetic_trips

pytestmark = pytest.mark.integration

MODEL = "trip_completion"
ASSET_URI = "predictions://models/trip_completion"
DAY = T0  # the run of 2026-01-02 scores the drivers of 2026-01-01, as of midnight
LOGICAL_DATE = DAY + timedelta(days=1)


@pytest.fixture(scope="module")
def rides_day(tmp_path_factory):
    """One generated day of raw data (20 drivers) behind ``feast_default``, the repo applied."""
    from airflow_provider_mlplat.hooks.feast import FeastHook

    tmp = tmp_path_factory.mktemp("rides-day")
    datagen.generate(tmp / "data", DAY, LOGICAL_DATE, drivers=DRIVERS)
    feast_connection("feast_default", tmp)
    FeastHook().apply()
    return tmp


@pytest.fixture
def registry(mlflow_server, tmp_path):
    """
    An MLflow client and ``register(alias, C)`` that trains, logs and registers a small version of
    ``trip_completion``; afterwards the versions the test made are deleted and the aliases restored
    (the session's MLflow server is shared with the training pipeline's tests).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(mlflow_server)
    try:
        aliases_before = dict(client.get_registered_model(MODEL).aliases)
        versions_before = {v.version for v in client.search_model_versions(f"name='{MODEL}'")}
    except MlflowException:
        aliases_before, versions_before = None, set()
    trips = synthetic_trips(rows=600)
    trips.to_parquet(tmp_path / "training_set.parquet")

    def register(alias: str, c: float, feature_service: str = "trip_completion_v1") -> str:
        import sklearn
        import skops
        from mlflow.models import infer_signature
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y = trips[FEATURES].astype("float64"), trips["completed"]
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c)).fit(x, y)
        mlflow.set_tracking_uri(mlflow_server)
        mlflow.set_experiment("batch_scoring_tests")
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(x.head(5), model.predict(x.head(5))),
                pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}"],
                registered_model_name=MODEL,
            )
        version = str(info.registered_model_version)
        client.set_registered_model_alias(MODEL, alias, version)
        client.set_model_version_tag(
            MODEL, version, "mlplat.training_set.uri", str(tmp_path / "training_set.parquet")
        )
        client.set_model_version_tag(MODEL, version, "mlplat.feature_service", feature_service)
        return version

    yield client, register

    for version in client.search_model_versions(f"name='{MODEL}'"):
        if version.version not in versions_before:
            client.delete_model_version(MODEL, version.version)
    if aliases_before is None:
        client.delete_registered_model(MODEL)
        return
    for alias in set(client.get_registered_model(MODEL).aliases) - set(aliases_before):
        client.delete_registered_model_alias(MODEL, alias)
    for alias, version in aliases_before.items():
        client.set_registered_model_alias(MODEL, alias, version)


def asset_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(AssetEvent.extra)
                .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .where(AssetModel.uri == ASSET_URI, AssetEvent.source_run_id == run_id)
            ).all()
        )


def ray_jobs_of(run_id: str) -> list:
    """The Ray jobs a DAG run submitted (found by the Airflow ids the operator attaches)."""
    from airflow_provider_mlplat.hooks.ray import RayHook

    return [
        job
        for job in RayHook().get_conn().list_jobs()
        if (job.metadata or {}).get("airflow_dag_id") == "batch_scoring"
        and job.metadata.get("airflow_run_id") == run_id
    ]


def test_batch_scoring_scores_every_driver_with_the_champion(
    run_dag, rides_day, registry, ray_cluster, mlflow_server
):
    import mlflow
    from airflow.sdk import ObjectStoragePath

    _, register = registry
    champion = register("champion", c=1.0)
    register("challenger", c=0.01)  # the newest version is not the one that scores

    result = run_dag("batch_scoring", logical_date=LOGICAL_DATE)
    assert result.state == "success", result.states
    assert result.states == {
        "entity_rows": "success",
        "features": "success",
        "score": "success",
        "publish": "success",
    }
    plan, features, scored = (result.xcoms[t] for t in ("entity_rows", "features", "score"))
    assert plan["rows"] == DRIVERS and plan["day"] == "2026-01-01"
    assert plan["event_timestamp"] == LOGICAL_DATE.isoformat()
    assert features["rows"] == DRIVERS and features["rows_missing_features"] == 0
    assert features["label"] is None and features["feature_service"] == "trip_completion_v1"
    assert scored["version"] == champion and scored["model_uri"] == f"models:/{MODEL}/{champion}"
    assert scored["rows"] == DRIVERS and scored["alias"] == "champion"
    assert scored["uri"] == plan["predictions_uri"]
    assert f"/batch_scoring/{result.run_id.replace(':', '_').replace('+', '_')}/score/" in scored["uri"]

    path = ObjectStoragePath(scored["uri"])
    predictions = pd.read_parquet(path.path)
    assert sorted(predictions.columns) == ["driver_id", "event_timestamp", "model_version", "prediction"]
    assert len(predictions) == DRIVERS and predictions["driver_id"].is_unique  # one row per driver
    first = datagen.FIRST_DRIVER_ID
    assert set(predictions["driver_id"]) == set(range(first, first + DRIVERS))
    assert set(predictions["model_version"]) == {champion}
    assert set(pd.to_datetime(predictions["event_timestamp"], utc=True)) == {pd.Timestamp(LOGICAL_DATE)}

    # the champion, loaded here, predicts the same on the same features
    frame = pd.read_parquet(ObjectStoragePath(features["uri"]).path).set_index("driver_id")
    sample = frame.sample(8, random_state=0)
    mlflow.set_tracking_uri(mlflow_server)
    expected = mlflow.pyfunc.load_model(f"models:/{MODEL}/{champion}").predict(
        sample[FEATURES].astype("float64")
    )
    got = predictions.set_index("driver_id").loc[sample.index, "prediction"]
    np.testing.assert_array_equal(got.to_numpy(), np.asarray(expected))

    published = result.xcoms["publish"]
    assert asset_events(result.run_id) == [published]
    assert published == {
        "model_name": MODEL,
        "version": champion,
        "alias": "champion",
        "rows": DRIVERS,
        "uri": scored["uri"],
        "day": "2026-01-01",
        "event_timestamp": LOGICAL_DATE.isoformat(),
        "feature_service": "trip_completion_v1",
        "features_uri": features["uri"],
        "rows_missing_features": 0,
    }
    assert [job.status for job in ray_jobs_of(result.run_id)] == ["SUCCEEDED"]


def test_no_champion_fails_the_score_task_naming_model_alias_and_existing_aliases(
    run_dag, rides_day, registry, ray_cluster, capfd
):
    from airflow_provider_mlplat.hooks.ray import RayHook

    client, register = registry
    challenger = register("challenger", c=1.0)
    if "champion" in client.get_registered_model(MODEL).aliases:  # restored by the fixture
        client.delete_registered_model_alias(MODEL, "champion")

    result = run_dag("batch_scoring", logical_date=LOGICAL_DATE)
    assert result.state == "failed"
    assert result.states == {
        "entity_rows": "success",
        "features": "success",
        "score": "failed",
        "publish": "upstream_failed",
    }
    assert asset_events(result.run_id) == []
    jobs = ray_jobs_of(result.run_id)
    assert [job.status for job in jobs] == ["FAILED"]  # finished: nothing left running on Ray
    reason = (
        f"registered model 'trip_completion' has no 'champion' alias; its aliases: "
        f"challenger -> version {challenger}"
    )
    assert reason in RayHook().get_conn().get_job_logs(jobs[0].submission_id)
    printed = capfd.readouterr()
    failure = (printed.out + printed.err).split(f"MLPlatError: ray job {jobs[0].submission_id} FAILED", 1)
    assert len(failure) == 2 and reason in failure[1]  # the task's error carries the reason


def test_a_champion_trained_on_another_feature_service_is_refused(run_dag, rides_day, registry, ray_cluster):
    _, register = registry
    champion = register("champion", c=1.0, feature_service="trip_completion_v2")
    result = run_dag("batch_scoring", logical_date=LOGICAL_DATE)
    assert result.state == "failed"
    assert (result.states["score"], result.states["publish"]) == ("failed", "upstream_failed")
    jobs = ray_jobs_of(result.run_id)
    assert [job.status for job in jobs] == ["FAILED"]
    from airflow_provider_mlplat.hooks.ray import RayHook

    assert (
        f"models:/trip_completion/{champion} was trained on feature service 'trip_completion_v2'"
        in RayHook().get_conn().get_job_logs(jobs[0].submission_id)
    )
    assert asset_events(result.run_id) == []
