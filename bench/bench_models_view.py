"""The Models view on a 1,000-model x 10-version Postgres registry, next to loading every version."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from airflow_provider_mlplat.testing.services import postgres_database, running_platform
from bench.bench_mlflow import _CallCounter, _populate

MODELS, VERSIONS = 1000, 10
SAMPLES = 10
CONN_ID = "mlflow_bench_view"


def _timed(calls: _CallCounter, fn) -> tuple[float, int]:
    before, started = calls.count, time.perf_counter()
    fn()
    return time.perf_counter() - started, calls.count - before


def _load_everything(client) -> int:
    """What a view that loads the whole registry does: every model, then every version, all pages."""
    models, token = [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        models += page
        if not (token := page.token):
            break
    versions, token = 0, None
    while True:
        page = client.search_model_versions(max_results=10_000, page_token=token)
        versions += len(page)
        if not (token := page.token):
            return versions


def run() -> str:
    home = Path(tempfile.mkdtemp(prefix="mlplat-bench-view-"))
    os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))
    with (
        postgres_database() as db_url,
        running_platform(home / "platform", ("mlflow",), mlflow_db_url=db_url) as platform,
    ):
        uri = f"http://127.0.0.1:{platform.settings.mlflow_port}"
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps({"conn_type": "mlflow", "host": uri})
        from mlflow import MlflowClient

        from airflow_provider_mlplat.ui.models import ModelsReader

        experiment_id = MlflowClient(uri).create_experiment("bench")
        populate_s = _populate(db_url, experiment_id, {f"model_{i:04d}": VERSIONS for i in range(MODELS)})
        reader = ModelsReader(mlflow_conn_id=CONN_ID, kserve_conn_id="kserve_bench_absent")
        calls = _CallCounter()
        reader.models()  # warm: imports, the Feast request-header plugin, the connection
        listing, page, everything = [], [], []
        for i in range(SAMPLES):  # interleaved so all see the same load
            listing.append(_timed(calls, reader.models))
            name = f"model_{(i * 97) % MODELS:04d}"
            page.append(_timed(calls, lambda name=name: reader.model(name)))
            everything.append(_timed(calls, lambda: _load_everything(reader.mlflow.client)))
        parts = reader.model("model_0001")
        shown = len(parts["registry"].value["versions"])

    def row(label: str, samples: list[tuple[float, int]]) -> str:
        seconds = sorted(s for s, _ in samples)
        calls_made = sorted({n for _, n in samples})
        return (
            f"| {label} | {statistics.median(seconds) * 1000:.0f} | {seconds[-1] * 1000:.0f} | "
            f"{', '.join(map(str, calls_made))} |"
        )

    worst_view = max(max(s for s, _ in listing), max(s for s, _ in page))
    return "\n".join(
        [
            "## Models view: 1,000 models x 10 versions (MLflow on PostgreSQL)",
            "",
            f"Registry populated with bulk INSERTs in {populate_s:.1f} s ({MODELS * VERSIONS:,} versions). "
            f"The view reads what `airflow_provider_mlplat.ui.models.ModelsReader` reads for the index page "
            f"(one page of 100 models with aliases) and for a model page ({shown} versions shown: the "
            f"newest {VERSIONS} plus aliased ones; serving read from an absent connection, so the figures "
            f"are MLflow's). {SAMPLES} samples each, interleaved. Slowest view answer: "
            f"**{worst_view * 1000:.0f} ms** (target < 1 s).",
            "",
            "| what | median ms | max ms | MLflow REST calls |",
            "|---|---:|---:|---:|",
            row("index page (`models()`)", listing),
            row("model page (`model(name)`)", page),
            row("loading everything (every model, every version)", everything),
        ]
    )


if __name__ == "__main__":
    print(run())
