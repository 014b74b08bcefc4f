"""Evidence-gated promotion against real MLflow servers (SQLite and Postgres backends)."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import ExitStack

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatValidationFailed
from airflow_provider_mlplat.hooks.mlflow import MLflowHook
from airflow_provider_mlplat.promotion import TAG_AUDIT, TAG_DECISION, TAG_REASONS, Promotion, PromotionGates
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.ci import unavailable
from airflow_provider_mlplat.testing.services import postgres_database, running_platform

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_mlflow(tmp_path_factory):
    """A second MLflow server whose backend store is a fresh PostgreSQL database; sets ``mlflow_pg``."""
    import sqlalchemy

    with ExitStack() as stack:
        try:
            db_url = stack.enter_context(postgres_database())
        except sqlalchemy.exc.OperationalError as err:
            unavailable(f"PostgreSQL is not reachable: {err.orig}")
        home = tmp_path_factory.mktemp("mlflow-pg")
        platform = stack.enter_context(running_platform(home, ("mlflow",), mlflow_db_url=db_url))
        set_connection(
            "mlflow_pg", conn_type="mlflow", host=f"http://127.0.0.1:{platform.settings.mlflow_port}"
        )
        yield "mlflow_pg"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def registry(request) -> MLflowHook:
    """An MLflow hook on a real server, once per backend store."""
    conn_id = "mlflow_default" if request.param == "sqlite" else "mlflow_pg"
    request.getfixturevalue("mlflow_server" if request.param == "sqlite" else "postgres_mlflow")
    return MLflowHook(conn_id)


def new_model(hook: MLflowHook, *versions: dict[str, float], champion=None, challenger=None) -> str:
    """A registered model with one version per metrics dict (each from its own run) and aliases."""
    from mlflow.entities import Metric

    client, name = hook.client, f"m_{uuid.uuid4().hex[:10]}"
    experiment = client.get_experiment_by_name("promotion-tests")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("promotion-tests")
    client.create_registered_model(name)
    now = int(time.time() * 1000)
    for metrics in versions:
        run = client.create_run(experiment_id)
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        client.set_terminated(run.info.run_id)
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    for alias, version in (("champion", champion), ("challenger", challenger)):
        if version:
            client.set_registered_model_alias(name, alias, str(version))
    return name


def promote(
    hook: MLflowHook, name: str, tmp_path, challenger="challenger", evidence=None, by="d/r/promote", **gates
):
    """Run one promotion the way the operator does, with its decision records under tmp_path."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_mlplat.artifacts import write_json

    settings = {"thresholds": {"roc_auc": 0.7}, "secondary_metrics": ["accuracy"], "max_regression": 0.01}
    settings.update(gates)

    def write_record(record):
        return write_json(ObjectStoragePath(f"file://{tmp_path}/{uuid.uuid4().hex}.json"), record)

    return Promotion(
        hook=hook,
        model_name=name,
        challenger=str(challenger),
        gates=PromotionGates.build("roc_auc", **settings),
        evidence=evidence or {},
        decided_by=by,
        write_record=write_record,
    ).run()


def aliases(hook: MLflowHook, name: str) -> dict[str, str]:
    return dict(hook.client.get_registered_model(name).aliases)


def tags(hook: MLflowHook, name: str, version) -> dict[str, str]:
    """The decision tags of a version, the audit JSON unpacked."""
    import json

    found = hook.client.get_model_version(name, str(version)).tags
    if TAG_DECISION not in found:
        return {}
    return {"decision": found[TAG_DECISION], "reasons": found[TAG_REASONS], **json.loads(found[TAG_AUDIT])}


