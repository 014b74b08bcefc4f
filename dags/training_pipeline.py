"""
### Training pipeline

Retrains the trip-completion model when its features change (the Feast feature view Assets, e.g.
`feast://rides/driver_hourly_stats`) or when the monitoring pipeline detects drift in its served
traffic (`drift://models/trip_completion`).

1. `training_set`: Feast builds a point-in-time correct training set for the feature service from
   the labelled trips of the last `lookback_hours` (the `trips` folder of the `feast_default`
   connection's raw data, or `entity_source`), written as parquet to artifact storage.
2. `validate_training_set`: the Great Expectations suite `include/gx/training_set.json` must pass
   before anything is trained; its verdict is also evidence for the promotion gate.
3. `holdout_split`: the newest `holdout_share` of the rows (by `event_timestamp`) never reach training.
4. `train`: a Ray job (`include/training/train.py`) cross-validates candidate models in parallel,
   logs the best to MLflow, registers a new version of `trip_completion` aliased `challenger`.
   Where it runs is the `ray_default` connection's business: a Ray dashboard address (the local
   head of `mlplat up`) or, with a `kubernetes_conn_id` extra, a KubeRay `RayJob` whose cluster is
   `include/kuberay/raycluster.yaml`.
5. `evaluate` / `evaluate_champion`: the challenger and the current champion are evaluated with
   MLflow on the same holdout, so the gate compares them on the same, newest data.
6. `promote`: the challenger becomes `champion` only if it clears the thresholds and beats the
   champion; a champion move emits `mlflow://models/trip_completion`, which schedules the
   deployment pipeline.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import AssetAny, Param, dag, task

from airflow_provider_mlplat.assets import drift_asset, feast_feature_view_asset
from airflow_provider_mlplat.operators.feast import FeastHistoricalFeaturesOperator
from airflow_provider_mlplat.operators.gx import GXValidateOperator
from airflow_provider_mlplat.operators.mlflow import MLflowEvaluateOperator, MLflowPromoteModelOperator
from airflow_provider_mlplat.operators.ray import RayJobOperator

INCLUDE = Path(__file__).resolve().parents[1] / "include"
MODEL_NAME = "trip_completion"
FEATURE_VIEWS = ("driver_hourly_stats",)
#: what the model is trained on: every numeric column of the training set but these
NOT_FEATURES = ("driver_id", "event_timestamp")


@dag(
    schedule=AssetAny(
        *(feast_feature_view_asset("rides", view) for view in FEATURE_VIEWS), drift_asset(MODEL_NAME)
    ),
    catchup=False,
    tags=["mlplat", "training"],
    default_args={"owner": "mlplat", "retries": 1, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
    params={
        "lookback_hours": Param(
            72, type="integer", minimum=1, description="labelled trips of the last N hours"
        ),
        "entity_source": Param(
            "",
            type="string",
            description="labelled trips (parquet/CSV path or URI; default: the feast connection's raw trips)",
        ),
        "feature_service": Param("trip_completion_v1", type="string", description="Feast feature service"),
        "label": Param("completed", type="string", description="label column"),
        "holdout_share": Param(
            0.2, type="number", minimum=0.05, maximum=0.5, description="newest rows held out"
        ),
        "require_approval": Param(
            False,
            type="boolean",
            description="ask a person (Required Actions) before the champion alias moves",
        ),
    },
)
def training_pipeline():
    training_set = FeastHistoricalFeaturesOperator(
        task_id="training_set",
        retries=0,  # missing trips or features do not fix themselves
        feature_service="{{ params.feature_service }}",
        entity_source="{{ params.entity_source or conn.feast_default.extra_dejson.data_dir ~ '/trips' }}",
        label_column="{{ params.label }}",
        start="{{ (dag_run.run_after - macros.timedelta(hours=params.lookback_hours)).isoformat() }}",
        end="{{ dag_run.run_after.isoformat() }}",
    )

    @task
    def holdout_split(summary: dict, params=None, **context) -> dict:
        """Hold out the newest rows for evaluation; train on the rest (both written to artifact storage)."""
        import pandas as pd

        from airflow_provider_mlplat.artifacts import storage_path, task_artifact_dir, write_parquet

        uri, label = summary["uri"], summary["label"]
        with storage_path(uri).open("rb") as handle:
            frame = pd.read_parquet(handle).sort_values("event_timestamp", kind="stable")
        numeric = frame.select_dtypes("number").columns
        features = [c for c in numeric if c not in (*NOT_FEATURES, label)]  # request data included
        cut = len(frame) - max(1, int(len(frame) * float(params["holdout_share"])))
        folder = task_artifact_dir(context)
        train, holdout = frame.iloc[:cut], frame.iloc[cut:]
        train_uri, digest = write_parquet(folder / "train.parquet", train)
        holdout_uri, _ = write_parquet(folder / "holdout.parquet", holdout)
        return {
            **summary,
            "features": features,
            "uri": train_uri,
            "rows": len(train),
            "content_hash": digest,
            "holdout_uri": holdout_uri,
            "holdout_rows": len(holdout),
            "source_uri": uri,
        }

    validate = GXValidateOperator(
        task_id="validate_training_set",
        data_path="{{ ti.xcom_pull(task_ids='training_set')['uri'] }}",
        suite_path=str(INCLUDE / "gx" / "training_set.json"),
        retries=0,  # a failed quality gate does not fix itself
    )
    split = holdout_split(training_set.output)
    training_set >> validate >> split
    train = RayJobOperator(
        task_id="train",
        entrypoint=f"python train.py --model-name {MODEL_NAME} --experiment {MODEL_NAME}",
        working_dir=str(INCLUDE / "training"),
        env_vars={"MLPLAT_TRAINING_SET": split},
        mlflow_conn_id="mlflow_default",
        cluster_spec_file=str(INCLUDE / "kuberay" / "raycluster.yaml"),
        startup_timeout=1800,  # on KubeRay: cluster creation and image pulls
        execution_timeout=timedelta(hours=3),
    )
    on_the_holdout = {
        "model_name": MODEL_NAME,
        "holdout_uri": "{{ ti.xcom_pull(task_ids='holdout_split')['holdout_uri'] }}",
        "label_column": "{{ params.label }}",
    }
    evaluate = MLflowEvaluateOperator(
        task_id="evaluate", model_version="{{ ti.xcom_pull(task_ids='train')['version'] }}", **on_the_holdout
    )
    evaluate_champion = MLflowEvaluateOperator(
        task_id="evaluate_champion",
        model_version="champion",
        skip_when_missing=True,  # the first model has no champion to compare with
        **on_the_holdout,
    )
    promote = MLflowPromoteModelOperator(
        task_id="promote",
        model_name=MODEL_NAME,
        challenger="{{ ti.xcom_pull(task_ids='evaluate')['version'] }}",
        thresholds={"roc_auc": 0.70},
        secondary_metrics=["accuracy", "log_loss"],
        max_regression=0.02,
        evidence={"training_set": validate.output},
        trigger_rule="none_failed",  # evaluate_champion is skipped while there is no champion
        require_approval="{{ params.require_approval }}",
    )
    train >> [evaluate, evaluate_champion] >> promote


training_pipeline()
