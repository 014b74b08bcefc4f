"""
### Batch scoring (daily)

Scores every driver once a day with the champion of `trip_completion`: the drivers that reported
stats during the day (the raw `driver_hourly_stats` source of the `feast_default` connection, or the
rows of the `entities_uri` param) at the end of the day, for a reference trip of
`trip_distance_km`; their point-in-time features of the Feast feature service `trip_completion_v1`
(offline store, parquet in artifact storage); then a Ray job (`include/scoring/score.py`) that
resolves `models:/trip_completion@champion` to a concrete version through MLflow and predicts with
Ray Data, each worker holding the model once. The predictions (`driver_id`, `event_timestamp`,
`prediction`, `model_version`) land in the run's artifact folder (`.../batch_scoring/<run>/score/
predictions`, replaced on a retry), and `predictions://models/trip_completion` gets an event
carrying the model version, row count, URI and day.

No champion yet: the `score` task fails naming the model, the alias and the aliases that exist.
Where the job runs is the `ray_default` connection's business, as for the training pipeline.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from airflow_provider_mlplat.assets import predictions_asset
from airflow_provider_mlplat.operators.feast import FeastHistoricalFeaturesOperator
from airflow_provider_mlplat.operators.ray import RayJobOperator

INCLUDE = Path(__file__).resolve().parents[1] / "include"
MODEL_NAME = "trip_completion"
PREDICTIONS = predictions_asset(MODEL_NAME)
#: the raw source whose drivers are scored (a feature view's batch source in the `rides` repo)
DRIVER_SOURCE = "driver_hourly_stats"


@dag(
    # a daily data interval [day, day + 1): the features are read as of its end
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["mlplat", "scoring"],
    default_args={"owner": "mlplat", "retries": 1, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
    params={
        "entities_uri": Param(
            "",
            type="string",
            description="parquet or CSV of entity rows (driver_id [, event_timestamp, trip_distance_km]) "
            "to score instead of the day's drivers",
        ),
        "trip_distance_km": Param(
            6.0, type="number", exclusiveMinimum=0, description="reference trip scored for every driver"
        ),
        "feature_service": Param("trip_completion_v1", type="string", description="Feast feature service"),
        "alias": Param("champion", type="string", description="MLflow alias of the version that scores"),
    },
)
def batch_scoring():
    @task(retries=0)  # no drivers or a malformed entities file does not fix itself
    def entity_rows(params=None, data_interval_start=None, data_interval_end=None, **context) -> dict:
        """The rows to score, written to artifact storage; the day, and where the predictions go."""
        import pandas as pd
        import pyarrow.dataset as pds

        from airflow_provider_mlplat.artifacts import (
            artifact_uri,
            read_dataframe,
            task_artifact_dir,
            write_parquet,
        )
        from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatValidationFailed
        from airflow_provider_mlplat.hooks.feast import FeastHook

        end = pd.Timestamp(data_interval_end).tz_convert("UTC")
        start = pd.Timestamp(data_interval_start).tz_convert("UTC")
        if start >= end:  # a run without an interval: the day before its logical date
            start = end - pd.Timedelta(days=1)
        if params["entities_uri"]:
            frame = read_dataframe(params["entities_uri"])
            if "driver_id" not in frame.columns:
                raise MLPlatConfigError(
                    f"entities_uri={params['entities_uri']!r} lacks column driver_id; it has {list(frame.columns)}"
                )
            source = params["entities_uri"]
        else:
            folder = FeastHook().data_dir / DRIVER_SOURCE
            if not folder.is_dir():
                raise MLPlatConfigError(f"no raw {DRIVER_SOURCE} data at {folder}: give entities_uri")
            stamp = pds.field("event_timestamp")
            ids = (
                pds.dataset(folder, format="parquet")
                .to_table(columns=["driver_id"], filter=(stamp >= start) & (stamp < end))
                .column("driver_id")
                .unique()
            )
            frame = pd.DataFrame({"driver_id": ids.to_numpy()})
            source = str(folder)
        if "event_timestamp" not in frame.columns:
            frame["event_timestamp"] = end
        if "trip_distance_km" not in frame.columns:
            frame["trip_distance_km"] = float(params["trip_distance_km"])
        frame = frame.sort_values(["driver_id", "event_timestamp"], kind="stable").reset_index(drop=True)
        if frame.empty:
            raise MLPlatValidationFailed(
                f"nothing to score: no driver in {source} between {start.isoformat()} and {end.isoformat()}"
            )
        uri, content_hash = write_parquet(task_artifact_dir(context) / "entities.parquet", frame)
        return {
            "uri": uri,
            "rows": len(frame),
            "content_hash": content_hash,
            "source": source,
            "day": start.date().isoformat(),
            "event_timestamp": end.isoformat(),
            "predictions_uri": artifact_uri(task_artifact_dir(context, task_id="score") / "predictions"),
        }

    @task(outlets=[PREDICTIONS])
    def publish(scored: dict, plan: dict, features: dict, outlet_events=None) -> dict:
        """Check the predictions the job wrote; record them on the predictions Asset."""
        import pyarrow.dataset as pds

        from airflow_provider_mlplat.artifacts import storage_path
        from airflow_provider_mlplat.exceptions import MLPlatError

        if not scored:
            raise MLPlatError("the score job returned no result: no MLPLAT_RESULT_JSON line in its log")
        path = storage_path(scored["uri"])
        rows = pds.dataset(path.path, filesystem=path.fs, format="parquet").count_rows()
        if rows != scored["rows"] or rows != features["rows"]:
            raise MLPlatError(
                f"{scored['uri']} holds {rows} prediction row(s); the job reported {scored['rows']}, "
                f"the features had {features['rows']}"
            )
        extra = {
            "model_name": scored["model_name"],
            "version": scored["version"],
            "alias": scored["alias"],
            "rows": rows,
            "uri": scored["uri"],
            "day": plan["day"],
            "event_timestamp": plan["event_timestamp"],
            "feature_service": features["feature_service"],
            "features_uri": features["uri"],
            "rows_missing_features": features["rows_missing_features"],
        }
        outlet_events[PREDICTIONS].extra.update(extra)
        return extra

    plan = entity_rows()
    features = FeastHistoricalFeaturesOperator(
        task_id="features",
        feature_service="{{ params.feature_service }}",
        entity_source="{{ ti.xcom_pull(task_ids='entity_rows')['uri'] }}",
        label_column=None,
    )
    plan >> features
    score = RayJobOperator(
        task_id="score",
        entrypoint=f"python score.py --model-name {MODEL_NAME} --alias {{{{ params.alias }}}}",
        working_dir=str(INCLUDE / "scoring"),
        env_vars={
            "MLPLAT_FEATURES": features.output,
            "MLPLAT_PREDICTIONS_URI": "{{ ti.xcom_pull(task_ids='entity_rows')['predictions_uri'] }}",
        },
        mlflow_conn_id="mlflow_default",
        cluster_spec_file=str(INCLUDE / "kuberay" / "raycluster.yaml"),
        retries=0,  # a missing champion or a feature mismatch does not fix itself; the job is idempotent
        execution_timeout=timedelta(hours=2),
    )
    publish(score.output, plan, features.output)


batch_scoring()
