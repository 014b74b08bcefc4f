"""Evidently 0.7 data drift: run the data drift preset on two frames and read its verdict."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from evidently.core.report import Snapshot


@dataclass(frozen=True)
class DriftResult:
    """
    What the data drift preset found.

    :param share: share of the columns that drifted.
    :param detected: whether ``share`` reached the dataset drift threshold (``drift_share``).
    :param scores: drift score per column (a p-value or a distance, by the column's method).
    :param drifted: columns whose score crossed their threshold.
    :param methods: the drift method Evidently used per column.
    :param thresholds: the threshold per column.
    :param snapshot: the Evidently snapshot (HTML with ``get_html_str``, JSON with ``json``).
    """

    share: float
    detected: bool
    scores: dict[str, float | None]
    drifted: list[str]
    methods: dict[str, str]
    thresholds: dict[str, float]
    snapshot: Snapshot


def data_definition(frame: pd.DataFrame, columns: Sequence[str]) -> Any:
    """
    An Evidently ``DataDefinition``: numeric columns as numerical, the others as categorical.

    :param frame: data holding the columns (the reference).
    :param columns: the columns to compare.
    """
    import pandas as pd
    from evidently import DataDefinition

    numeric = [
        c
        for c in columns
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
    ]
    return DataDefinition(
        numerical_columns=numeric, categorical_columns=[c for c in columns if c not in numeric]
    )


def run_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    drift_share: float = 0.5,
    method: str | None = None,
    threshold: float | None = None,
    per_column_method: Mapping[str, str] | None = None,
    per_column_threshold: Mapping[str, float] | None = None,
) -> DriftResult:
    """
    Compare ``current`` with ``reference`` on ``columns`` with Evidently's ``DataDriftPreset``.

    :param reference: the reference data (the model's training set).
    :param current: the data to check (served traffic).
    :param columns: the columns to compare (present in both frames).
    :param drift_share: share of drifted columns from which the dataset counts as drifted.
    :param method: drift method of every column (Evidently's choice per column type when None).
    :param threshold: drift threshold of every column (the method's default when None).
    :param per_column_method: method per column, over ``method``.
    :param per_column_threshold: threshold per column, over ``threshold``.
    """
    from evidently import Dataset, Report
    from evidently.legacy.calculations.stattests.registry import StatTestNotFoundError
    from evidently.presets import DataDriftPreset

    from airflow_provider_mlplat.exceptions import MLPlatConfigError

    columns = list(columns)
    definition = data_definition(reference, columns)
    preset = DataDriftPreset(
        columns=columns,
        drift_share=drift_share,
        method=method,
        threshold=threshold,
        per_column_method=dict(per_column_method) if per_column_method else None,
        per_column_threshold=dict(per_column_threshold) if per_column_threshold else None,
    )
    try:
        snapshot = Report([preset], include_tests=True).run(
            current_data=Dataset.from_pandas(current[columns], data_definition=definition),
            reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
        )
    except StatTestNotFoundError as err:  # an unknown method name, or one unfit for a column's type
        raise MLPlatConfigError(f"drift method: {err}") from None
    return read_verdict(snapshot, drift_share)


def read_verdict(snapshot: Snapshot, drift_share: float) -> DriftResult:
    """
    The drift verdict in a snapshot of the data drift preset (run with ``include_tests=True``).

    :param snapshot: the snapshot.
    :param drift_share: the dataset drift threshold the preset ran with.
    """
    results = snapshot.dict()
    share, scores, methods, thresholds = 0.0, {}, {}, {}
    for metric in results["metrics"]:
        config = metric.get("config") or {}
        kind = config.get("type", "")
        if kind.endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif kind.endswith(":ValueDrift"):
            column, score = config["column"], float(metric["value"])
            scores[column] = score if math.isfinite(score) else None
            methods[column], thresholds[column] = config["method"], float(config["threshold"])
    # one "drift" test per column; it fails when the column drifted (p-value below, distance above)
    drifted = sorted(
        test["metric_config"]["params"]["column"]
        for test in results["tests"]
        if test["id"] == "drift" and test["status"] == "FAIL"
    )
    return DriftResult(
        share=share,
        # Evidently's dataset drift rule: the drifted share reaches drift_share
        detected=bool(scores) and share >= drift_share,
        scores=scores,
        drifted=drifted,
        methods=methods,
        thresholds=thresholds,
        snapshot=snapshot,
    )
