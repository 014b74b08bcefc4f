"""
### Training pipeline

Retrains the trip-completion model when its features change (it runs on the Feast feature view
Assets, e.g. `feast://rides/driver_hourly_stats`): the training set, then a Ray job
(`include/training/train.py`) that cross-validates candidate models in parallel on Ray, logs the
best to MLflow, registers a new version of `trip_completion` and aliases it `challenger`. The
`train` task returns the job's result (run id, model URI, version, metrics, training set, feature
service) for the promotion step.

Where the job runs is the `ray_default` connection's business: a Ray dashboard address (the local
head of `mlplat up`) or, with a `kubernetes_conn_id` extra, a KubeRay `RayJob` whose cluster is
`include/kuberay/raycluster.yaml`. Trigger it by hand with the `training_set_uri` param (a parquet
file with `driver_id`, `event_timestamp`, the features and `completed`).

The training set must pass the Great Expectations suite `include/gx/training_set.json` before
anything is trained; its verdict is also evidence for the promotion gate. The newest `holdout_share` of the rows (by `event_timestamp`) never reaches training: the new version
is evaluated on them with MLflow, and the promotion gate makes it `champion` only if it clears the
thresholds and beats the current champion; a champion move emits `mlflow://models/trip_completion`,
which schedules the deployment pipeline.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import AssetAny, Param, dag, task

from airflow_provider_mlplat.assets import feast_feature_view_asset
from airflow_provider_mlplat.operators.gx import GXValidateOperator
from airflow_provider_mlplat.operators.mlflow import MLflowEvaluateOperator, MLflowPromoteModelOperator
from airflow_provider_mlplat.operators.ray import RayJobOperator

INCLUDE = Path(__file__).resolve().parents[1] / "include"
MODEL_NAME = "trip_completion"
FEATURE_VIEWS = ("driver_hourly_stats",)


@dag(
    schedule=AssetAny(*(feast_feature_view_asset("rides", view) for view in FEATURE_VIEWS)),
    catchup=False,
    tags=["mlplat", "training"],
    default_args={"owner": "mlplat", "retries": 1, "retry_delay": timedelta(minutes=1)},
    doc_md=__doc__,
    params={
        "training_set_uri": Param(
            "", type="string", description="parquet training set (path or URI) to train on"
        ),
        "feature_service": Param("trip_completion_v1", type="string", description="Feast feature service"),
        "label": Param("completed", type="string", description="label column"),
        "holdout_share": Param(
            0.2, type="number", minimum=0.05, maximum=0.5, description="newest rows held out"
        ),
    },
)
def training_pipeline():
    @task(retries=0)  # a missing or malformed training set does not fix itself
    def training_set(params=None) -> dict:
        """Describe the training set named by the params: the summary the Ray job trains from."""
        import hashlib

        import pyarrow as pa
        import pyarrow.parquet as pq
        from airflow.sdk import ObjectStoragePath

        from airflow_provider_mlplat.exceptions import MLPlatConfigError

        uri, label = params["training_set_uri"], params["label"]
        path = ObjectStoragePath(uri if "://" in uri else f"file://{Path(uri).resolve()}")
        if not uri or not path.is_file():
            raise MLPlatConfigError(
                f"training_set_uri={uri!r} is not a file: give a parquet training set "
                f"(driver_id, event_timestamp, features, {label})"
            )
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
            handle.seek(0)
            parquet = pq.ParquetFile(handle)
            schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
        missing = sorted({"driver_id", "event_timestamp", label} - set(schema.names))
        if missing or not rows:
            raise MLPlatConfigError(f"training set {uri}: {rows} rows, missing column(s) {missing}")
        numeric = [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
        return {
            "uri": uri,
            "rows": rows,
            "features": [name for name in numeric if name not in ("driver_id", label)],
            "label": label,
            "content_hash": digest.hexdigest(),
            "feature_service": params["feature_service"],
        }

    @task
    def holdout_split(summary: dict, params=None, **context) -> dict:
        """Hold out the newest rows for evaluation; train on the rest (both written to artifact storage)."""
        import hashlib

        import pandas as pd
        from airflow.sdk import ObjectStoragePath

        from airflow_provider_mlplat.artifacts import task_artifact_dir

        uri = summary["uri"]
        with ObjectStoragePath(uri if "://" in uri else f"file://{Path(uri).resolve()}").open("rb") as handle:
            frame = pd.read_parquet(handle).sort_values("event_timestamp", kind="stable")
        cut = len(frame) - max(1, int(len(frame) * float(params["holdout_share"])))
        folder = task_artifact_dir(context)
        parts = {"train": frame.iloc[:cut], "holdout": frame.iloc[cut:]}
        for name, part in parts.items():
            with (folder / f"{name}.parquet").open("wb") as handle:
                part.to_parquet(handle, index=False)
        with (folder / "train.parquet").open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        return {
            **summary,
            "uri": str(folder / "train.parquet"),
            "rows": len(parts["train"]),
            "content_hash": digest,
            "holdout_uri": str(folder / "holdout.parquet"),
            "holdout_rows": len(parts["holdout"]),
            "source_uri": uri,
        }

    summary = training_set()
    validate = GXValidateOperator(
        task_id="validate_training_set",
        data_path="{{ ti.xcom_pull(task_ids='training_set')['uri'] }}",
        suite_path=str(INCLUDE / "gx" / "training_set.json"),
        retries=0,  # a failed quality gate does not fix itself
    )
    split = holdout_split(summary)
    summary >> validate >> split
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
    evaluate = MLflowEvaluateOperator(
        task_id="evaluate",
        model_name=MODEL_NAME,
        model_version="{{ ti.xcom_pull(task_ids='train')['version'] }}",
        holdout_uri="{{ ti.xcom_pull(task_ids='holdout_split')['holdout_uri'] }}",
        label_column="{{ params.label }}",
    )
    promote = MLflowPromoteModelOperator(
        task_id="promote",
        model_name=MODEL_NAME,
        challenger="{{ ti.xcom_pull(task_ids='evaluate')['version'] }}",
        thresholds={"roc_auc": 0.70},
        secondary_metrics=["accuracy", "log_loss"],
        max_regression=0.02,
        evidence={"training_set": validate.output},
    )
    train >> evaluate >> promote


training_pipeline()
