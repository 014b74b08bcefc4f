"""KServe operators: progressive canary rollout gated on Prometheus, with automatic rollback; delete."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import AssetAlias, BaseOperator

from airflow_provider_mlplat.approval import approval_flag, read_answer, request_approval, rollout_evidence
from airflow_provider_mlplat.assets import kserve_asset, mlflow_model_asset
from airflow_provider_mlplat.exceptions import MLPlatConfigError, RolloutFailed
from airflow_provider_mlplat.hooks.kserve import KServeHook, make_target
from airflow_provider_mlplat.hooks.kserve_target import (
    AliasConfig,
    Expectation,
    ModelVersionRef,
    RolloutPlan,
    RolloutTarget,
    deployment_name,
)
from airflow_provider_mlplat.lineage import LineageDataset, LineageMixin
from airflow_provider_mlplat.links.kserve import KServeEndpointLink
from airflow_provider_mlplat.rollback import roll_back, tag_version, write_record

#: the alias through which rollouts emit ``kserve://<namespace>/<name>`` (namespace known at run time)
ROLLOUT_ALIAS = "kserve-rollout"
DEFAULT_STEPS = (10, 50, 100)
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$")  # what KServe accepts as a service name


@dataclass(frozen=True)
class CanaryAnalysis:
    """
    The gate of each canary step, judged on Prometheus over the step's analysis window.

    :param window_seconds: how long each step runs before it is judged.
    :param min_requests: fewer canary requests in the window fail the step (not enough evidence).
    :param max_error_rate: highest share of server errors (5xx) of the canary.
    :param max_error_rate_increase: highest excess of the canary's error rate over the stable one's.
    :param max_p99_seconds: highest p99 latency of the canary.
    :param max_p99_ratio: highest ratio of canary to stable p99 latency.
    :param p99_floor_seconds: stable p99 below this counts as this (sub-floor differences are noise).
    """

    window_seconds: float = 60
    min_requests: int = 10
    max_error_rate: float = 0.01
    max_error_rate_increase: float = 0.01
    max_p99_seconds: float = 0.5
    max_p99_ratio: float = 2.0
    p99_floor_seconds: float = 0.01

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> CanaryAnalysis:
        """
        Thresholds from a dict; unknown names and negative numbers are rejected.

        :param values: overrides of the defaults.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(values or {}) - known
        if unknown:
            raise MLPlatConfigError(f"unknown analysis setting(s) {sorted(unknown)}; valid: {sorted(known)}")
        analysis = cls(**(values or {}))
        for name, value in asdict(analysis).items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise MLPlatConfigError(f"analysis {name}={value!r} must be a number >= 0")
        return analysis

    def judge(self, canary: dict[str, Any], stable: dict[str, Any] | None) -> list[str]:
        """
        Why the canary fails, compared with the thresholds and the stable version (empty: it passes).

        :param canary: the canary's ``requests``, ``errors``, ``error_rate`` and ``p99`` in the window.
        :param stable: the same for the stable version (None: no stable to compare with).
        """
        reasons = []
        requests = canary["requests"] or 0
        if requests < self.min_requests:
            reasons.append(
                f"canary served {requests:.0f} requests in the window, fewer than min_requests={self.min_requests}"
            )
        rate = canary["error_rate"]
        if rate is not None and rate > self.max_error_rate:
            reasons.append(
                f"canary error rate {rate:.3f} ({canary['errors']:.0f}/{requests:.0f}) > max_error_rate {self.max_error_rate}"
            )
        stable_rate = (stable or {}).get("error_rate")
        if rate is not None and stable_rate is not None and rate - stable_rate > self.max_error_rate_increase:
            reasons.append(
                f"canary error rate {rate:.3f} exceeds stable {stable_rate:.3f} by more than "
                f"max_error_rate_increase {self.max_error_rate_increase}"
            )
        p99 = canary["p99"]
        if p99 is not None and p99 > self.max_p99_seconds:
            reasons.append(f"canary p99 latency {p99 * 1000:.1f} ms > max_p99_seconds {self.max_p99_seconds}")
        stable_p99 = (stable or {}).get("p99")
        if p99 is not None and stable_p99 is not None:
            bound = self.max_p99_ratio * max(stable_p99, self.p99_floor_seconds)
            if p99 > bound:
                reasons.append(
                    f"canary p99 latency {p99 * 1000:.1f} ms > {self.max_p99_ratio} x stable "
                    f"{stable_p99 * 1000:.1f} ms (floor {self.p99_floor_seconds * 1000:.0f} ms)"
                )
        return reasons