def test_first_model_is_promoted_on_thresholds_and_a_rerun_changes_nothing(registry, tmp_path):
    from airflow_provider_mlplat.artifacts import read_json

    name = new_model(registry, {"roc_auc": 0.81, "accuracy": 0.7}, challenger=1)
    result = promote(registry, name, tmp_path)
    assert (result["decision"], result["champion_moved"], result["compared_to"]) == ("promoted", True, None)
    assert aliases(registry, name) == {"challenger": "1", "champion": "1"}
    recorded = tags(registry, name, 1)
    assert recorded["decision"] == "promoted" and recorded["compared_to"] is None
    record = read_json(recorded["record"])
    assert record["challenger"]["metrics"] == {"roc_auc": 0.81, "accuracy": 0.7}
    assert record["champion"] is None and record["decided_by"] == "d/r/promote"
    assert [c["gate"] for c in record["checks"]] == ["threshold"]

    again = promote(registry, name, tmp_path, by="d/other-run/promote")
    assert (again["decision"], again["champion_moved"]) == ("promoted", False)
    assert tags(registry, name, 1) == recorded  # nothing rewritten
    retry = promote(registry, name, tmp_path)  # the same task instance again: it did move the champion
    assert retry["champion_moved"] is True


def test_first_model_below_the_threshold_is_rejected(registry, tmp_path):
    name = new_model(registry, {"roc_auc": 0.65, "accuracy": 0.7}, challenger=1)
    result = promote(registry, name, tmp_path)
    assert result["decision"] == "rejected" and result["champion_moved"] is False
    assert result["reasons"] == ["roc_auc 0.65 >= 0.7 failed"]
    assert aliases(registry, name) == {"challenger": "1"}


def test_better_challenger_becomes_champion_and_the_old_one_previous_champion(registry, tmp_path):
    name = new_model(
        registry,
        {"roc_auc": 0.80, "accuracy": 0.70},
        {"roc_auc": 0.85, "accuracy": 0.695},
        champion=1,
        challenger=2,
    )
    result = promote(registry, name, tmp_path)
    assert (result["decision"], result["compared_to"], result["champion_moved"]) == ("promoted", "1", True)
    assert aliases(registry, name) == {"champion": "2", "challenger": "2", "previous-champion": "1"}
    assert tags(registry, name, 2)["compared_to"] == "1"
    assert result["metrics"] == {"roc_auc": 0.85, "accuracy": 0.695}


@pytest.mark.parametrize(
    ("challenger", "reason"),
    [
        ({"roc_auc": 0.78, "accuracy": 0.75}, "roc_auc improves on the champion by -0.02"),
        ({"roc_auc": 0.80, "accuracy": 0.70}, "roc_auc improves on the champion by 0 "),
        ({"roc_auc": 0.90, "accuracy": 0.65}, "accuracy regresses by 0.05 (allowed 0.01)"),
    ],
    ids=["worse", "equal", "secondary-regression"],
)
def test_challengers_that_do_not_beat_the_champion_are_rejected_and_recorded(
    registry, tmp_path, challenger, reason
):
    name = new_model(registry, {"roc_auc": 0.80, "accuracy": 0.70}, challenger, champion=1, challenger=2)
    result = promote(registry, name, tmp_path)
    assert result["decision"] == "rejected" and result["champion_moved"] is False
    assert len(result["reasons"]) == 1 and result["reasons"][0].startswith(reason)
    assert aliases(registry, name) == {"champion": "1", "challenger": "2"}
    recorded = tags(registry, name, 2)
    assert recorded["decision"] == "rejected" and recorded["reasons"].startswith(reason)
    again = promote(registry, name, tmp_path, by="d/r2/promote")
    assert again["decision"] == "rejected" and again["record_uri"] == result["record_uri"]
    assert tags(registry, name, 2) == recorded  # same versions, same inputs: nothing written


