"""Promotion gates and decisions, evidence verdicts, and the MLflow operators' parse-time contract."""

from __future__ import annotations

import subprocess
import sys

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.promotion import PromotionGates, decide, evidence_verdict

GATES = PromotionGates.build(
    "roc_auc",
    thresholds={"roc_auc": 0.8, "log_loss": 0.5},
    min_improvement=0.01,
    secondary_metrics=["accuracy", "log_loss"],
    max_regression={"accuracy": 0.02, "log_loss": 0.05},
)
CHAMPION = {"roc_auc": 0.85, "accuracy": 0.80, "log_loss": 0.40}


def failed(outcome):
    return [(c["gate"], c.get("metric", c.get("name"))) for c in outcome["checks"] if not c["passed"]]


def test_first_model_is_judged_by_thresholds_only():
    assert (
        decide(GATES, {"roc_auc": 0.81, "accuracy": 0.1, "log_loss": 0.49}, None, {})["decision"]
        == "promoted"
    )
    outcome = decide(GATES, {"roc_auc": 0.79, "accuracy": 0.9, "log_loss": 0.51}, None, {})
    assert outcome["decision"] == "rejected"
    assert failed(outcome) == [("threshold", "roc_auc"), ("threshold", "log_loss")]
    assert outcome["reasons"] == ["roc_auc 0.79 >= 0.8 failed", "log_loss 0.51 <= 0.5 failed"]


@pytest.mark.parametrize(
    ("challenger", "expected_failures"),
    [
        ({"roc_auc": 0.87, "accuracy": 0.79, "log_loss": 0.44}, []),  # better, regressions within limits
        ({"roc_auc": 0.855, "accuracy": 0.80, "log_loss": 0.40}, [("improvement", "roc_auc")]),  # < min
        ({"roc_auc": 0.85, "accuracy": 0.80, "log_loss": 0.40}, [("improvement", "roc_auc")]),  # equal
        ({"roc_auc": 0.84, "accuracy": 0.80, "log_loss": 0.40}, [("improvement", "roc_auc")]),  # worse
        ({"roc_auc": 0.90, "accuracy": 0.77, "log_loss": 0.40}, [("regression", "accuracy")]),
        ({"roc_auc": 0.90, "accuracy": 0.80, "log_loss": 0.46}, [("regression", "log_loss")]),  # lower=better
    ],
)
def test_comparison_with_the_champion(challenger, expected_failures):
    outcome = decide(GATES, challenger, CHAMPION, {})
    assert failed(outcome) == expected_failures
    assert outcome["decision"] == ("rejected" if expected_failures else "promoted")


def test_regression_at_exactly_the_limit_passes_despite_float_noise():
    gates = PromotionGates.build("roc_auc", secondary_metrics="accuracy", max_regression=0.01)
    outcome = decide(gates, {"roc_auc": 0.9, "accuracy": 0.79}, {"roc_auc": 0.8, "accuracy": 0.8}, {})
    assert outcome["decision"] == "promoted", outcome["reasons"]


@pytest.mark.parametrize(
    ("value", "passed"),
    [
        (True, True),
        (False, False),
        ("passed", True),
        ("drift_detected", False),
        ({"success": True, "statistics": {}}, True),  # Great Expectations checkpoint result
        ({"success": False}, False),
        ({"drift_detected": True, "share": 0.4}, False),
        ({"dataset_drift": False}, True),  # Evidently
        ({"verdict": "no_drift"}, True),
        ({"decision": "rejected"}, False),
        (None, False),  # the upstream task left nothing
    ],
)
def test_evidence_shapes(value, passed):
    assert evidence_verdict("up", value)["passed"] is passed


def test_failed_evidence_rejects_a_model_that_passed_every_metric_gate():
    challenger = {"roc_auc": 0.9, "accuracy": 0.85, "log_loss": 0.3}
    outcome = decide(
        GATES, challenger, CHAMPION, {"gx": {"success": True}, "drift": {"drift_detected": True}}
    )
    assert outcome["decision"] == "rejected"
    assert failed(outcome) == [("evidence", "drift")]


