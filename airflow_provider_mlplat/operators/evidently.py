"""Evidently operator: data drift of a deployment's served traffic against the model's training set."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator

from airflow_provider_mlplat.assets import drift_asset, kserve_asset
from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.extras import require_extra
from airflow_provider_mlplat.hooks.mlflow import DRIFT_TAG, TRAINING_SET_TAG
from airflow_provider_mlplat.lineage import LineageDataset, LineageMixin
from airflow_provider_mlplat.links.evidently import EvidentlyReportLink
from airflow_provider_mlplat.times import as_utc

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_provider_mlplat.hooks.evidently import DriftResult
    from airflow_provider_mlplat.hooks.prometheus import PrometheusHook, Sample

#: the AssetAlias a drift check adds ``drift://models/<name>`` events to, only when drift was detected
DRIFT_EVENTS = AssetAlias("mlplat-drift")
#: columns that are never features: ids, timestamps, the label, and the inference log's own fields
NON_FEATURES = ("driver_id", "event_timestamp", "created", "completed")
#: the Pushgateway job the drift metrics are grouped under (with the model name)
PUSH_JOB = "mlplat_drift"


def drift_samples(summary: Mapping[str, Any]) -> list[Sample]:
    """
    The gauges a drift check pushes: ``mlplat_drift_share``, ``mlplat_drift_detected`` and one
    ``mlplat_drift_score`` per feature, labelled with model and deployment (and feature).

    :param summary: the operator's summary (``model_name``, ``deployment``, ``drift_share``,
        ``detected``, ``scores``).
    """
    from airflow_provider_mlplat.hooks.prometheus import Sample

    labels = {"model": summary["model_name"], "deployment": summary["deployment"]}
    return [
        Sample("mlplat_drift_share", "Share of a model's features that drifted", summary["drift_share"], labels),
        Sample("mlplat_drift_detected", "1 when dataset drift was detected", float(summary["detected"]), labels),
        *(
            Sample(
                "mlplat_drift_score",
                "Drift score per feature (p-value or distance, by the feature's method)",
                math.nan if score is None else score,
                {**labels, "feature": feature},
            )
            for feature, score in summary["scores"].items()
        ),
    ]  # fmt: skip


#: what a drift check's asset event, its lineage input (served traffic) and output (verdict) carry
EVENT_FACTS = ("model_name", "version", "deployment", "window_start", "window_end", "drift_share",
               "drifted_features", "report_uri")  # fmt: skip
SERVED_FACTS = ("window_start", "window_end", "rows_current", "versions_served")
VERDICT_FACTS = ("drift_share", "detected", "drifted_features", "report_uri")
#: the version's drift tag, which the Models view reads
DRIFT_TAG_FACTS = ("window_start", "window_end", "rows_current", "drift_share", "drift_share_threshold",
                   "detected", "drifted_features", "report_uri")  # fmt: skip


def _pick(summary: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: summary[k] for k in keys}


class EvidentlyDriftOperator(LineageMixin, BaseOperator):
    """
    Check a deployment's served traffic for data drift against the training set of the model
    version that served it, with Evidently's ``DataDriftPreset``.

    Current data is the deployment's inference log in the window (the data interval by default;
    successful requests of ``model_name`` only). The reference is the training set of the version
    that served most of those rows (or ``model_version``), found through the version's
    ``mlplat.training_set.uri`` tag in MLflow. The HTML report, the JSON snapshot and a summary go
    to artifact storage (the task's "Drift report" link opens the report); the drift share, each
    feature's drift score and the verdict are pushed to the Pushgateway of the Prometheus
    connection (``mlplat_drift_share``, ``mlplat_drift_score``, ``mlplat_drift_detected``, job
    ``mlplat_drift``, grouped by model). When drift is detected, and only then, the
    ``drift://models/<name>`` Asset event is emitted (through the ``mlplat-drift`` alias) with the
    model, version, window, drifted features and share. Fewer than ``min_rows`` served rows skip
    the task: too little evidence for a verdict is not drift.

    :param model_name: registered MLflow model whose deployment is checked (required).
    :param model_version: version whose training set is the reference (default: the version that
        served most rows in the window).
    :param deployment_name: deployment (InferenceService) name (default: the model name with dashes,
        as the rollout operator names it).
    :param window_start: first time included (default: the data interval start).
    :param window_end: first time excluded (default: the data interval end).
    :param columns: features to compare (default: the columns both frames have, except ids,
        timestamps, label, prediction and the inference log's fields).
    :param drift_share: share of drifted features from which the dataset counts as drifted (0-1].
    :param method: Evidently drift method of every feature, e.g. ``ks``, ``wasserstein``, ``psi``
        (default: Evidently's choice by column type and size).
    :param threshold: drift threshold of every feature (default: the method's).
    :param per_column_method: drift method per feature, over ``method``.
    :param per_column_threshold: drift threshold per feature, over ``threshold``.
    :param min_rows: fewer served rows in the window skip the task.
    :param kserve_conn_id: ``kserve`` connection whose ``inference_log`` extra names the log (folder or URL).
    :param mlflow_conn_id: ``mlflow`` connection.
    :param prometheus_conn_id: ``prometheus`` connection whose ``pushgateway_url`` extra receives the
        metrics (None, or no such extra: no push).
    """

    template_fields: Sequence[str] = (
        "model_name",
        "model_version",
        "deployment_name",
        "window_start",
        "window_end",
        "columns",
        "drift_share",
        "method",
        "threshold",
        "per_column_method",
        "per_column_threshold",
        "min_rows",
    )
    operator_extra_links = (EvidentlyReportLink(),)

    def __init__(
        self,
        *,
        model_name: str,
        model_version: str | int | None = None,
        deployment_name: str | None = None,
        window_start: str | datetime | None = None,
        window_end: str | datetime | None = None,
        columns: Sequence[str] | None = None,
        drift_share: float = 0.5,
        method: str | None = None,
        threshold: float | None = None,
        per_column_method: Mapping[str, str] | None = None,
        per_column_threshold: Mapping[str, float] | None = None,
        min_rows: int = 200,
        kserve_conn_id: str = "kserve_default",
        mlflow_conn_id: str = "mlflow_default",
        prometheus_conn_id: str | None = "prometheus_default",
        **kwargs: Any,
    ) -> None:
        kwargs["outlets"] = [*(kwargs.get("outlets") or []), DRIFT_EVENTS]
        super().__init__(**kwargs)
        self.model_name = model_name
        self.model_version = model_version
        self.deployment_name = deployment_name
        self.window_start = window_start
        self.window_end = window_end
        self.columns = columns
        self.drift_share = drift_share
        self.method = method
        self.threshold = threshold
        self.per_column_method = per_column_method
        self.per_column_threshold = per_column_threshold
        self.min_rows = min_rows
        self.kserve_conn_id = kserve_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.prometheus_conn_id = prometheus_conn_id

    # -- validation (no reads, no writes) --------------------------------------------------------

    def _window(self, context: Context) -> tuple[datetime, datetime]:
        start = self.window_start if self.window_start is not None else context.get("data_interval_start")
        end = self.window_end if self.window_end is not None else context.get("data_interval_end")
        if start is None or end is None:
            raise MLPlatConfigError(
                "no window to check: the run has no data interval; pass window_start and window_end"
            )
        start, end = as_utc("window_start", start), as_utc("window_end", end)
        if start >= end:
            raise MLPlatConfigError(
                f"window_start {start.isoformat()} is not before window_end {end.isoformat()}"
            )
        return start, end

    def _validate(self) -> None:
        def number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value > high or value < low or (low_open and value == low):
                bounds = f"{'(' if low_open else '['}{low}, {high}]"
                raise MLPlatConfigError(f"{name}={value!r} must be a number in {bounds}")

        if not isinstance(self.model_name, str) or not self.model_name:
            raise MLPlatConfigError(
                f"model_name={self.model_name!r}: name the registered MLflow model whose served traffic is checked"
            )

        for name in ("method", "per_column_method", "per_column_threshold"):
            value = getattr(self, name)
            expected = str if name == "method" else Mapping
            if value is not None and not isinstance(value, expected):
                raise MLPlatConfigError(
                    f"{name}={value!r} must be {'a method name' if name == 'method' else 'a mapping'}"
                )
        number("drift_share", self.drift_share, 0, 1, low_open=True)
        if self.threshold is not None:
            number("threshold", self.threshold, 0, math.inf)
        for column, value in (self.per_column_threshold or {}).items():
            number(f"per_column_threshold[{column!r}]", value, 0, math.inf)
        if not isinstance(self.min_rows, int) or isinstance(self.min_rows, bool) or self.min_rows < 1:
            raise MLPlatConfigError(f"min_rows={self.min_rows!r} must be a whole number >= 1")
        if self.model_version is not None and not str(self.model_version).isdigit():
            raise MLPlatConfigError(f"model_version={self.model_version!r} must be a version number, e.g. 3")
        if self.columns is not None and (
            isinstance(self.columns, str)
            or not self.columns
            or not all(isinstance(c, str) and c for c in self.columns)
        ):
            raise MLPlatConfigError(f"columns={self.columns!r} must be a non-empty list of column names")

    def _features(self, reference: pd.DataFrame, current: pd.DataFrame, training_set: str) -> list[str]:
        from airflow_provider_mlplat.inference_log import RECORD_FIELDS

        if self.columns is None:
            excluded = {*RECORD_FIELDS, *NON_FEATURES}
            features = [c for c in reference.columns if c in current.columns and c not in excluded]
            if not features:
                raise MLPlatConfigError(
                    f"the training set {training_set} and the inference log share no feature column: "
                    f"training set {list(reference.columns)}, inference log {list(current.columns)}"
                )
            return features
        missing = {
            where: [c for c in self.columns if c not in frame.columns]
            for where, frame in (("training set", reference), ("inference log", current))
        }
        if any(missing.values()):
            details = "; ".join(
                f"the {where} lacks {cols} (it has {list(frame.columns)})"
                for (where, cols), frame in zip(missing.items(), (reference, current), strict=True)
                if cols
            )
            raise MLPlatConfigError(f"unknown column(s) in columns={list(self.columns)}: {details}")
        return list(self.columns)

    # -- execution -------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        require_extra("evidently", type(self).__name__)

        from airflow_provider_mlplat.artifacts import read_dataframe
        from airflow_provider_mlplat.hooks.evidently import run_drift
        from airflow_provider_mlplat.hooks.kserve import KServeHook
        from airflow_provider_mlplat.hooks.kserve_target import deployment_name
        from airflow_provider_mlplat.hooks.mlflow import MLflowHook
        from airflow_provider_mlplat.inference_log import masked, read_inference_log

        self._validate()
        start, end = self._window(context)
        asset = drift_asset(self.model_name)  # validates the name before anything is read
        deployment = deployment_name(self.model_name, self.deployment_name)
        kserve = KServeHook(self.kserve_conn_id)
        log_root, namespace = kserve.inference_log, kserve.namespace
        prometheus = self._pushgateway()

        current = read_inference_log(log_root, deployment, start, end)
        current = current[(current["status_code"] == 200) & (current["model_name"] == self.model_name)]
        served = current["model_version"].astype(str).value_counts()
        window = f"[{start.isoformat()}, {end.isoformat()})"
        if len(current) < self.min_rows:
            raise AirflowSkipException(
                f"{len(current)} served rows of {self.model_name} on deployment {deployment!r} in {window} "
                f"(log {masked(log_root)}), fewer than min_rows={self.min_rows}: too little traffic for a drift verdict"
            )
        # the version that served most rows; on a tie the newest
        version = str(self.model_version or max(served.index, key=lambda v: (served[v], int(v))))

        mlflow = MLflowHook(self.mlflow_conn_id)
        found = mlflow.model_version(self.model_name, version)
        training_set = (found.tags or {}).get(TRAINING_SET_TAG)
        if not training_set:
            raise MLPlatConfigError(
                f"{self.model_name} version {version} has no {TRAINING_SET_TAG!r} tag naming its training set "
                f"(set by include/training/train.py); its tags: {sorted(found.tags or {})}"
            )
        reference = read_dataframe(training_set)
        features = self._features(reference, current, training_set)
        self.log.info(
            "drift of %s v%s on %s in %s: %d served rows (by version %s) vs %d training rows, features %s",
            self.model_name, version, deployment, window, len(current), served.to_dict(), len(reference), features,
        )  # fmt: skip
        result = run_drift(
            reference,
            current,
            features,
            drift_share=float(self.drift_share),
            method=self.method,
            threshold=self.threshold,
            per_column_method=self.per_column_method,
            per_column_threshold=self.per_column_threshold,
        )
        summary = {
            "model_name": self.model_name,
            "version": version,
            "deployment": deployment,
            "window_start": start.isoformat(),
            "window_end": end.isoformat(),
            "rows_reference": len(reference),
            "rows_current": len(current),
            "versions_served": {str(v): int(n) for v, n in served.items()},
            "training_set_uri": training_set,
            "features": features,
            "drift_share": result.share,
            "drift_share_threshold": float(self.drift_share),
            "detected": result.detected,
            "drifted_features": result.drifted,
            "scores": result.scores,
            "methods": result.methods,
            "thresholds": result.thresholds,
        }
        summary.update(self._save(context, result, summary))
        summary["pushed_to"] = (
            prometheus.push(PUSH_JOB, {"model": self.model_name}, drift_samples(summary))
            if prometheus
            else None
        )
        self.log.info(
            "drift %s: share %.3f (threshold %s), drifted %s, report %s",
            "DETECTED" if result.detected else "not detected",
            result.share, self.drift_share, result.drifted, summary["report_uri"],
        )  # fmt: skip
        mlflow.set_version_tags(
            self.model_name, version, {DRIFT_TAG: json.dumps(_pick(summary, DRIFT_TAG_FACTS), default=str)}
        )
        self.record_lineage(
            inputs=[
                LineageDataset(
                    kserve_asset(namespace, deployment).uri, version, _pick(summary, SERVED_FACTS)
                ),
                LineageDataset(training_set, facts={"rows": summary["rows_reference"]}),
            ],
            outputs=[LineageDataset(asset.uri, version, _pick(summary, VERDICT_FACTS))],
        )
        if result.detected:
            context["outlet_events"][DRIFT_EVENTS].add(asset, extra=_pick(summary, EVENT_FACTS))
        return summary

    def _save(self, context: Context, result: DriftResult, summary: dict[str, Any]) -> dict[str, str]:
        """Write the HTML report, the JSON snapshot and the summary; link the report."""
        from airflow_provider_mlplat.artifacts import task_artifact_dir, write, write_json

        folder = task_artifact_dir(context, "drift")
        uris = {
            "report_uri": write(folder / "report.html", result.snapshot.get_html_str(as_iframe=False)),
            "snapshot_uri": write(folder / "snapshot.json", result.snapshot.json()),
        }
        write_json(folder / "summary.json", {**summary, **uris})
        EvidentlyReportLink.persist(context, uris["report_uri"])
        return uris

    def _pushgateway(self) -> PrometheusHook | None:
        """The Prometheus hook to push with (its connection read now, before any write); None: no push."""
        from airflow_provider_mlplat.hooks.prometheus import PrometheusHook

        if self.prometheus_conn_id is None:
            self.log.info("no prometheus_conn_id: drift metrics will not be pushed")
            return None
        hook = PrometheusHook(self.prometheus_conn_id)
        if hook.pushgateway_url is None:
            self.log.info(
                "connection %r has no pushgateway_url: drift metrics will not be pushed", hook.conn_id
            )
            return None
        return hook
