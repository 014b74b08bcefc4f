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
from airflow_provider_mlplat.hooks.kserve import (
    KServeHook,
    ModelVersionRef,
    RolloutTarget,
    deployment_name,
    make_target,
)
from airflow_provider_mlplat.lineage import LineageDataset, LineageMixin
from airflow_provider_mlplat.links.kserve import KServeEndpointLink

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
    local model server or InferenceServices on Kubernetes; the steps are the same.

    1. stage: the new version becomes ready without traffic (deferrable wait,
       :class:`~airflow_provider_mlplat.triggers.kserve.KServeInferenceServiceReadyTrigger`);
    2. smoke: the model's input example is sent to the new version alone; the response must have
       one prediction per row;
    3. each canary step (default 10% then 50%): shift traffic, wait until ready, hold for the analysis
       window, then compare the canary's error rate and p99 latency on Prometheus with absolute
       thresholds and with the stable version (:class:`CanaryAnalysis`);
    4. promote at 100%: the new version becomes stable; the serving asset
       ``kserve://<namespace>/<name>`` is emitted with version, traffic and revision.

    Any failure rolls traffic back to the stable version, moves the MLflow ``champion`` alias back
    to ``previous-champion`` (when champion is the failed version), tags the version, writes a
    decision record to artifact storage and fails with :class:`RolloutFailed`. Without a stable
    version (first deployment) or with ``strategy="direct"`` there are no canary steps.

    :param model_name: registered MLflow model.
    :param model_version: version number to deploy (default: the one ``model_alias`` points at).
    :param model_alias: alias resolved when no version is given.
    :param deployment_name: InferenceService / deployment name (default: the model name with dashes).
    :param namespace: Kubernetes namespace (default: the connection's; ``local`` for the model server).
    :param strategy: ``canary`` (progressive, metric-gated) or ``direct`` (all traffic at once).
    :param canary_steps: increasing traffic percentages ending at 100.
    :param analysis: :class:`CanaryAnalysis` settings overriding the defaults.
    :param skip_analysis: shift through the steps without the Prometheus gate (the gate is on by default).
    :param smoke_input: rows for the smoke request (default: the model's input example).
    :param restore_alias: move ``champion`` back to ``previous-champion`` when the rollout fails.
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
        model_name: str = "trip_completion",
        model_version: str | int | None = None,
        model_alias: str = "champion",
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
        self._plan: dict[str, Any] | None = None

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
        if self.strategy not in ("canary", "direct"):
            raise MLPlatConfigError(f"strategy={self.strategy!r}; valid: 'canary', 'direct'")
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

    # -- execution -----------------------------------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any] | None:
        """Validate and resolve everything, then stage the new version and defer until it is ready."""
        name, steps, analysis = self._validate()
        hook = KServeHook(self.kserve_conn_id)
        target = hook.target(self.namespace, dict(self.predictor or {}))
        model, rows = self._resolve_model(hook)
        current = target.current(name)
        canary = (
            self.strategy == "canary" and current is not None and current.stable not in (None, model.version)
        )
        target.check(name, current, canary)
        ti = context["ti"]
        plan = {
            "deployment": name,
            "target": target.config,
            "model": asdict(model),
            "stable": current.stable if current else None,
            "previous": target.previous_spec(name),
            "strategy": self.strategy,
            "steps": steps if canary else [100],
            "step": None,
            "smoke_rows": rows,
            "analysis": asdict(analysis) if analysis else None,
            "origin": {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id},
            "started_at": datetime.now(UTC).isoformat(),
            "history": [],
        }
        if current is not None and current.stable == model.version and current.canary is None:
            self.log.info(
                "%s already serves %s version %s: nothing to do", name, model.model_name, model.version
            )
            return self._finish(context, plan, target, "unchanged")
        self._plan = plan
        self.log.info(
            "rollout of %s v%s to %s/%s: %s",
            model.model_name,
            model.version,
            target.namespace,
            name,
            "steps " + str(plan["steps"]) if canary else "direct",
        )
        with self._rollback_on_error(context, plan):
            expect = target.stage(name, model, current, plan["origin"], self.strategy == "direct")
        return self._wait(context, plan, "stage", expect)

    def _wait(
        self, context: Any, plan: dict[str, Any], phase: str, expect: dict[str, Any], hold: float = 0
    ) -> dict[str, Any]:
        """
        Wait for a step's expected state: go on at once when it is already there and nothing is to
        be held, else defer to the trigger. (Deferring for a wait that is already over races with
        Airflow 3.3's scheduler: a trigger that fires before the scheduler drains the deferring
        process's exit event gets the resumed task failed, apache/airflow#72716.)
        """
        import asyncio

        from airflow_provider_mlplat.triggers.kserve import KServeInferenceServiceReadyTrigger

        if not hold:
            state, detail = asyncio.run(make_target(plan["target"]).readiness(plan["deployment"], expect))
            if state == "ready":
                event = {
                    "status": "ready",
                    "detail": detail,
                    "waited": 0,
                    "carry": {"plan": plan, "phase": phase},
                }
                return self.execute_complete(context, event)
        trigger = KServeInferenceServiceReadyTrigger(
            target=plan["target"],
            name=plan["deployment"],
            expect=expect,
            timeout=self.ready_timeout,
            poll_interval=self.poll_interval,
            hold_seconds=hold,
            carry={"plan": plan, "phase": phase},
        )
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]):
        """
        Resume after a step's wait: smoke after staging, analyse after a canary step, finish after
        promotion; roll back on any failure. The rollout state comes back in the event's ``carry``.

        :param context: the task's context.
        :param event: the trigger's event.
        """
        plan, phase = event["carry"]["plan"], event["carry"]["phase"]
        self._plan = plan
        target = make_target(plan["target"])
        percent = plan["steps"][plan["step"]] if phase == "step" else None
        entry = {
            "phase": phase,
            "percent": percent,
            "status": event["status"],
            "detail": event["detail"],
            "waited_seconds": event["waited"],
            "at": datetime.now(UTC).isoformat(),
        }
        plan["history"].append(entry)
        with self._rollback_on_error(context, plan):
            if event["status"] != "ready":
                what = f"{percent}% canary step" if percent else phase
                raise RolloutFailed(f"{what} of {plan['deployment']} {event['status']}: {event['detail']}")
            if phase == "stage":
                entry["smoke"] = self._smoke(plan, target)
                return self._next(context, plan, target, 0)
            if phase == "step":
                self._analyze(plan, target, entry)
                return self._next(context, plan, target, plan["step"] + 1)
        return self._finish(context, plan, target, "promoted")

    def _next(self, context: Any, plan: dict[str, Any], target: RolloutTarget, index: int) -> dict[str, Any]:
        model = ModelVersionRef(**plan["model"])
        percent = plan["steps"][index]
        if percent == 100:
            if len(plan["steps"]) > 1 and "approval" not in plan and approval_flag(self.require_approval):
                request_approval(
                    context,
                    subject=f"Send all traffic of {plan['deployment']} to {model.model_name} v{model.version}?",
                    evidence=rollout_evidence(plan),
                    method_name="execute_approval",
                    carry=plan,
                    timeout=self.approval_timeout,
                )
            self.log.info("promoting %s v%s", model.model_name, model.version)
            return self._wait(
                context, plan, "promote", target.promote(plan["deployment"], model, plan["stable"])
            )
        plan["step"] = index
        expect = target.shift(plan["deployment"], model, plan["stable"], percent)
        hold = plan["analysis"]["window_seconds"] if plan["analysis"] else 0
        self.log.info("canary at %s%%; holding %.0f s for analysis", percent, hold)
        return self._wait(context, plan, "step", expect, hold)

    def execute_approval(self, context: Any, carry: dict[str, Any], event: dict[str, Any]):
        """
        Resume with the person's answer before the last step: promote, or roll the canary back and
        record the rejection (the task succeeds with outcome ``rejected``).

        :param context: the task's context.
        :param carry: the rollout plan.
        :param event: the HITL answer.
        """
        plan = self._plan = carry
        plan["approval"] = read_answer(event)
        if plan["approval"]["verdict"] == "approved":
            with self._rollback_on_error(context, plan):
                return self._next(context, plan, make_target(plan["target"]), len(plan["steps"]) - 1)
        try:
            self._fail(context, plan, f"the last step was {plan['approval']['detail']}")
        except RolloutFailed as rejected:
            return {"outcome": "rejected", "deployment": plan["deployment"], "version": plan["model"]["version"],
                    "approval": plan["approval"], "detail": str(rejected)}  # fmt: skip

    def _smoke(self, plan: dict[str, Any], target: RolloutTarget) -> dict[str, Any]:
        rows = plan["smoke_rows"]
        response = target.smoke(plan["deployment"], ModelVersionRef(**plan["model"]), v2_request(rows))
        outputs = response.get("outputs") or []
        shape = (outputs[0].get("shape") or [None])[0] if outputs else None
        if shape != len(rows):
            raise RolloutFailed(
                f"smoke request with {len(rows)} row(s) did not get one prediction per row: {str(outputs)[:500]}"
            )
        return {"rows": len(rows), "predictions": outputs[0].get("data")}

    def _analyze(self, plan: dict[str, Any], target: RolloutTarget, entry: dict[str, Any]) -> None:
        """Judge the step on Prometheus; the evidence goes into the step's history ``entry``."""
        if not plan["analysis"]:
            entry["analysis"] = {"verdict": "skipped"}
            return
        from airflow_provider_mlplat.hooks.prometheus import PrometheusHook

        analysis = CanaryAnalysis(**plan["analysis"])
        window = f"{max(1, math.ceil(analysis.window_seconds))}s"
        selectors = target.selectors(plan["deployment"], plan["stable"], ModelVersionRef(**plan["model"]))
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
    def _rollback_on_error(self, context: Any, plan: dict[str, Any]) -> Iterator[None]:
        """Roll back on any error; ``TaskDeferred`` (a BaseException) passes through to Airflow."""
        try:
            yield
        except RolloutFailed as err:
            self._fail(context, plan, str(err))
        except Exception as err:
            self._fail(context, plan, f"{type(err).__name__}: {err}")

    def _fail(self, context: Any, plan: dict[str, Any], reason: str) -> None:
        model = ModelVersionRef(**plan["model"])
        target = make_target(plan["target"])
        try:
            rolled_back = target.rollback(plan["deployment"], model, plan["stable"], plan["previous"])
        except Exception as err:  # still record and fail; the message says the rollback did not happen
            rolled_back = f"ROLLBACK FAILED ({type(err).__name__}: {err})"
        self._plan = None
        alias = self._restore_alias(model) if self.restore_alias else "not restored (restore_alias=False)"
        record = {**plan, "outcome": "rolled_back", "reason": reason, "rollback": rolled_back, "alias": alias}
        uri = self._record(context, record)
        self._tag(model, {"status": "rolled_back", "reason": reason[:4000], "decision_record": uri})
        self.log.error("rolled back: %s; %s; champion alias: %s", reason, rolled_back, alias)
        raise RolloutFailed(
            f"rollout of {model.model_name} v{model.version} to {plan['deployment']} rolled back: {reason}. "
            f"{rolled_back}; champion alias: {alias}; decision record: {uri}"
        )

    def _finish(
        self, context: Any, plan: dict[str, Any], target: RolloutTarget, outcome: str
    ) -> dict[str, Any]:
        self._plan = None
        model = ModelVersionRef(**plan["model"])
        facts = target.describe(plan["deployment"])
        asset = kserve_asset(target.namespace, plan["deployment"])
        uri = self._record(context, {**plan, "outcome": outcome, **facts})
        if facts.get("url"):
            KServeEndpointLink.persist(context, facts["url"])
        summary = {
            "deployment": plan["deployment"],
            "namespace": target.namespace,
            "asset": asset.uri,
            "model_name": model.model_name,
            "version": model.version,
            "previous_version": plan["stable"] if plan["stable"] != model.version else None,
            "outcome": outcome,
            "steps": plan["steps"] if outcome == "promoted" else [],
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
            self._tag(model, {"status": "serving", "deployment": asset.uri, "decision_record": uri})
            extra = {
                k: summary[k]
                for k in ("model_name", "version", "previous_version", "traffic", "revision", "url")
            }
            context["outlet_events"][AssetAlias(ROLLOUT_ALIAS)].add(asset, extra=extra)
        return summary

    def _record(self, context: Any, record: dict[str, Any]) -> str:
        from airflow_provider_mlplat.artifacts import task_artifact_dir, write_json

        record = {**record, "finished_at": datetime.now(UTC).isoformat()}
        return write_json(task_artifact_dir(context) / "rollout_decision.json", record)

    def _mlflow(self):
        from airflow_provider_mlplat.hooks.mlflow import MLflowHook

        return MLflowHook(self.mlflow_conn_id)

    def _tag(self, model: ModelVersionRef, tags: dict[str, str]) -> None:
        mlflow = self._mlflow()
        with mlflow.credentials():
            for key, value in tags.items():
                mlflow.get_conn().set_model_version_tag(
                    model.model_name, model.version, f"mlplat.rollout.{key}", value
                )

    def _restore_alias(self, model: ModelVersionRef) -> str:
        from mlflow.exceptions import MlflowException

        mlflow = self._mlflow()
        client = mlflow.get_conn()

        def alias(name: str) -> str | None:
            try:
                return client.get_model_version_by_alias(model.model_name, name).version
            except MlflowException:
                return None

        with mlflow.credentials():
            champion = alias("champion")
            if champion != model.version:
                return (
                    f"unchanged (champion is {champion or 'unset'}, not the failed version {model.version})"
                )
            previous = alias("previous-champion")
            if previous is None:
                return f"left on {model.version}: there is no previous-champion to restore"
            client.set_registered_model_alias(model.model_name, "champion", previous)
        return f"moved back from {model.version} to {previous} (previous-champion)"

    def on_kill(self) -> None:
        """Killed in the middle of a rollout: send traffic back to the stable version."""
        plan = self._plan
        if plan is None:
            return
        model = ModelVersionRef(**plan["model"])
        done = make_target(plan["target"]).rollback(
            plan["deployment"], model, plan["stable"], plan["previous"]
        )
        self.log.warning("task killed during the rollout: %s", done)


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
