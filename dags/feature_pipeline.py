"""
### Feature pipeline (hourly)

For each hour: land the hour's raw data, apply the `rides` feature repo (a no-op when unchanged),
validate each raw file with Great Expectations, materialize the hour into the online store and
emit one Asset event per feature view (`feast://rides/<view>`, carrying the window and row count),
which the training pipeline is scheduled on.

The `feast_default` connection decides where this runs: the repo, the raw data folder, SQLite or
Redis online store, local or Ray batch engine. The local platform has no upstream system, so with
`simulate_source` (default) the deterministic generator (`include/datagen.py`) lands the hour's
files; switch it off where real data lands in the same folders.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import CronTriggerTimetable, Param, dag, task

from airflow_provider_mlplat.assets import feast_feature_view_asset
from airflow_provider_mlplat.operators.feast import FeastApplyOperator, FeastMaterializeOperator
from airflow_provider_mlplat.operators.gx import GXValidateOperator

PROJECT = "rides"
FEATURE_VIEWS = ("driver_hourly_stats", "driver_profile")
INCLUDE = Path(__file__).resolve().parents[1] / "include"


@dag(
    # on the hour, for the hour that ended; unpausing does not start a run for a missed hour
    schedule=CronTriggerTimetable("0 * * * *", timezone="UTC", interval=timedelta(hours=1)),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    is_paused_upon_creation=True,  # hourly work starts when you unpause it (`mlplat demo` drives it)
    max_active_runs=1,
    tags=["mlplat", "features"],
    default_args={"owner": "mlplat", "retries": 0},
    doc_md=__doc__,
    params={
        "simulate_source": Param(True, type="boolean", description="generate the hour's raw data"),
        "drivers": Param(100, type="integer", minimum=1, description="drivers the generator simulates"),
    },
)
def feature_pipeline():
    @task
    def land_raw_data(params=None, data_interval_start=None, data_interval_end=None) -> list[dict[str, str]]:
        """The interval's raw files and their expectation suites (generated when simulate_source)."""
        from airflow_provider_mlplat.hooks.feast import FeastHook
        from include import datagen  # the bundle's root is on the import path, as Astro projects have it

        data_dir = FeastHook().data_dir
        if params["simulate_source"]:
            datagen.generate(data_dir, data_interval_start, data_interval_end, drivers=params["drivers"])
        return [
            {
                "data_path": str(datagen.partition_path(data_dir, view, hour)),
                "suite_path": str(INCLUDE / "gx" / f"{view}.json"),
            }
            for view in FEATURE_VIEWS
            for hour in datagen.hours(data_interval_start, data_interval_end)
        ]

    raw_files = land_raw_data()
    apply = FeastApplyOperator(task_id="apply_feature_repo")
    validate = GXValidateOperator.partial(
        task_id="validate_raw_data",
        map_index_template="{{ task.data_path.split('/')[-2:] | join('/') }}",
    ).expand_kwargs(raw_files)
    materialize = FeastMaterializeOperator(
        task_id="materialize",
        retries=0,  # an online store that drops out mid-write; the retry rewrites the whole window
        retry_delay=timedelta(minutes=1),
        feature_views=list(FEATURE_VIEWS),
        outlets=[feast_feature_view_asset(PROJECT, view) for view in FEATURE_VIEWS],
    )
    raw_files >> apply >> materialize
    validate >> materialize


feature_pipeline()
