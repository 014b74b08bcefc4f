"""
### Monitoring pipeline (hourly)

Each hour, Evidently compares the traffic `trip-completion` served in the hour (the model server's
inference log) with the training set of the model version that served it. The HTML report and the
JSON snapshot go to artifact storage (the task's "Drift report" link), the drift share and each
feature's score go to Prometheus through the Pushgateway (Grafana: `include/grafana/`). When the
share of drifted features reaches `drift_share`, `drift://models/trip_completion` is emitted with
the drifted features, which schedules the training pipeline: the loop closes. An hour with fewer
than `min_rows` served rows is skipped: too little evidence is not drift.

Params (for a manual run): `window_start` / `window_end` (ISO 8601; default: the data interval),
`min_rows`, `drift_share`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag

from airflow_provider_mlplat.operators.evidently import EvidentlyDriftOperator

MODEL = "trip_completion"


@dag(
    # on the hour, for the hour that ended; unpausing does not start a run for a missed hour
    schedule=CronTriggerTimetable("0 * * * *", timezone="UTC", interval=timedelta(hours=1)),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    is_paused_upon_creation=True,  # hourly work starts when you unpause it (`mlplat demo` drives it)
    max_active_runs=1,
    tags=["mlplat", "monitoring"],
    default_args={"owner": "mlplat", "retries": 1},
    doc_md=__doc__,
    render_template_as_native_obj=True,
    params={
        "window_start": Param("", type="string", description="ISO 8601 (default: the data interval start)"),
        "window_end": Param("", type="string", description="ISO 8601 (default: the data interval end)"),
        "min_rows": Param(200, type="integer", minimum=1, description="fewer served rows: skipped"),
        "drift_share": Param(
            0.5, type="number", exclusiveMinimum=0, maximum=1, description="share of drifted features"
        ),
    },
)
def monitoring_pipeline():
    EvidentlyDriftOperator(
        task_id="detect_drift",
        model_name=MODEL,
        window_start="{{ params.window_start or data_interval_start }}",
        window_end="{{ params.window_end or data_interval_end }}",
        min_rows="{{ params.min_rows }}",
        drift_share="{{ params.drift_share }}",
    )


monitoring_pipeline()
