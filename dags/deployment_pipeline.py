"""
### Deployment pipeline

Runs when the champion of `trip_completion` moves (the `mlflow://models/trip_completion` asset the
promotion emits) and rolls that version out to KServe: the `kserve_default` connection decides
where (the local model server, or InferenceServices on Kubernetes).

The new version is loaded without traffic and smoke-tested with its input example, then takes 10%
and 50% of the traffic; at each step Prometheus decides (canary vs stable error rate and p99
latency over the analysis window). At 100% it becomes stable and `kserve://<namespace>/trip-completion`
is emitted with version, traffic and revision. A failed step rolls traffic back, moves `champion`
back to `previous-champion` and fails the run; the decision record is in artifact storage.

Params (for a manual run): `model_version` (default: the champion), `strategy` (`canary` or
`direct`), `canary_steps`, `analysis` (threshold overrides, e.g. `{"window_seconds": 120}`). The
Airflow Variable `mlplat_canary_analysis` (JSON) sets the thresholds of asset-triggered runs.
"""

from __future__ import annotations

from airflow.sdk import Param, dag

from airflow_provider_mlplat.assets import mlflow_model_asset
from airflow_provider_mlplat.operators.kserve import KServeRolloutOperator

MODEL = "trip_completion"


@dag(
    schedule=[mlflow_model_asset(MODEL)],
    catchup=False,
    tags=["mlplat", "serving"],
    default_args={"owner": "mlplat", "retries": 0},
    doc_md=__doc__,
    render_template_as_native_obj=True,
    params={
        "model_name": Param(MODEL, type="string", description="registered MLflow model"),
        "model_version": Param(None, type=["null", "string"], description="version (default: @champion)"),
        "strategy": Param("canary", enum=["canary", "direct"]),
        "canary_steps": Param([10, 50, 100], type="array", items={"type": "integer"}),
        "analysis": Param({}, type="object", description="CanaryAnalysis overrides"),
        "require_approval": Param(
            False, type="boolean", description="ask a person (Required Actions) before the last canary step"
        ),
    },
)
def deployment_pipeline():
    KServeRolloutOperator(
        task_id="rollout",
        model_name="{{ params.model_name }}",
        model_version="{{ params.model_version }}",
        strategy="{{ params.strategy }}",
        canary_steps="{{ params.canary_steps }}",
        analysis="{{ params.analysis or var.json.get('mlplat_canary_analysis', {}) }}",
        poll_interval=2,
        require_approval="{{ params.require_approval }}",
    )


deployment_pipeline()
