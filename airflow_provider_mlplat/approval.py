"""Human approval at a gate with Airflow's HITL: ask with the evidence, park the task, read the answer."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, NoReturn

APPROVE, REJECT = "Approve", "Reject"


def request_approval(
    context: Any,
    *,
    subject: str,
    evidence: dict[str, Any],
    method_name: str,
    carry: dict[str, Any],
    timeout: float | None = None,
) -> NoReturn:
    """
    Ask a person to approve or reject (Browse -> Required Actions in the UI, or the REST API's
    ``hitlDetails``), then park the task until they answer; it resumes in ``method_name(context,
    carry=..., event=...)``. Unanswered within ``timeout`` seconds: rejected.

    :param context: the task's context.
    :param subject: the question.
    :param evidence: what the person decides on (JSON-able), shown in the request's body.
    :param method_name: the operator method that reads the answer.
    :param carry: JSON-able state the method gets back.
    :param timeout: seconds to wait for an answer; None waits for ever.
    """
    from airflow.sdk.exceptions import TaskAwaitingInput
    from airflow.sdk.execution_time.hitl import upsert_hitl_detail

    body = "Evidence:\n\n```json\n" + json.dumps(evidence, indent=2, sort_keys=True, default=str) + "\n```"
    upsert_hitl_detail(
        ti_id=context["task_instance"].id,
        options=[APPROVE, REJECT],
        subject=subject,
        body=body,
        defaults=[REJECT] if timeout else None,
        multiple=False,
        params={},  # no form: the answer is the option
    )
    raise TaskAwaitingInput(
        method_name=method_name,
        kwargs={"carry": carry},
        timeout=timedelta(seconds=timeout) if timeout else None,
    )


def read_answer(event: dict[str, Any]) -> dict[str, Any]:
    """
    The person's answer as a verdict: ``{"verdict": "approved"|"rejected", "by", "at", "detail"}``;
    no answer in time is a rejection.

    :param event: the HITL resume event.
    """
    if "error" in event:
        return {"verdict": "rejected", "by": None, "at": None, "detail": f"no approval: {event['error']}"}
    chosen, user = event.get("chosen_options") or [], event.get("responded_by_user") or {}
    by, at = user.get("name") or user.get("id"), str(event.get("responded_at"))
    verdict = "approved" if chosen == [APPROVE] else "rejected"
    return {"verdict": verdict, "by": by, "at": at, "detail": f"{verdict} by {by} at {at}"}


def rollout_evidence(plan: dict[str, Any]) -> dict[str, Any]:
    """
    What a person approves a rollout's last step on: the versions, the steps and each canary
    analysis against its thresholds.

    :param plan: the rollout plan of ``KServeRolloutOperator``.
    """
    return {
        "deployment": plan["deployment"],
        "model": plan["model"]["model_name"],
        "version": plan["model"]["version"],
        "stable": plan["stable"],
        "steps": plan["steps"],
        "thresholds": plan["analysis"],
        "analysis": [
            {"percent": e["percent"], **e["analysis"]} for e in plan["history"] if e.get("analysis")
        ],
    }


def approval_flag(value: Any) -> bool:
    """
    A ``require_approval`` setting as rendered from a template or a Param: a bool, or ``"true"`` /
    ``"false"`` (any case); anything else is an error naming the value.

    :param value: the setting.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    from airflow_provider_mlplat.exceptions import MLPlatConfigError

    raise MLPlatConfigError(f"require_approval={value!r} must be true or false")
