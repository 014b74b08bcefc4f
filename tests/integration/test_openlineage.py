"""OpenLineage events of a real DAG run: the provider's datasets with their facets, through the file transport."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from airflow_provider_mlplat.hooks.mlflow import TRAINING_SET_HASH_TAG, TRAINING_SET_TAG, MLflowHook
from tests.integration.test_mlflow_dag import register, trips

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def lineage_events(path: Path) -> list[dict]:
    """The COMPLETE events the file transport appended, one JSON document per line."""
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["eventType"] == "COMPLETE"]


@pytest.mark.timeout(600)  # 60-210 s measured
def test_promotion_reports_training_set_to_model_version(airflow_db, mlflow_server, tmp_path):
    name = f"lineage_{uuid.uuid4().hex[:8]}"
    assert register(name) == "1"
    holdout = tmp_path / "holdout.parquet"
    trips(200, seed=2).to_parquet(holdout)
    client = MLflowHook().client
    client.set_model_version_tag(name, "1", TRAINING_SET_TAG, str(holdout))
    client.set_model_version_tag(name, "1", TRAINING_SET_HASH_TAG, "sha256:0123")
    events = tmp_path / "lineage.jsonl"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__OPENLINEAGE")},
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "mlplat-tests",
    }
    conf = {"model_name": name, "holdout_uri": str(holdout), "thresholds": {"roc_auc": 0.7}}
    airflow = Path(sys.executable).parent / "airflow"
    done = subprocess.run([airflow, "dags", "test", "model_promotion", "-c", json.dumps(conf)],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [promote] = [e for e in lineage_events(events) if e["job"]["name"] == "model_promotion.promote"]
    [source] = promote["inputs"]
    assert (source["namespace"], source["name"]) == ("file", str(holdout))
    assert source["facets"]["version"]["datasetVersion"] == "sha256:0123"
    [model] = promote["outputs"]
    assert (model["namespace"], model["name"]) == ("mlflow://models", name)
    assert model["facets"]["version"]["datasetVersion"] == "1"
    facts = model["facets"]["mlplat"]
    assert facts["decision"] == "promoted" and facts["champion_moved"] is True
    assert facts["metrics"]["roc_auc"] > 0.8
