"""EvidentlyDriftOperator's checks before any read, its Prometheus samples, and the verdict of a real report."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.kserve_target import deployment_name
from airflow_provider_mlplat.operators.evidently import DRIFT_EVENTS, EvidentlyDriftOperator, drift_samples

START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)


def check(**kwargs) -> tuple[datetime, datetime]:
    operator = EvidentlyDriftOperator(task_id="drift", **{"model_name": "m", **kwargs})
    operator._validate()
    return operator._window({"data_interval_start": START, "data_interval_end": END})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drift_share": 0}, r"drift_share=0 must be a number in \(0, 1\]"),
        ({"drift_share": "half"}, r"drift_share='half' must be a number"),
        ({"threshold": -0.1}, r"threshold=-0.1 must be a number in \[0, inf\]"),
        ({"per_column_threshold": {"conv_rate": math.nan}}, r"per_column_threshold\['conv_rate'\]=nan"),
        ({"min_rows": 0}, r"min_rows=0 must be a whole number >= 1"),
        ({"model_version": "champion"}, r"model_version='champion' must be a version number"),
        (
            {"model_name": ""},
            r"model_name='': name the registered MLflow model whose served traffic is checked",
        ),
        ({"columns": "conv_rate"}, r"columns='conv_rate' must be a non-empty list of column names"),
        ({"columns": []}, r"columns=\[\] must be a non-empty list"),
        ({"method": 3}, r"method=3 must be a method name"),
        ({"per_column_method": ["ks"]}, r"per_column_method=\['ks'\] must be a mapping"),
        ({"per_column_threshold": [0.1]}, r"per_column_threshold=\[0.1\] must be a mapping"),
        ({"window_start": "yesterday"}, r"window_start='yesterday' is not a time: use ISO 8601"),
        (
            {"window_start": "2026-01-02T00:00:00+00:00"},
            r"window_start 2026-01-02T00:00:00\+00:00 is not before",
        ),
    ],
)
def test_bad_settings_are_named_with_what_is_valid(kwargs, message):
    with pytest.raises(MLPlatConfigError, match=message):
        check(**kwargs)


def test_model_name_has_no_demo_default():
    with pytest.raises(TypeError, match="model_name"):
        EvidentlyDriftOperator(task_id="drift")


def test_window_defaults_to_the_data_interval_and_templated_bounds_override_it():
    assert check() == (START, END)
    # a naive bound is UTC
    assert check(window_start="2026-01-01T06:00:00") == (datetime(2026, 1, 1, 6, tzinfo=UTC), END)
    operator = EvidentlyDriftOperator(task_id="drift", model_name="m")
    with pytest.raises(
        MLPlatConfigError, match="the run has no data interval; pass window_start and window_end"
    ):
        operator._window({"data_interval_start": None, "data_interval_end": None})


def test_the_drift_alias_is_an_outlet_and_the_deployment_is_named_like_the_rollout():
    assert DRIFT_EVENTS in EvidentlyDriftOperator(task_id="drift", model_name="m").outlets
    assert deployment_name("trip_completion") == "trip-completion"
    assert deployment_name("trip_completion", "tc-canary") == "tc-canary"


def test_samples_carry_share_verdict_and_a_score_per_feature():
    summary = {
        "model_name": "m",
        "deployment": "m-d",
        "drift_share": 0.25,
        "detected": False,
        "scores": {"a": 0.01, "b": None},
    }
    samples = {(s.name, s.labels.get("feature")): s for s in drift_samples(summary)}
    assert samples["mlplat_drift_share", None].value == 0.25
    assert samples["mlplat_drift_detected", None].value == 0.0
    assert samples["mlplat_drift_score", "a"].labels == {"model": "m", "deployment": "m-d", "feature": "a"}
    assert math.isnan(samples["mlplat_drift_score", "b"].value)  # no score: NaN, not a fake 0


def test_verdict_of_a_real_report_follows_each_columns_method():
    import numpy as np
    import pandas as pd

    from airflow_provider_mlplat.hooks.evidently import run_drift

    rng = np.random.default_rng(1)
    reference = pd.DataFrame(
        {"a": rng.normal(size=600), "b": rng.normal(size=600), "c": rng.normal(size=600)}
    )
    current = pd.DataFrame(
        {"a": rng.normal(2, size=400), "b": rng.normal(size=400), "c": rng.normal(size=400)}
    )
    result = run_drift(
        reference,
        current,
        ["a", "b", "c"],
        drift_share=0.3,
        per_column_method={"b": "wasserstein"},
        per_column_threshold={"b": 0.5},
    )
    assert result.drifted == ["a"] and result.detected  # 1 of 3 >= 0.3
    assert result.share == pytest.approx(1 / 3)
    assert (result.methods["a"], result.methods["b"]) == ("K-S p_value", "wasserstein")
    assert result.scores["a"] < result.thresholds["a"]  # drift: a p-value below its threshold
    assert result.scores["b"] < result.thresholds["b"] == 0.5  # no drift: a distance below its threshold
    assert result.scores["b"] < result.thresholds["b"] == 0.5  # no drift: a distance below its threshold
    assert not run_drift(reference, current, ["b", "c"]).detected
    with pytest.raises(MLPlatConfigError, match="No stattest found of name nope"):
        run_drift(reference, current, ["a"], method="nope")
