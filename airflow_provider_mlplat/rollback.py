"""Rolling a failed KServe rollout back: traffic, the MLflow alias, the version's tags, one decision record."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from airflow_provider_mlplat.hooks.kserve_target import AliasConfig, ModelVersionRef, RolloutPlan

log = logging.getLogger(__name__)


def restore_alias(aliases: AliasConfig, model: ModelVersionRef) -> str:
    """
    Move ``aliases.alias`` back to the version of ``aliases.previous_alias`` when it names the failed
    version; say what happened. Versions are compared as text (SQL stores answer numbers).

    :param aliases: the rollout's alias settings.
    :param model: the failed version.
    """
    from airflow_provider_mlplat.hooks.mlflow import MLflowHook

    if not aliases.restore:
        return "not restored (restore_alias=False)"
    hook = MLflowHook(aliases.mlflow_conn_id)
    current = hook.alias_version(model.model_name, aliases.alias)
    if current != model.version:
        return f"unchanged ({aliases.alias} is {current or 'unset'}, not the failed version {model.version})"
    previous = hook.alias_version(model.model_name, aliases.previous_alias)
    if previous is None:
        return f"{aliases.alias} left on {model.version}: there is no {aliases.previous_alias} to restore"
    hook.set_alias(model.model_name, aliases.alias, previous)
    return f"{aliases.alias} moved back from {model.version} to {previous} ({aliases.previous_alias})"


def tag_version(plan: RolloutPlan, tags: dict[str, str]) -> None:
    """
    Tag the rolled-out version with ``mlplat.rollout.<key>`` tags.

    :param plan: the rollout.
    :param tags: keys and values.
    """
    from airflow_provider_mlplat.hooks.mlflow import MLflowHook

    hook = MLflowHook(plan.aliases.mlflow_conn_id)
    model = plan.model
    hook.set_version_tags(
        model.model_name, model.version, {f"mlplat.rollout.{k}": v for k, v in tags.items()}
    )


def write_record(plan: RolloutPlan, facts: dict[str, Any]) -> str:
    """
    Write the rollout's decision record to the task's artifact folder; returns its URI.

    :param plan: the rollout.
    :param facts: the outcome and its evidence.
    """
    from airflow_provider_mlplat.artifacts import task_artifact_dir, write_json

    context = {"ti": SimpleNamespace(**plan.origin)}
    record = {**plan.to_dict(), **facts, "finished_at": datetime.now(UTC).isoformat()}
    return write_json(task_artifact_dir(context) / "rollout_decision.json", record)


def roll_back(plan: RolloutPlan, reason: str, outcome: str = "rolled_back") -> tuple[str, str]:
    """
    Undo a rollout once: traffic back to the stable version, the alias back, the version tagged
    ``rolled_back`` and one decision record written. Each part runs even when an earlier one failed
    (the record says which did not happen). Returns (the message to fail with, the record's URI).

    :param plan: the rollout, as far as it got.
    :param reason: why it is rolled back.
    :param outcome: the decision record's outcome (``rejected`` when a person said no).
    """
    from airflow_provider_mlplat.hooks.kserve import make_target

    model = plan.model

    def attempt(what: str, action) -> str:
        try:
            return action()
        except Exception as err:  # record and go on: the other parts may still succeed
            log.exception("%s failed", what)
            return f"{what.upper()} FAILED ({type(err).__name__}: {err})"

    rolled_back = attempt(
        "rollback",
        lambda: make_target(plan.target).rollback(plan.deployment, model, plan.stable, plan.previous),
    )
    alias = attempt("alias restore", lambda: restore_alias(plan.aliases, model))
    facts = {"outcome": outcome, "reason": reason, "rollback": rolled_back, "alias": alias}
    uri = attempt("decision record", lambda: write_record(plan, facts))
    attempt(
        "tagging",
        lambda: tag_version(plan, {"status": "rolled_back", "reason": reason[:4000], "decision_record": uri}),
    )
    log.error("rolled back: %s; %s; %s", reason, rolled_back, alias)
    message = (
        f"rollout of {model.model_name} v{model.version} to {plan.deployment} rolled back: {reason}. "
        f"{rolled_back}; alias: {alias}; decision record: {uri}"
    )
    return message, uri