def measure(prometheus: Any, queries: dict[str, str]) -> dict[str, Any]:
    """
    Run one version's analysis queries: requests, errors, error rate and p99 (None when no data).

    :param prometheus: a :class:`~airflow_provider_mlplat.hooks.prometheus.PrometheusHook`.
    :param queries: PromQL for ``requests``, ``errors`` and ``p99``.
    """
    requests = prometheus.query_value(queries["requests"]) or 0.0
    errors = prometheus.query_value(queries["errors"]) or 0.0
    return {
        "requests": round(requests, 3),
        "errors": round(errors, 3),
        "error_rate": round(errors / requests, 6) if requests else None,
        "p99": prometheus.query_value(queries["p99"]),
        "queries": queries,
    }


def v2_request(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """
    A V2 inference request with one tensor per column (the pandas codec, as MLServer reads it).

    :param rows: input rows.
    """
    inputs = []
    for column in dict.fromkeys(key for row in rows for key in row):
        values = [row.get(column) for row in rows]
        if all(isinstance(v, bool) for v in values):
            datatype = "BOOL"
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            datatype = "INT64"
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            datatype, values = "FP64", [float(v) for v in values]
        else:
            datatype, values = "BYTES", [str(v) for v in values]
        inputs.append({"name": column, "shape": [len(rows)], "datatype": datatype, "data": values})
    return {"inputs": inputs, "parameters": {"content_type": "pd"}}


def input_example_rows(tracking_uri: str, model_name: str, version: str, limit: int = 5) -> list[dict] | None:
    """
    Up to ``limit`` rows of the input example logged with a model version (None: it has none).

    :param tracking_uri: MLflow tracking URI.
    :param model_name: registered model name.
    :param version: version number.
    :param limit: most rows returned.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    base = f"models:/{model_name}/{version}"
    info = Model.load(
        download_artifacts(f"{base}/MLmodel", tracking_uri=tracking_uri)
    ).saved_input_example_info
    if not info:
        return None
    with open(download_artifacts(f"{base}/{info['artifact_path']}", tracking_uri=tracking_uri)) as f:
        data = json.load(f)
    if info.get("type") != "dataframe":
        raise MLPlatConfigError(
            f"{base}: the input example is of type {info.get('type')!r}, not a table; pass smoke_input rows"
        )
    if info.get("pandas_orient", "split") == "split":
        data = [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]
    return data[:limit]


class KServeRolloutOperator(LineageMixin, BaseOperator):
    """
    Deploy an MLflow model version to KServe progressively. The connection decides the target: the
    local model server or InferenceServices on Kubernetes (Knative or Standard mode); the steps are
    the same.

    1. stage: the new version becomes ready without traffic (deferrable wait,
       :class:`~airflow_provider_mlplat.triggers.kserve.KServeInferenceServiceReadyTrigger`);
    2. smoke: the model's input example is sent to the new version alone; the response must have
       one prediction per row;
    3. each canary step (default 10% then 50%): shift traffic, wait until ready, hold for the analysis
       window, then compare the canary's error rate and p99 latency on Prometheus with absolute
       thresholds and with the stable version (:class:`CanaryAnalysis`);
    4. promote at 100%: the new version becomes stable; the serving asset
       ``kserve://<namespace>/<name>`` is emitted with version, traffic and revision.

    Any failure rolls back once (:func:`~airflow_provider_mlplat.rollback.roll_back`): traffic goes
    back to the stable version, ``model_alias`` moves back to ``previous_alias`` (when it names the
    failed version), the version is tagged, a decision record is written, and the task fails with
    :class:`RolloutFailed`. So does killing the task, also while it is deferred (the trigger's
    ``on_kill``). Without a stable version (first deployment) or with ``strategy="direct"`` there
    are no canary steps.

    :param model_name: registered MLflow model (required).
    :param model_version: version number to deploy (default: the one ``model_alias`` points at).
    :param model_alias: alias resolved when no version is given, and moved back on failure.
    :param previous_alias: alias of the version ``model_alias`` moves back to on failure.
    :param deployment_name: InferenceService / deployment name (default: the model name with dashes).
    :param namespace: Kubernetes namespace (default: the connection's; ``local`` for the model server).
    :param strategy: ``canary`` (progressive, metric-gated) or ``direct`` (all traffic at once).
    :param canary_steps: increasing traffic percentages ending at 100.
    :param analysis: :class:`CanaryAnalysis` settings overriding the defaults.
    :param skip_analysis: shift through the steps without the Prometheus gate (the gate is on by default).
    :param smoke_input: rows for the smoke request (default: the model's input example).
    :param restore_alias: move ``model_alias`` back to ``previous_alias`` when the rollout fails.
    :param require_approval: ask a person (Airflow's HITL, with the canary figures) before the last
        canary step; a rejection rolls the canary back and is recorded, the task does not fail.
    :param approval_timeout: seconds to wait for the answer (then: rejected); None waits for ever.
    :param ready_timeout: seconds each step may take to become ready.
    :param poll_interval: seconds between readiness polls.
    :param predictor: extra InferenceService predictor fields on Kubernetes (``resources``,
        ``minReplicas``, ``maxReplicas``, ...).
    :param kserve_conn_id: ``kserve`` connection.
    :param mlflow_conn_id: ``mlflow`` connection.
    :param prometheus_conn_id: ``prometheus`` connection.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "model_version",
        "model_alias",
        "previous_alias",
        "deployment_name",
        "namespace",
        "strategy",
        "canary_steps",
        "analysis",
        "smoke_input",
        "require_approval",
    )
    operator_extra_links = (KServeEndpointLink(),)

    def __init__(
        self,
        *,
        model_name: str,
        model_version: str | int | None = None,
        model_alias: str = "champion",
        previous_alias: str = "previous-champion",
        deployment_name: str | None = None,
        namespace: str | None = None,
        strategy: str = "canary",
        canary_steps: Sequence[int] = DEFAULT_STEPS,
        analysis: Mapping[str, Any] | None = None,
        skip_analysis: bool = False,
        smoke_input: list[dict[str, Any]] | None = None,
        restore_alias: bool = True,
        require_approval: bool = False,
        approval_timeout: float | None = None,
        ready_timeout: float = 600,
        poll_interval: float = 5,
        predictor: Mapping[str, Any] | None = None,
        kserve_conn_id: str = "kserve_default",
        mlflow_conn_id: str = "mlflow_default",
        prometheus_conn_id: str = "prometheus_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.model_version = model_version
        self.model_alias = model_alias
        self.previous_alias = previous_alias
        self.deployment_name = deployment_name
        self.namespace = namespace
        self.strategy = strategy
        self.canary_steps = canary_steps
        self.analysis = analysis
        self.skip_analysis = skip_analysis
        self.smoke_input = smoke_input
        self.restore_alias = restore_alias
        self.require_approval = require_approval
        self.approval_timeout = approval_timeout
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.predictor = predictor
        self.kserve_conn_id = kserve_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.prometheus_conn_id = prometheus_conn_id
        self.outlets = [*self.outlets, AssetAlias(ROLLOUT_ALIAS)]
        self._plan: RolloutPlan | None = None  # set while this process may have to roll back

    # -- planning (no writes) ------------------------------------------------------------------------

    def _steps(self) -> list[int]:
        steps = list(self.canary_steps)
        if (
            not steps
            or any(not isinstance(p, int) or isinstance(p, bool) or not 0 < p <= 100 for p in steps)
            or steps != sorted(set(steps))
            or steps[-1] != 100
        ):
            raise MLPlatConfigError(
                f"canary_steps={self.canary_steps!r} must be increasing whole percentages in 1-100 ending "
                "at 100, e.g. [10, 50, 100]"
            )
        return steps

    def _validate(self) -> tuple[str, list[int], CanaryAnalysis | None]:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise MLPlatConfigError(
                f"model_name={self.model_name!r}: name the registered MLflow model to roll out"
            )
        if self.strategy not in ("canary", "direct"):
            raise MLPlatConfigError(f"strategy={self.strategy!r}; valid: 'canary', 'direct'")
        if self.model_alias == self.previous_alias:
            raise MLPlatConfigError(
                f"model_alias and previous_alias are both {self.model_alias!r}: a rollback needs two aliases"
            )
        name = deployment_name(self.model_name, self.deployment_name)
        if not _NAME.match(name):
            raise MLPlatConfigError(
                f"deployment name {name!r} is not a valid InferenceService name: lowercase letters, digits "
                "and '-', starting with a letter, at most 45 characters"
            )
        if self.model_version is not None and not str(self.model_version).isdigit():
            raise MLPlatConfigError(f"model_version={self.model_version!r} must be a version number, e.g. 3")
        if self.smoke_input is not None and (
            not isinstance(self.smoke_input, list)
            or not self.smoke_input
            or not all(isinstance(row, dict) for row in self.smoke_input)
        ):
            raise MLPlatConfigError(
                f"smoke_input must be a non-empty list of row objects, got {self.smoke_input!r}"
            )
        analysis = None if self.skip_analysis else CanaryAnalysis.from_dict(self.analysis)
        return name, self._steps(), analysis

    def _resolve_model(self, hook: KServeHook) -> tuple[ModelVersionRef, list[dict[str, Any]]]:
        from mlflow.exceptions import MlflowException

        from airflow_provider_mlplat.hooks.mlflow import MLflowHook

        mlflow = MLflowHook(self.mlflow_conn_id)
        client = mlflow.get_conn()
        with mlflow.fluent():  # models:/ URIs (the input example) resolve against this registry
            try:
                if self.model_version is not None:
                    found = client.get_model_version(self.model_name, str(self.model_version))
                else:
                    found = client.get_model_version_by_alias(self.model_name, self.model_alias)
            except MlflowException as err:
                which = (
                    f"version {self.model_version}" if self.model_version else f"alias @{self.model_alias}"
                )
                raise MLPlatConfigError(
                    f"MLflow model {self.model_name!r} {which} not found at {mlflow.tracking_uri}: {err.message}"
                ) from None
            artifact_uri = client.get_model_version_download_uri(self.model_name, found.version)
            rows = self.smoke_input or input_example_rows(mlflow.tracking_uri, self.model_name, found.version)
        if not rows:
            raise MLPlatConfigError(
                f"{self.model_name} version {found.version} has no input example for the smoke request: "
                "log the model with input_example=... or pass smoke_input rows"
            )
        model = ModelVersionRef(
            self.model_name, str(found.version), hook.storage_uri(artifact_uri), found.run_id
        )
        return model, rows

    # -- execution: stage, then the step loop --------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any] | None:
        """Validate and resolve everything, then stage the new version and run the step loop."""
        name, steps, analysis = self._validate()
        hook = KServeHook(self.kserve_conn_id)
        target = hook.target(self.namespace, dict(self.predictor or {}), deployment=name)
        model, rows = self._resolve_model(hook)
        current = target.current(name)
        canary = (
            self.strategy == "canary" and current is not None and current.stable not in (None, model.version)
        )
        target.check(name, current, canary)
        ti = context["ti"]
        plan = RolloutPlan(
            deployment=name,
            target=target.config,
            model=model,
            stable=current.stable if current else None,
            previous=target.previous_spec(name),
            strategy=self.strategy,
            steps=steps if canary else [100],
            aliases=AliasConfig(
                self.mlflow_conn_id, self.model_alias, self.previous_alias, self.restore_alias
            ),
            origin={
                "dag_id": ti.dag_id,
                "run_id": ti.run_id,
                "task_id": ti.task_id,
                "map_index": getattr(ti, "map_index", -1),
            },
            started_at=datetime.now(UTC).isoformat(),
            smoke_rows=rows,
            analysis=asdict(analysis) if analysis else None,
        )
        if current is not None and current.stable == model.version and current.canary is None:
            self.log.info(
                "%s already serves %s version %s: nothing to do", name, model.model_name, model.version
            )
            return self._finish(context, plan, target, "unchanged")
        self.log.info(
            "rollout of %s v%s to %s/%s (%s): %s",
            model.model_name,
            model.version,
            target.namespace,
            name,
            target.kind,
            "steps " + str(plan.steps) if canary else "direct",
        )
        self._plan = plan
        with self._rollback_on_error(plan):
            expect = target.stage(name, model, current, plan.origin, self.strategy == "direct")
        return self._advance(context, plan, "stage", expect)

    def execute_complete(self, context: Any, event: dict[str, Any]):
        """
        Resume after a deferred wait and go on with the step loop. The rollout state comes back in the
        event's ``carry``.

        :param context: the task's context.
        :param event: the trigger's event.
        """
        plan = RolloutPlan.from_dict(event["carry"]["plan"])
        self._plan = plan
        phase, expect, hold = self._on_event(plan, event)
        return self._advance(context, plan, phase, expect, hold)

    def _advance(
        self, context: Any, plan: RolloutPlan, phase: str | None, expect: Expectation | None, hold: float = 0
    ) -> dict[str, Any]:
        """
        The step loop: wait for the step (at once when it is ready and nothing is held, else deferred),
        act on it, start the next; finish once promoted. A failure inside rolls back exactly once.
        """
        while phase is not None:
            if phase == "approve":
                self._ask_approval(context, plan)  # parks the task until a person answers
            with self._rollback_on_error(plan):
                event = self._wait(plan, phase, expect, hold)
            phase, expect, hold = self._on_event(plan, event)
        return self._finish(context, plan, make_target(plan.target), "promoted")

    def _wait(self, plan: RolloutPlan, phase: str, expect: Expectation, hold: float) -> dict[str, Any]:
        """
        The event of a step's wait when it is already over and nothing is to be held, else defer to
        the trigger. (Deferring for a wait that is already over races with Airflow 3.3's scheduler: a
        trigger that fires before the scheduler drains the deferring process's exit event gets the
        resumed task failed, apache/airflow#72716.)
        """
        import asyncio

        from airflow_provider_mlplat.triggers.kserve import KServeInferenceServiceReadyTrigger

        carry = {"plan": plan.to_dict(), "phase": phase}
        if not hold:
            state, detail = asyncio.run(make_target(plan.target).readiness(plan.deployment, expect))
            if state == "ready":
                return {"status": "ready", "detail": detail, "waited": 0, "carry": carry}
        trigger = KServeInferenceServiceReadyTrigger(
            target=plan.target.to_dict(),
            name=plan.deployment,
            expect=expect.to_dict(),
            timeout=self.ready_timeout,
            poll_interval=self.poll_interval,
            hold_seconds=hold,
            carry=carry,
        )
        self.defer(trigger=trigger, method_name="execute_complete")

    def _on_event(
        self, plan: RolloutPlan, event: dict[str, Any]
    ) -> tuple[str | None, Expectation | None, float]:
        """
        Act on a finished wait: record it, smoke after staging, judge a canary step, then start the
        next step; returns its (phase, expectation, hold), or Nones once promoted.
        """
        phase = event["carry"]["phase"]
        target = make_target(plan.target)
        percent = plan.steps[plan.step] if phase == "step" and plan.step is not None else None
        entry = {
            "phase": phase,
            "percent": percent,
            "status": event["status"],
            "detail": event["detail"],
            "waited_seconds": event["waited"],
            "at": datetime.now(UTC).isoformat(),
        }
        plan.history.append(entry)
        with self._rollback_on_error(plan):
            if event["status"] != "ready":
                what = f"{percent}% canary step" if percent else phase
                raise RolloutFailed(f"{what} of {plan.deployment} {event['status']}: {event['detail']}")
            if phase == "stage":
                entry["smoke"] = self._smoke(plan, target)
                return self._next(plan, target, 0)
            if phase == "step":
                self._analyze(plan, target, entry)
                return self._next(plan, target, (plan.step or 0) + 1)
        return None, None, 0

    def _next(
        self, plan: RolloutPlan, target: RolloutTarget, index: int
    ) -> tuple[str, Expectation | None, float]:
        """Start step ``index``: shift to its percentage (held for analysis), ask for the approval the
        last step needs (phase ``approve``), or promote at 100%."""
        model = plan.model
        percent = plan.steps[index]
        if percent == 100:
            if len(plan.steps) > 1 and plan.approval is None and approval_flag(self.require_approval):
                return "approve", None, 0  # a person decides before the last step
            self.log.info("promoting %s v%s", model.model_name, model.version)
            return "promote", target.promote(plan.deployment, model, plan.stable), 0
        plan.step = index
        expect = target.shift(plan.deployment, model, plan.stable, percent)  # type: ignore[arg-type]
        hold = plan.analysis["window_seconds"] if plan.analysis else 0
        self.log.info("canary at %s%%; holding %.0f s for analysis", percent, hold)
        return "step", expect, hold

    def _ask_approval(self, context: Any, plan: RolloutPlan) -> None:
        """Park the task for a person's answer on the last step, with the canary figures (HITL)."""
        model = plan.model
        request_approval(
            context,
            subject=f"Send all traffic of {plan.deployment} to {model.model_name} v{model.version}?",
            evidence=rollout_evidence(plan.to_dict()),
            method_name="execute_approval",
            carry=plan.to_dict(),
            timeout=self.approval_timeout,
        )

    def execute_approval(self, context: Any, carry: dict[str, Any], event: dict[str, Any]):
        """
        Resume with the person's answer before the last step: promote, or roll the canary back and
        record the rejection (a decision: the task succeeds with outcome ``rejected``).

        :param context: the task's context.
        :param carry: the rollout plan.
        :param event: the HITL answer.
        """
        plan = self._plan = RolloutPlan.from_dict(carry)
        plan.approval = read_answer(event)
        if plan.approval["verdict"] == "approved":
            with self._rollback_on_error(plan):
                phase, expect, hold = self._next(plan, make_target(plan.target), len(plan.steps) - 1)
            return self._advance(context, plan, phase, expect, hold)
        self._plan = None
        message, uri = roll_back(plan, f"the last step was {plan.approval['detail']}", outcome="rejected")
        return {"outcome": "rejected", "deployment": plan.deployment, "version": plan.model.version,
                "approval": plan.approval, "detail": message, "decision_record": uri}  # fmt: skip

    def _smoke(self, plan: RolloutPlan, target: RolloutTarget) -> dict[str, Any]:
        rows = plan.smoke_rows
        response = target.smoke(plan.deployment, plan.model, v2_request(rows))
        outputs = response.get("outputs") or []
        shape = (outputs[0].get("shape") or [None])[0] if outputs else None
        if shape != len(rows):
            raise RolloutFailed(
                f"smoke request with {len(rows)} row(s) did not get one prediction per row: {str(outputs)[:500]}"
            )
        return {"rows": len(rows), "predictions": outputs[0].get("data")}

    def _analyze(self, plan: RolloutPlan, target: RolloutTarget, entry: dict[str, Any]) -> None:
        """Judge the step on Prometheus; the evidence goes into the step's history ``entry``."""
        if not plan.analysis:
            entry["analysis"] = {"verdict": "skipped"}
            return
        from airflow_provider_mlplat.hooks.prometheus import PrometheusHook

        analysis = CanaryAnalysis(**plan.analysis)
        window = f"{max(1, math.ceil(analysis.window_seconds))}s"
        selectors = target.selectors(plan.deployment, plan.stable, plan.model)  # type: ignore[arg-type]
        prometheus = PrometheusHook(self.prometheus_conn_id)
        measured = {
            role: measure(prometheus, target.analysis_queries(selectors[role], window)) for role in selectors
        }
        reasons = analysis.judge(measured["canary"], measured["stable"])
        entry["analysis"] = {
            "window": window,
            **measured,
            "verdict": "fail" if reasons else "pass",
            "reasons": reasons,
        }
        self.log.info("analysis at %s%%: %s", entry["percent"], json.dumps(entry["analysis"], default=str))
        if reasons:
            raise RolloutFailed(f"canary analysis at {entry['percent']}% failed: " + "; ".join(reasons))

    # -- outcomes ------------------------------------------------------------------------------------

    @contextmanager
    def _rollback_on_error(self, plan: RolloutPlan) -> Iterator[None]:
        """Roll back on any error and fail; ``TaskDeferred`` (a BaseException) passes through to Airflow.
        Never nested: the step loop enters it around one action at a time."""
        try:
            yield
        except Exception as err:
            reason = str(err) if isinstance(err, RolloutFailed) else f"{type(err).__name__}: {err}"
            self._plan = None
            message, _ = roll_back(plan, reason)
            raise RolloutFailed(message) from err

    def _finish(self, context: Any, plan: RolloutPlan, target: RolloutTarget, outcome: str) -> dict[str, Any]:
        self._plan = None  # done: nothing to roll back from here on
        model = plan.model
        facts = target.describe(plan.deployment)
        asset = kserve_asset(target.namespace, plan.deployment)
        uri = write_record(plan, {"outcome": outcome, **facts})
        if facts.get("url"):
            KServeEndpointLink.persist(context, facts["url"])
        summary = {
            "deployment": plan.deployment,
            "namespace": target.namespace,
            "asset": asset.uri,
            "model_name": model.model_name,
            "version": model.version,
            "previous_version": plan.stable if plan.stable != model.version else None,
            "outcome": outcome,
            "steps": plan.steps if outcome == "promoted" else [],
            **facts,
            "decision_record": uri,
        }
        served = {
            k: summary[k]
            for k in ("outcome", "traffic", "revision", "url", "previous_version")
            if k in summary
        }
        self.record_lineage(
            inputs=[LineageDataset(mlflow_model_asset(model.model_name).uri, version=model.version)],
            outputs=[LineageDataset(asset.uri, version=model.version, facts=served)],
        )
        if outcome == "promoted":
            tag_version(plan, {"status": "serving", "deployment": asset.uri, "decision_record": uri})
            extra = {
                k: summary[k]
                for k in ("model_name", "version", "previous_version", "traffic", "revision", "url")
            }
            context["outlet_events"][AssetAlias(ROLLOUT_ALIAS)].add(asset, extra=extra)
        return summary

    def on_kill(self) -> None:
        """Killed while running (not deferred: the trigger's ``on_kill`` covers that): roll back once."""
        plan, self._plan = self._plan, None
        if plan is not None:
            message, _ = roll_back(plan, "the task was killed during the rollout")
            self.log.warning(message)


class KServeDeleteOperator(BaseOperator):
    """
    Remove a deployment: the InferenceService on Kubernetes, or the local server's deployment and
    its loaded versions. Deleting what does not exist succeeds (``deleted: false``).

    :param deployment_name: InferenceService / deployment name.
    :param namespace: Kubernetes namespace (default: the connection's).
    :param kserve_conn_id: ``kserve`` connection.
    """

    template_fields: Sequence[str] = ("deployment_name", "namespace")

    def __init__(
        self,
        *,
        deployment_name: str,
        namespace: str | None = None,
        kserve_conn_id: str = "kserve_default",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.deployment_name = deployment_name
        self.namespace = namespace
        self.kserve_conn_id = kserve_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        """Delete and say whether there was something to delete."""
        target = KServeHook(self.kserve_conn_id).target(self.namespace)
        deleted = target.delete(self.deployment_name)
        self.log.info(
            "%s/%s %s", target.namespace, self.deployment_name, "deleted" if deleted else "did not exist"
        )
        return {"deployment": self.deployment_name, "namespace": target.namespace, "deleted": deleted}
