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
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import AssetAny, Param, dag, task

from airflow_provider_mlplat.assets import feast_feature_view_asset
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

    RayJobOperator(
        task_id="train",
        entrypoint=f"python train.py --model-name {MODEL_NAME} --experiment {MODEL_NAME}",
        working_dir=str(INCLUDE / "training"),
        env_vars={"MLPLAT_TRAINING_SET": training_set()},
        mlflow_conn_id="mlflow_default",
        cluster_spec_file=str(INCLUDE / "kuberay" / "raycluster.yaml"),
        startup_timeout=1800,  # on KubeRay: cluster creation and image pulls
        execution_timeout=timedelta(hours=3),
    )


training_pipeline()
