"""Human approval at the gates without services: the HITL request, the answer, approve and reject paths."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import TaskAwaitingInput

from airflow_provider_mlplat import rollback
from airflow_provider_mlplat.approval import APPROVE, REJECT, approval_flag, read_answer
from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.kserve_target import (
    AliasConfig,
    ModelVersionRef,
    RolloutPlan,
    TargetConfig,
)
from airflow_provider_mlplat.operators import kserve as kserve_operators
from airflow_provider_mlplat.operators.kserve import KServeRolloutOperator

MODEL = ModelVersionRef("trip_completion", "2", "s3://models/2", "run-2")
ANALYSIS = {
    "verdict": "pass",
    "canary": {"requests": 80, "error_rate": 0.0},
    "stable": {"requests": 300},
    "reasons": [],
}


def answered(option: str) -> dict:
    return {
        "chosen_options": [option],
        "params_input": {},
        "responded_at": "2026-12-08T00:00:00+00:00",
        "responded_by_user": {"id": "alice", "name": "alice"},
    }


def test_the_answer_is_a_verdict_and_no_answer_is_a_rejection():
    assert read_answer(answered(APPROVE)) == {
        "verdict": "approved",
        "by": "alice",
        "at": "2026-12-08T00:00:00+00:00",
        "detail": "approved by alice at 2026-12-08T00:00:00+00:00",
    }
    assert read_answer(answered(REJECT))["verdict"] == "rejected"
    timed_out = read_answer({"error": "timed out after 1:00:00", "error_type": "timeout"})
    assert timed_out["verdict"] == "rejected" and "no approval: timed out" in timed_out["detail"]


def test_require_approval_takes_a_bool_or_its_rendered_text():
    assert approval_flag(True) is True and approval_flag("False") is False and approval_flag(" true ") is True
    with pytest.raises(MLPlatConfigError, match=r"require_approval='yes' must be true or false"):
        approval_flag("yes")


class FakeTarget:
    """A rollout target that records what the operator asks of it."""

    namespace = "local"

    def __init__(self):
        self.calls = []

    def promote(self, name, model, stable):
        self.calls.append(("promote", name, model, stable))
        return {"revision": 3}

    def rollback(self, name, model, stable, previous):
        self.calls.append(("rollback", name, model, stable, previous))
        return "traffic back on v1"


class Parked(BaseException):
    """What the test's ``_wait`` raises: the operator would defer there (TaskDeferred is one too)."""


@pytest.fixture
def rollout(monkeypatch):
    """An operator in the middle of a canary (50% analysed), a fake target, recorded HITL requests."""
    target, requests, waits, tags = FakeTarget(), [], [], []
    monkeypatch.setattr(kserve_operators, "make_target", lambda config: target)
    monkeypatch.setattr("airflow_provider_mlplat.hooks.kserve.make_target", lambda config: target)
    monkeypatch.setattr(
        "airflow.sdk.execution_time.hitl.upsert_hitl_detail", lambda **kw: requests.append(kw)
    )
    monkeypatch.setattr(rollback, "tag_version", lambda plan, values: tags.append(values))
    operator = KServeRolloutOperator(task_id="rollout", model_name="trip_completion", require_approval="True")

    def wait(plan, phase, expect, hold=0):
        waits.append((phase, expect))
        raise Parked

    monkeypatch.setattr(operator, "_wait", wait)
    plan = RolloutPlan(
        deployment="trip-completion",
        target=TargetConfig("local", "local"),
        model=MODEL,
        stable="1",
        previous=None,
        strategy="canary",
        steps=[10, 50, 100],
        aliases=AliasConfig("mlflow_default", "champion", "previous-champion", restore=False),
        origin={"dag_id": "d", "run_id": "r", "task_id": "rollout", "map_index": -1},
        started_at="2026-12-08T00:00:00+00:00",
        analysis={"max_error_rate": 0.01, "window_seconds": 15},
        step=1,
        history=[{"phase": "step", "percent": 50, "status": "ready", "analysis": ANALYSIS}],
    )
    ti = SimpleNamespace(
        id="0190a0a0-0000-7000-8000-000000000000", dag_id="d", run_id="r", task_id="rollout", map_index=-1
    )
    return SimpleNamespace(operator=operator, plan=plan, context={"ti": ti, "task_instance": ti},
                           target=target, requests=requests, waits=waits, tags=tags)  # fmt: skip


def test_the_last_canary_step_waits_for_a_person_with_the_canary_figures(rollout):
    assert rollout.operator._next(rollout.plan, rollout.target, 2) == ("approve", None, 0)
    with pytest.raises(TaskAwaitingInput) as parked:
        rollout.operator._advance(rollout.context, rollout.plan, "approve", None)
    assert parked.value.method_name == "execute_approval"
    assert parked.value.kwargs == {"carry": rollout.plan.to_dict()}
    [request] = rollout.requests
    assert request["ti_id"] == rollout.context["ti"].id
    assert request["subject"] == "Send all traffic of trip-completion to trip_completion v2?"
    assert (request["options"], request["defaults"], request["multiple"]) == ([APPROVE, REJECT], None, False)
    evidence = json.loads(request["body"].split("```json\n")[1].split("\n```")[0])
    assert evidence["analysis"] == [{"percent": 50, **ANALYSIS}]
    assert evidence["thresholds"] == rollout.plan.analysis and evidence["stable"] == "1"
    assert rollout.target.calls == [] and rollout.waits == []  # nothing moved while it waits


def test_without_approval_or_without_a_canary_the_last_step_goes_on(rollout):
    rollout.operator.require_approval = False
    assert rollout.operator._next(rollout.plan, rollout.target, 2)[0] == "promote"
    rollout.operator.require_approval = True
    rollout.plan.steps = [100]  # direct
    assert rollout.operator._next(rollout.plan, rollout.target, 0)[0] == "promote"
    assert [call[0] for call in rollout.target.calls] == ["promote", "promote"] and rollout.requests == []


def test_approved_the_rollout_promotes(rollout):
    with pytest.raises(Parked):
        rollout.operator.execute_approval(rollout.context, carry=rollout.plan.to_dict(), event=answered(APPROVE))
    assert rollout.target.calls == [("promote", "trip-completion", MODEL, "1")]
    assert rollout.waits == [("promote", {"revision": 3})]
    assert rollout.operator._plan.approval["verdict"] == "approved"


def test_rejected_the_canary_rolls_back_and_the_rejection_is_recorded_not_raised(rollout):
    result = rollout.operator.execute_approval(
        rollout.context, carry=rollout.plan.to_dict(), event=answered(REJECT)
    )
    assert rollout.target.calls == [("rollback", "trip-completion", MODEL, "1", None)]
    assert result["outcome"] == "rejected" and result["approval"]["by"] == "alice"
    assert "the last step was rejected by alice" in result["detail"]
    [tag] = rollout.tags
    assert tag["status"] == "rolled_back" and tag["reason"].startswith("the last step was rejected by alice")
    record = json.loads(Path(tag["decision_record"].removeprefix("file://")).read_text())
    assert record["outcome"] == "rejected" and record["approval"]["verdict"] == "rejected"
    assert record["rollback"] == "traffic back on v1"
