"""The mlplat pytest plugin as a team uses it: a DAG and a feature repo of its own, no project conftest."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

FEATURE_STORE = """\
project: team
provider: local
registry: data/registry.db
online_store:
  type: sqlite
  path: data/online.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""
DEFINITIONS = """\
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float64

courier = Entity(name="courier", join_keys=["courier_id"])
deliveries = FeatureView(
    name="deliveries",
    entities=[courier],
    ttl=timedelta(days=1),
    schema=[Field(name="minutes", dtype=Float64)],
    source=FileSource(
        path=str(Path(__file__).parent / "data" / "deliveries.parquet"), timestamp_field="event_timestamp"
    ),
)
"""
DAG = """\
from datetime import UTC, datetime

from airflow.sdk import dag

from airflow_provider_mlplat.operators.feast import FeastApplyOperator, FeastMaterializeOperator


@dag(schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC), params={"start": "", "end": ""})
def team_features():
    apply = FeastApplyOperator(task_id="apply", feast_conn_id="team_feast")
    materialize = FeastMaterializeOperator(
        task_id="materialize", feast_conn_id="team_feast", start="{{ params.start }}", end="{{ params.end }}"
    )
    apply >> materialize


team_features()
"""
TEAM_TESTS = """\
from pathlib import Path

import pandas as pd
import pytest

WINDOW = {"start": "2026-03-01T00:00:00+00:00", "end": "2026-03-01T03:00:00+00:00"}


def test_the_team_dag_materializes_its_own_features(feast_repo, run_dag):
    repo = feast_repo(Path(__file__).parent / "feature_repo", conn_id="team_feast")
    hours = pd.to_datetime(["2026-03-01T00:30Z", "2026-03-01T01:30Z", "2026-03-01T04:00Z"])
    rows = [{"courier_id": c, "event_timestamp": t, "minutes": 10.0 * c + i}
            for c in (1, 2) for i, t in enumerate(hours)]
    pd.DataFrame(rows).to_parquet(repo.path / "data" / "deliveries.parquet")

    result = run_dag("team_features", params=WINDOW)

    assert result.state == "success", result.states
    assert result.states == {"apply": "success", "materialize": "success"}
    assert result.xcoms["materialize"]["rows"] == 2  # the latest row per courier inside the window
    online = repo.online_features(["deliveries:minutes"], [{"courier_id": 1}, {"courier_id": 2}])
    assert online["minutes"] == [11.0, 21.0]  # 01:30 is the latest inside [00:00, 03:00)
    assert repo.online_store.stat().st_size > 0  # the fixture's store, not the repo's own data/online.db
    assert not (repo.path / "data" / "online.db").exists()


def test_an_unknown_param_names_the_valid_ones(run_dag):
    with pytest.raises(ValueError, match=r"no param\\(s\\) \\['strat'\\]; valid: \\['end', 'start'\\]"):
        run_dag("team_features", params={"strat": "2026-03-01"})


def test_a_service_that_cannot_start(mlflow_server):
    pass


def test_a_missing_service():
    from airflow_provider_mlplat.testing import unavailable

    unavailable("the team's queue is not installed")


def test_a_plain_skip():
    pytest.skip("not today")


@pytest.mark.expected_skip("only on GPU machines")
def test_an_expected_skip():
    pytest.skip("no GPU")
"""


@pytest.mark.timeout(600)  # 56 s on a quiet machine, 270 s measured on a loaded one
def test_a_team_tests_its_own_dag_with_the_plugin(pytester, monkeypatch):
    pytester.makeini("[pytest]\nmlplat_dags_folder = dags\n")
    (pytester.path / "dags").mkdir()
    (pytester.path / "dags" / "team_features.py").write_text(DAG)
    repo = pytester.path / "feature_repo"
    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(FEATURE_STORE)
    (repo / "definitions.py").write_text(DEFINITIONS)
    pytester.makepyfile(test_team=TEAM_TESTS)
    # a backend store MLflow cannot open: the mlflow_server fixture must fail with its log, not hang
    monkeypatch.setenv("MLPLAT_MLFLOW_DB_URL", "nosuchdb://nowhere")
    monkeypatch.setenv("CI", "true")  # a skip fails unless marked expected_skip

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rfE", timeout=540)

    output = result.stdout.str()
    result.assert_outcomes(passed=2, errors=1, failed=2, skipped=1)
    assert "mlflow did not start: mlflow " in output  # exited (or is restarting), then its log lines
    assert "nosuchdb" in output.split("mlflow did not start", 1)[1]
    assert "180 s" not in output  # not the platform's start timeout
    assert "required service unavailable under CI=true: the team's queue is not installed" in output
    assert "skipped under CI=true, not marked expected_skip: not today" in output