def test_failed_evidence_rejects_a_challenger_that_passed_every_metric_gate(registry, tmp_path):
    name = new_model(
        registry,
        {"roc_auc": 0.80, "accuracy": 0.70},
        {"roc_auc": 0.9, "accuracy": 0.8},
        champion=1,
        challenger=2,
    )
    result = promote(
        registry,
        name,
        tmp_path,
        evidence={"gx": {"success": True}, "drift": {"drift_detected": True, "share": 0.5}},
    )
    assert result["decision"] == "rejected"
    assert result["reasons"] == ["evidence 'drift': drift_detected=True"]
    result = promote(registry, name, tmp_path, evidence={"gx": {"success": False}, "drift": "no_drift"})
    assert result["reasons"] == ["evidence 'gx': success=False"]
    assert aliases(registry, name)["champion"] == "1"
    result = promote(
        registry, name, tmp_path, evidence={"gx": {"success": True}, "drift": {"dataset_drift": False}}
    )
    assert result["decision"] == "promoted" and aliases(registry, name)["champion"] == "2"


def test_a_missing_metric_is_an_error_naming_the_metric_and_the_run_before_anything_is_written(
    registry, tmp_path
):
    name = new_model(registry, {"roc_auc": 0.8, "accuracy": 0.7}, {"roc_auc": 0.9}, champion=1, challenger=2)
    run_id = registry.client.get_model_version(name, "2").run_id
    with pytest.raises(
        MLPlatValidationFailed, match=rf"metric 'accuracy' is missing on {name} version 2 \(run {run_id}\)"
    ):
        promote(registry, name, tmp_path)
    name = new_model(registry, {"roc_auc": 0.8}, {"roc_auc": 0.9, "accuracy": 0.7}, champion=1, challenger=2)
    run_id = registry.client.get_model_version(name, "1").run_id
    with pytest.raises(
        MLPlatValidationFailed, match=rf"metric 'accuracy' is missing on {name} version 1 \(run {run_id}\)"
    ):
        promote(registry, name, tmp_path)
    assert tags(registry, name, 2) == {} and aliases(registry, name)["champion"] == "1"
    assert not list(tmp_path.iterdir())


def test_a_missing_model_alias_or_version_is_a_clear_error(registry, tmp_path):
    with pytest.raises(MLPlatConfigError, match="registered model 'no_such_model' not found"):
        promote(registry, "no_such_model", tmp_path)
    name = new_model(registry, {"roc_auc": 0.8, "accuracy": 0.7}, champion=1)
    with pytest.raises(
        MLPlatConfigError, match=r"alias 'challenger' is not set on registered model .*'champion': '1'"
    ):
        promote(registry, name, tmp_path)
    with pytest.raises(MLPlatConfigError, match=f"registered model '{name}' has no version 7"):
        promote(registry, name, tmp_path, challenger=7)
    assert not [m for m in registry.client.search_registered_models(f"name LIKE '{name}%'") if m.name != name]


def test_racing_promotions_leave_one_champion_and_a_consistent_previous_champion(registry, tmp_path):
    name = new_model(
        registry,
        {"roc_auc": 0.80, "accuracy": 0.70},
        {"roc_auc": 0.85, "accuracy": 0.70},
        {"roc_auc": 0.90, "accuracy": 0.70},
        champion=1,
    )
    results, errors, start = {}, [], threading.Barrier(2)

    def race(version: int) -> None:
        start.wait()
        try:
            results[version] = promote(
                MLflowHook(registry.conn_id), name, tmp_path, challenger=version, by=f"d/r{version}/p"
            )
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=race, args=(v,)) for v in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    final = aliases(registry, name)
    assert final["champion"] == "3"  # v3 beats both others, whatever the order
    # the champion's decision compared it with exactly the version now kept for rollback
    assert final["previous-champion"] == tags(registry, name, 3)["compared_to"] == results[3]["compared_to"]
    if results[2]["decision"] == "promoted":  # v2 went first: v3 replaced v2, not the long-gone v1
        assert (results[2]["compared_to"], final["previous-champion"]) == ("1", "2")
    else:  # v3 went first: v2 was compared with v3
        assert results[2]["compared_to"] == "3" and final["previous-champion"] == "1"
    assert [m.name for m in registry.client.search_registered_models(f"name LIKE '{name}%'")] == [name]