def test_unreadable_evidence_is_a_config_error_naming_it():
    with pytest.raises(MLPlatConfigError, match=r"evidence 'gx' = \{'rows': 3\} is not a verdict"):
        evidence_verdict("gx", {"rows": 3})
    with pytest.raises(MLPlatConfigError, match="evidence 'gx' = 'maybe'"):
        evidence_verdict("gx", "maybe")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"primary_metric": ""}, "primary_metric must be a metric name"),
        ({"thresholds": {"roc_auc": "high"}}, r"thresholds\['roc_auc'\] must be a number, got 'high'"),
        ({"thresholds": [0.8]}, "thresholds must map metric names to numbers"),
        ({"min_improvement": -0.1}, "min_improvement must be a number >= 0"),
        ({"secondary_metrics": [1]}, "secondary_metrics must be a list of metric names"),
        ({"max_regression": {"f1": 0.1}}, r"max_regression names \['f1'\], which are not secondary_metrics"),
        ({"max_regression": True}, "max_regression must be a number"),
    ],
)
def test_gate_settings_are_validated_with_the_bad_value_named(kwargs, message):
    args = {"primary_metric": "roc_auc", **kwargs}
    with pytest.raises(MLPlatConfigError, match=message):
        PromotionGates.build(**args)


def test_gate_settings_accept_rendered_strings_and_per_metric_regression():
    gates = PromotionGates.build(
        "roc_auc", {"roc_auc": "0.8"}, "0.01", "accuracy, log_loss", {"accuracy": 0.1}
    )
    assert gates.thresholds == {"roc_auc": 0.8}
    assert gates.min_improvement == 0.01
    assert gates.secondary_metrics == ("accuracy", "log_loss")
    assert gates.max_regression == {"accuracy": 0.1, "log_loss": 0.0}
    assert gates.challenger_metrics == ["roc_auc", "accuracy", "log_loss"]


def test_operators_are_built_without_io_or_heavy_imports():
    from airflow_provider_mlplat.operators.mlflow import (
        CHAMPION_MOVES,
        MLflowEvaluateOperator,
        MLflowPromoteModelOperator,
    )
    from airflow_provider_mlplat.sensors.mlflow import MLflowModelVersionSensor

    promote = MLflowPromoteModelOperator(
        task_id="p", model_name="{{ params.m }}", thresholds="{{ params.t }}", mlflow_conn_id="nowhere"
    )
    assert promote.thresholds == "{{ params.t }}"  # templated fields are assigned verbatim
    assert CHAMPION_MOVES in promote.outlets
    evaluate = MLflowEvaluateOperator(
        task_id="e", model_name="m", holdout_uri="{{ x }}", mlflow_conn_id="nowhere"
    )
    assert evaluate.holdout_uri == "{{ x }}"
    sensor = MLflowModelVersionSensor(
        task_id="s", model_name="m", newer_than="{{ y }}", mlflow_conn_id="nowhere"
    )
    assert sensor.deferrable is True
    assert {link.name for link in promote.operator_extra_links} == {"MLflow run", "MLflow model version"}


def test_importing_the_mlflow_modules_imports_no_heavy_sdk():
    code = (
        "import sys, airflow_provider_mlplat.operators.mlflow, airflow_provider_mlplat.sensors.mlflow, "
        "airflow_provider_mlplat.triggers.mlflow, airflow_provider_mlplat.promotion; "
        "print(sorted({'mlflow', 'pandas', 'sklearn', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_triggers_serialize_to_their_kwargs():
    from airflow_provider_mlplat.triggers.mlflow import MLflowAliasChangedTrigger, MLflowModelVersionTrigger

    trigger = MLflowAliasChangedTrigger("trip_completion", poll_interval=5, mlflow_conn_id="c")
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_mlplat.triggers.mlflow.MLflowAliasChangedTrigger"
    assert kwargs == {
        "model_name": "trip_completion",
        "alias": "champion",
        "poll_interval": 5,
        "mlflow_conn_id": "c",
    }
    assert type(MLflowAliasChangedTrigger(**kwargs).serialize()[1]) is dict
    path, kwargs = MLflowModelVersionTrigger("m", "challenger", newer_than=3).serialize()
    assert MLflowModelVersionTrigger(**kwargs).serialize() == (path, kwargs)
