"""MLflow operators: evaluate a model version on a holdout set, promote a challenger to champion."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_mlplat.assets import mlflow_model_asset
from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatValidationFailed
from airflow_provider_mlplat.hooks.mlflow import (
    EVALUATION_RUN_TAG,
    TRAINING_SET_HASH_TAG,
    TRAINING_SET_TAG,
    TRAINING_SOURCE_TAG,
    MLflowHook,
)
from airflow_provider_mlplat.lineage import LineageDataset, LineageMixin
from airflow_provider_mlplat.links.mlflow import MLflowModelVersionLink, MLflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context

#: the AssetAlias a promotion task adds ``mlflow://models/<name>`` events to, only when the champion moved
CHAMPION_MOVES = AssetAlias("mlflow-champion-moves")
LOG_TO = ("evaluation_run", "model_run")
MODEL_TYPES = ("classifier", "regressor")


def _task_key(context: Context) -> str:
    ti = context["ti"]
    key = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}"
    return key if getattr(ti, "map_index", -1) < 0 else f"{key}/{ti.map_index}"


def _persist_links(
    context: Context, hook: MLflowHook, name: str, version: str, experiment_id: str, run_id: str
):
    MLflowModelVersionLink.persist(context, hook.model_version_url(name, version))
    MLflowRunLink.persist(context, hook.run_url(experiment_id, run_id))


class MLflowEvaluateOperator(BaseOperator):
    """
    Evaluate a registered model version on a holdout set with ``mlflow.models.evaluate``.

    Metrics go to an evaluation run linked to the version (tags ``mlplat.evaluated_model`` on the run,
    ``mlplat.evaluation_run_id`` on the version, so the promotion gate reads them) or to the run that
    produced the version. The run is derived from the task instance: a retry reuses it, and a
    finished evaluation is returned as it is. Returns ``{"model_name", "version", "model_uri",
    "run_id", "metrics", "holdout_uri", "rows"}``.

    :param model_name: registered model name.
    :param holdout_uri: parquet file with the feature columns and the label (path or object storage URI).
    :param model_version: version number or alias to evaluate.
    :param label_column: the label column.
    :param feature_columns: columns the model takes (default: every column except the label and
        ``exclude_columns``).
    :param exclude_columns: columns that are not features (entity keys, timestamps).
    :param model_type: ``classifier`` or ``regressor`` (MLflow's default evaluator).
    :param log_to: ``evaluation_run`` (a linked run) or ``model_run`` (the version's own run).
    :param rename_metrics: metric names to also log under another name (MLflow's ``accuracy_score``
        is ``accuracy`` in this platform).
    :param evaluator_config: extra ``evaluator_config`` for MLflow's default evaluator.
    :param skip_when_missing: skip (not fail) when ``model_version`` names an alias that is not set,
        e.g. evaluating the champion on the challenger's holdout before there is a champion.
    :param mlflow_conn_id: Airflow connection of type ``mlflow``.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "holdout_uri",
        "model_version",
        "label_column",
        "feature_columns",
        "exclude_columns",
        "log_to",
    )
    operator_extra_links = (MLflowRunLink(), MLflowModelVersionLink())

    def __init__(
        self,
        *,
        model_name: str,
        holdout_uri: str,
        model_version: str | int = "challenger",
        label_column: str = "completed",
        feature_columns: Sequence[str] | None = None,
        exclude_columns: Sequence[str] = ("driver_id", "event_timestamp"),
        model_type: str = "classifier",
        log_to: str = "evaluation_run",
        rename_metrics: Mapping[str, str] | None = None,
        evaluator_config: Mapping[str, Any] | None = None,
        skip_when_missing: bool = False,
        mlflow_conn_id: str = MLflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.holdout_uri = holdout_uri
        self.model_version = model_version
        self.label_column = label_column
        self.feature_columns = feature_columns
        self.exclude_columns = exclude_columns
        self.model_type = model_type
        self.log_to = log_to
        self.rename_metrics = {"accuracy_score": "accuracy"} if rename_metrics is None else rename_metrics
        self.evaluator_config = evaluator_config
        self.skip_when_missing = skip_when_missing
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        if self.log_to not in LOG_TO:
            raise MLPlatConfigError(f"log_to={self.log_to!r} is not one of {LOG_TO}")
        if self.model_type not in MODEL_TYPES:
            raise MLPlatConfigError(f"model_type={self.model_type!r} is not one of {MODEL_TYPES}")
        hook = MLflowHook(self.mlflow_conn_id)
        ref = str(self.model_version)
        if self.skip_when_missing and not ref.isdigit() and hook.alias_target(self.model_name, ref) is None:
            raise AirflowSkipException(
                f"alias {ref!r} is not set on {self.model_name!r}: nothing to evaluate"
            )
        version = hook.model_version(self.model_name, ref)
        if self.log_to == "model_run" and not version.run_id:
            raise MLPlatConfigError(
                f"{self.model_name} version {version.version} has no run to log to: use log_to='evaluation_run'"
            )
        data = self._holdout()
        # evaluation runs go to the experiment of the run that produced the version
        experiment_id = hook.client.get_run(version.run_id).info.experiment_id if version.run_id else "0"
        if self.log_to == "model_run":
            run_id, done = version.run_id, None
        else:
            run_id, done = self._evaluation_run(hook, version, experiment_id, context)
        metrics = done if done is not None else self._evaluate(hook, version.version, run_id, data)
        if self.log_to == "evaluation_run":
            hook.set_version_tags(self.model_name, version.version, {EVALUATION_RUN_TAG: run_id})
        _persist_links(context, hook, self.model_name, version.version, experiment_id, run_id)
        self.log.info("%s v%s on %d holdout rows: %s", self.model_name, version.version, len(data), metrics)
        return {
            "model_name": self.model_name,
            "version": version.version,
            "model_uri": f"models:/{self.model_name}/{version.version}",
            "run_id": run_id,
            "metrics": metrics,
            "holdout_uri": str(self.holdout_uri),
            "rows": len(data),
        }

    def _holdout(self):
        import pandas as pd

        from airflow_provider_mlplat.artifacts import storage_path

        path = storage_path(str(self.holdout_uri))
        if not path.exists():
            raise MLPlatConfigError(f"holdout_uri {self.holdout_uri!r} does not exist")
        with path.open("rb") as f:
            data = pd.read_parquet(f)
        features = list(
            self.feature_columns
            or [c for c in data.columns if c not in {self.label_column, *self.exclude_columns}]
        )
        missing = [c for c in [*features, self.label_column] if c not in data.columns]
        if missing:
            raise MLPlatConfigError(
                f"holdout {self.holdout_uri} lacks column(s) {missing}; it has {list(data.columns)}"
            )
        if data.empty:
            raise MLPlatValidationFailed(f"holdout {self.holdout_uri} has no rows")
        return data[[*features, self.label_column]]

    def _evaluation_run(
        self, hook: MLflowHook, version, experiment_id: str, context: Context
    ) -> tuple[str, dict | None]:
        """The evaluation run of this task instance (created once); its metrics when it finished."""
        client = hook.client
        key = f"{_task_key(context)}#{self.model_name}/{version.version}"
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlplat.evaluation_key` = '{key}'", max_results=1
        )
        if found and found[0].info.status == "FINISHED" and found[0].data.metrics:
            return found[0].info.run_id, dict(found[0].data.metrics)
        if found:
            return found[0].info.run_id, None
        run = client.create_run(
            experiment_id,
            run_name=f"evaluate-{self.model_name}-v{version.version}",
            tags={
                "mlplat.evaluation_key": key,
                "mlplat.evaluated_model": f"{self.model_name}/{version.version}",
                "mlplat.evaluated_run_id": version.run_id or "",
            },
        )
        return run.info.run_id, None

    def _evaluate(self, hook: MLflowHook, version: str, run_id: str, data) -> dict[str, float]:
        import mlflow

        config = {"log_model_explainability": False, "log_metrics_with_dataset_info": False}
        with hook.fluent(), mlflow.start_run(run_id=run_id):
            result = mlflow.models.evaluate(
                model=f"models:/{self.model_name}/{version}",
                data=data,
                targets=self.label_column,
                model_type=self.model_type,
                evaluator_config={**config, **(self.evaluator_config or {})},
            )
            metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
            renamed = {new: metrics[old] for old, new in self.rename_metrics.items() if old in metrics}
            mlflow.log_metrics(renamed)
        return {k: v for k, v in {**metrics, **renamed}.items() if not math.isnan(v)}


class MLflowPromoteModelOperator(LineageMixin, BaseOperator):
    """
    Decide whether a challenger version becomes the champion, record why, and move the aliases.

    Gates: absolute ``thresholds`` per metric; with a champion, the ``primary_metric`` must beat it
    (by at least ``min_improvement``) and no ``secondary_metrics`` may regress more than
    ``max_regression``; every upstream ``evidence`` verdict must pass. Without a champion the
    thresholds and evidence decide. On promote, ``previous-champion`` moves to the old champion and
    then ``champion`` to the challenger, so the model always has a champion. Every decision is
    recorded as version tags (``mlplat.promotion.*``) and as a JSON record in artifact storage;
    a re-run on the same versions changes nothing and returns the same decision. Writers of one
    model are serialized by a registry lock, so racing promotions each compare with the champion
    they replace. A ``mlflow://models/<name>`` Asset event (through the ``mlflow-champion-moves``
    alias) is emitted only when this task moved the champion.

    :param model_name: registered model name.
    :param challenger: challenger version number or alias.
    :param primary_metric: metric compared with the champion.
    :param thresholds: absolute gates, e.g. ``{"roc_auc": 0.8, "log_loss": 0.5}`` (floors, or ceilings
        for ``lower_is_better`` metrics).
    :param min_improvement: minimum gain of the primary metric over the champion.
    :param secondary_metrics: metrics that may not regress more than ``max_regression``.
    :param max_regression: allowed regression (one number, or per secondary metric).
    :param lower_is_better: metrics where smaller is better.
    :param evidence: upstream verdicts by name, e.g. ``{"gx": validate.output, "drift": drift.output}``
        (see :func:`airflow_provider_mlplat.promotion.evidence_verdict` for accepted shapes).
    :param fail_on_reject: fail the task when the challenger is rejected (default: succeed with
        decision ``rejected``).
    :param champion_alias: alias of the model to serve.
    :param previous_alias: alias the replaced champion gets (for rollback).
    :param lock_timeout: seconds to wait while another promotion of the same model runs.
    :param require_approval: when the gates would promote, ask a person first (Airflow's HITL, with
        the metrics and gates); their answer is evidence ``human_approval``: a rejection is a
        recorded ``rejected`` decision and no alias moves.
    :param approval_timeout: seconds to wait for the answer (then: rejected); None waits for ever.
    :param mlflow_conn_id: Airflow connection of type ``mlflow``.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "challenger",
        "require_approval",
        "primary_metric",
        "thresholds",
        "min_improvement",
        "secondary_metrics",
        "max_regression",
        "evidence",
        "fail_on_reject",
    )
    operator_extra_links = (MLflowModelVersionLink(), MLflowRunLink())

    def __init__(
        self,
        *,
        model_name: str,
        challenger: str | int = "challenger",
        primary_metric: str = "roc_auc",
        thresholds: Mapping[str, float] | None = None,
        min_improvement: float = 0.0,
        secondary_metrics: Sequence[str] = (),
        max_regression: float | Mapping[str, float] = 0.0,
        lower_is_better: Sequence[str] = ("log_loss",),
        evidence: Mapping[str, Any] | None = None,
        fail_on_reject: bool = False,
        champion_alias: str = "champion",
        previous_alias: str = "previous-champion",
        lock_timeout: float = 60.0,
        require_approval: bool = False,
        approval_timeout: float | None = None,
        mlflow_conn_id: str = MLflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs["outlets"] = [*(kwargs.get("outlets") or []), CHAMPION_MOVES]
        super().__init__(**kwargs)
        self.model_name = model_name
        self.challenger = challenger
        self.primary_metric = primary_metric
        self.thresholds = thresholds
        self.min_improvement = min_improvement
        self.secondary_metrics = secondary_metrics
        self.max_regression = max_regression
        self.lower_is_better = lower_is_better
        self.evidence = evidence
        self.fail_on_reject = fail_on_reject
        self.champion_alias = champion_alias
        self.previous_alias = previous_alias
        self.lock_timeout = lock_timeout
        self.require_approval = require_approval
        self.approval_timeout = approval_timeout
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        """Decide (asking a person first when ``require_approval``), record, move the aliases."""
        return self._promote(context, approval=None)

    def execute_approved(
        self, context: Context, carry: dict[str, Any], event: dict[str, Any]
    ) -> dict[str, Any]:
        """
        Resume with the person's answer: decide on the version they were asked about.

        :param context: the task's context.
        :param carry: ``{"version": ...}`` asked about.
        :param event: the HITL answer.
        """
        from airflow_provider_mlplat.approval import read_answer

        answer = read_answer(event)
        self.log.info("promotion of %s v%s %s", self.model_name, carry["version"], answer["detail"])
        self.challenger = carry["version"]
        return self._promote(context, approval=answer)

    def _promote(self, context: Context, approval: dict[str, Any] | None) -> dict[str, Any]:
        from airflow_provider_mlplat.approval import approval_flag, request_approval
        from airflow_provider_mlplat.artifacts import task_artifact_dir, write_json
        from airflow_provider_mlplat.promotion import Promotion, PromotionGates

        gates = PromotionGates.build(
            self.primary_metric,
            self.thresholds,
            self.min_improvement,
            self.secondary_metrics,
            self.max_regression,
            self.lower_is_better,
        )
        if self.evidence is not None and not isinstance(self.evidence, Mapping):
            raise MLPlatConfigError(f"evidence must map names to verdicts, got {self.evidence!r}")
        if self.champion_alias == self.previous_alias:
            raise MLPlatConfigError(f"champion_alias and previous_alias are both {self.champion_alias!r}")
        asset = mlflow_model_asset(self.model_name)  # validates the name before anything is written
        hook = MLflowHook(self.mlflow_conn_id)

        def write_record(record: dict[str, Any]) -> str:
            name = f"decision-{self.model_name}-v{record['challenger']['version']}.json"
            return write_json(task_artifact_dir(context, "promotion") / name, record)

        evidence = dict(self.evidence or {})
        if approval is not None:
            evidence["human_approval"] = approval
        promotion = Promotion(
            hook=hook,
            model_name=self.model_name,
            challenger=str(self.challenger),
            gates=gates,
            evidence=evidence,
            decided_by=_task_key(context),
            write_record=write_record,
            champion_alias=self.champion_alias,
            previous_alias=self.previous_alias,
            lock_timeout=self.lock_timeout,
        )
        if approval is None and approval_flag(self.require_approval):
            preview = promotion.preview()
            if preview is not None and preview["decision"] == "promoted":
                request_approval(
                    context,
                    subject=f"Promote {self.model_name} v{preview['version']} to @{self.champion_alias}?",
                    evidence={**preview, "evidence": evidence},
                    method_name="execute_approved",
                    carry={"version": preview["version"]},
                    timeout=self.approval_timeout,
                )
        result = promotion.run()
        _persist_links(
            context,
            hook,
            self.model_name,
            result["version"],
            result["experiment_id"],
            result["metrics_run_id"],
        )
        self.log.info(
            "%s v%s: %s (compared to %s) %s",
            self.model_name,
            result["version"],
            result["decision"],
            result["compared_to"] or "no champion",
            "; ".join(result["reasons"]),
        )
        self._record_lineage(hook, asset, result)
        if result["champion_moved"]:
            extra = {k: result[k] for k in ("model_name", "version", "run_id", "model_uri", "metrics")}
            extra["previous_version"] = result["compared_to"]
            context["outlet_events"][CHAMPION_MOVES].add(asset, extra=extra)
        if result["decision"] == "rejected" and self.fail_on_reject:
            raise MLPlatValidationFailed(
                f"{self.model_name} v{result['version']} rejected: {'; '.join(result['reasons'])} "
                f"(record: {result['record_uri']})"
            )
        return result

    def _record_lineage(self, hook: MLflowHook, asset: Any, result: dict[str, Any]) -> None:
        """Training set (and what it was split from) -> the model version, with the decision."""
        tags = hook.client.get_model_version(self.model_name, result["version"]).tags or {}
        inputs = [
            LineageDataset(tags.get(TRAINING_SET_TAG, ""), version=tags.get(TRAINING_SET_HASH_TAG) or None),
            LineageDataset(tags.get(TRAINING_SOURCE_TAG, "")),
        ]
        facts = {k: result[k] for k in ("decision", "champion_moved", "metrics", "reasons", "compared_to")}
        self.record_lineage(
            inputs=[d for d in inputs if d.uri], outputs=[LineageDataset(asset.uri, result["version"], facts)]
        )
