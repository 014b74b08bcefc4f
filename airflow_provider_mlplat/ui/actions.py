"""The Models view's actions: which DAG run each one starts, with which params."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError

if TYPE_CHECKING:
    from airflow_provider_mlplat.hooks.mlflow import MLflowHook

#: action -> the reference DAG it runs
ACTION_DAGS = {
    "promote": "model_promotion",
    "rollback": "deployment_pipeline",
    "retrain": "training_pipeline",
}
PREVIOUS_ALIAS = "previous-champion"


def plan_action(
    action: str, model: str, body: dict[str, Any], mlflow: MLflowHook
) -> tuple[str, dict[str, Any]]:
    """
    The DAG and run conf of an action, checked against the registry before anything starts.

    :param action: ``promote``, ``rollback`` or ``retrain``.
    :param model: registered model name.
    :param body: the action's input: ``version`` and ``holdout_uri`` for ``promote``.
    :param mlflow: the registry.
    """
    if action not in ACTION_DAGS:
        raise MLPlatConfigError(f"unknown action {action!r}; valid: {', '.join(ACTION_DAGS)}")
    dag_id = ACTION_DAGS[action]
    if action == "retrain":
        mlflow.registered_model(model)
        return dag_id, {}
    if action == "rollback":
        previous = mlflow.alias_target(model, PREVIOUS_ALIAS)
        if previous is None:
            raise MLPlatConfigError(
                f"registered model {model!r} has no @{PREVIOUS_ALIAS} alias: there is nothing to roll back to"
            )
        return dag_id, {"model_name": model, "model_version": str(previous.version), "strategy": "direct"}
    version, holdout = str(body.get("version", "")), body.get("holdout_uri")
    if not version.isdigit():
        raise MLPlatConfigError(f"version={body.get('version')!r} must be a version number, e.g. 3")
    if not isinstance(holdout, str) or not holdout:
        raise MLPlatConfigError(
            f"holdout_uri={holdout!r}: promote needs the holdout data (parquet: features + label) to evaluate on"
        )
    mlflow.model_version(model, version)  # names the model or version that does not exist
    return dag_id, {"model_name": model, "challenger": version, "holdout_uri": holdout}
