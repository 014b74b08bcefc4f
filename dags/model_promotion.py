"""
### Model promotion

Evidence-gated promotion of an MLflow registered model (default `trip_completion`):

1. **wait_for_challenger** waits (deferrable) until the `challenger` alias points at a READY version;
2. **evaluate** evaluates exactly that version on the holdout set with MLflow's evaluator, into an
   evaluation run linked to the version;
3. **promote** moves `champion` to it when it passes the gates (absolute thresholds, improvement over
   the champion, no regression of secondary metrics, upstream evidence), keeping the replaced
   champion as `previous-champion`. The decision is recorded on the version and as a JSON record;
   when the champion moved, an `mlflow://models/<name>` Asset event is emitted, which deployment
   DAGs are scheduled on.

Trigger it with the holdout parquet (feature columns + `completed`) in `holdout_uri`.
"""

from __future__ import annotations

from airflow.sdk import Param, dag

from airflow_provider_mlplat.operators.mlflow import MLflowEvaluateOperator, MLflowPromoteModelOperator
from airflow_provider_mlplat.sensors.mlflow import MLflowModelVersionSensor


@dag(
    schedule=None,
    catchup=False,
    tags=["mlplat", "mlflow", "promotion"],
    default_args={"owner": "mlplat", "retries": 0},
    doc_md=__doc__,
    render_template_as_native_obj=True,
    params={
        "model_name": Param("trip_completion", type="string", description="registered model"),
        "challenger": Param("challenger", type="string", description="alias (or version) to evaluate"),
        "holdout_uri": Param(type="string", minLength=1, description="holdout parquet: features + label"),
        "label": Param("completed", type="string"),
        "thresholds": Param({"roc_auc": 0.7}, type="object", description="absolute gates per metric"),
        "min_improvement": Param(0.0, type="number", minimum=0),
        "secondary_metrics": Param(["accuracy", "log_loss"], type="array", items={"type": "string"}),
        "max_regression": Param(0.02, type="number", minimum=0),
        "evidence": Param({}, type="object", description='upstream verdicts, e.g. {"gx": {"success": true}}'),
        "fail_on_reject": Param(False, type="boolean"),
        "require_approval": Param(
            False,
            type="boolean",
            description="ask a person (Required Actions) before the champion alias moves",
        ),
    },
)
def model_promotion():
    wait = MLflowModelVersionSensor(
        task_id="wait_for_challenger",
        model_name="{{ params.model_name }}",
        version="{{ params.challenger }}",
        poke_interval=30,
        timeout=6 * 3600,
    )
    evaluate = MLflowEvaluateOperator(
        task_id="evaluate",
        model_name="{{ params.model_name }}",
        model_version="{{ ti.xcom_pull(task_ids='wait_for_challenger')['version'] }}",
        holdout_uri="{{ params.holdout_uri }}",
        label_column="{{ params.label }}",
    )
    promote = MLflowPromoteModelOperator(
        task_id="promote",
        model_name="{{ params.model_name }}",
        challenger="{{ ti.xcom_pull(task_ids='evaluate')['version'] }}",
        thresholds="{{ params.thresholds }}",
        min_improvement="{{ params.min_improvement }}",
        secondary_metrics="{{ params.secondary_metrics }}",
        max_regression="{{ params.max_regression }}",
        evidence="{{ params.evidence }}",
        fail_on_reject="{{ params.fail_on_reject }}",
        require_approval="{{ params.require_approval }}",
    )
    wait >> evaluate >> promote


model_promotion()
