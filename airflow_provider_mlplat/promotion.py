"""Evidence-gated promotion of an MLflow model version: gates, decision, alias moves, audit trail."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError

if TYPE_CHECKING:
    from airflow_provider_mlplat.hooks.mlflow import MLflowHook

#: model version tags of a decision: promoted/rejected, the failed gates, and JSON with the record
#: URI, the champion compared with, who decided when, and the inputs' fingerprint. Three tags, not
#: seven: MLflow reads the whole model (all its versions) on every tag write.
TAG_DECISION = "mlplat.promotion.decision"
TAG_REASONS = "mlplat.promotion.reasons"
TAG_AUDIT = "mlplat.promotion.audit"
PASSING_WORDS = {"passed", "pass", "success", "succeeded", "ok", "no_drift", "valid", "approved"}
FAILING_WORDS = {"failed", "fail", "failure", "drift", "drift_detected", "invalid", "rejected"}


@dataclass(frozen=True)
class PromotionGates:
    """
    What a challenger must show to become champion.

    :param primary_metric: metric compared with the champion (``roc_auc``).
    :param thresholds: absolute floor (or ceiling, for lower-is-better metrics) per metric.
    :param min_improvement: how much the primary metric must beat the champion by (it must beat it).
    :param secondary_metrics: metrics that may not regress more than ``max_regression``.
    :param max_regression: allowed regression of each secondary metric (one number or per metric).
    :param lower_is_better: metrics where smaller is better (``log_loss``).
    """

    primary_metric: str = "roc_auc"
    thresholds: dict[str, float] = field(default_factory=dict)
    min_improvement: float = 0.0
    secondary_metrics: tuple[str, ...] = ()
    max_regression: dict[str, float] = field(default_factory=dict)
    lower_is_better: tuple[str, ...] = ("log_loss",)

    @classmethod
    def build(
        cls,
        primary_metric: Any,
        thresholds: Any = None,
        min_improvement: Any = 0.0,
        secondary_metrics: Any = (),
        max_regression: Any = 0.0,
        lower_is_better: Any = ("log_loss",),
    ) -> PromotionGates:
        """
        Validate gate settings (as rendered from templates or Params); errors name the bad value.

        :param primary_metric: see the class.
        :param thresholds: see the class.
        :param min_improvement: see the class.
        :param secondary_metrics: see the class (a list, or a comma-separated string).
        :param max_regression: see the class.
        :param lower_is_better: see the class.
        """
        if not isinstance(primary_metric, str) or not primary_metric:
            raise MLPlatConfigError(f"primary_metric must be a metric name, got {primary_metric!r}")
        secondary = _names("secondary_metrics", secondary_metrics)
        if isinstance(max_regression, Mapping):
            unknown = sorted(set(max_regression) - set(secondary))
            if unknown:
                raise MLPlatConfigError(
                    f"max_regression names {unknown}, which are not secondary_metrics {list(secondary)}"
                )
            regression = {
                m: _number(f"max_regression[{m!r}]", v, minimum=0) for m, v in max_regression.items()
            }
            regression = {m: regression.get(m, 0.0) for m in secondary}
        else:
            limit = _number("max_regression", max_regression, minimum=0)
            regression = dict.fromkeys(secondary, limit)
        if thresholds is not None and not isinstance(thresholds, Mapping):
            raise MLPlatConfigError(f"thresholds must map metric names to numbers, got {thresholds!r}")
        return cls(
            primary_metric=primary_metric,
            thresholds={m: _number(f"thresholds[{m!r}]", v) for m, v in (thresholds or {}).items()},
            min_improvement=_number("min_improvement", min_improvement, minimum=0),
            secondary_metrics=secondary,
            max_regression=regression,
            lower_is_better=_names("lower_is_better", lower_is_better),
        )

    @property
    def compared_metrics(self) -> list[str]:
        """Metrics both challenger and champion must have."""
        return list(dict.fromkeys([self.primary_metric, *self.secondary_metrics]))

    @property
    def challenger_metrics(self) -> list[str]:
        """Metrics the challenger must have."""
        return list(dict.fromkeys([*self.compared_metrics, *self.thresholds]))

    def better_by(self, metric: str, value: float, reference: float) -> float:
        """How much ``value`` is better than ``reference`` (negative: worse), rounded for float noise."""
        delta = reference - value if metric in self.lower_is_better else value - reference
        return round(delta, 12)


def _names(what: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise MLPlatConfigError(f"{what} must be a list of metric names, got {value!r}")
    return tuple(value)


def _number(what: str, value: Any, minimum: float | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or math.isnan(number) or (minimum is not None and number < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise MLPlatConfigError(f"{what} must be a number{bound}, got {value!r}")
    return number


def evidence_verdict(name: str, value: Any) -> dict[str, Any]:
    """
    Read one piece of upstream evidence (a task's XCom) as passed or failed.

    Accepted: a bool; a word (``passed``/``success``/``ok``/``no_drift`` or
    ``failed``/``drift``/``drift_detected``/``rejected``); a dict with ``success`` or ``passed``
    (Great Expectations style), ``drift_detected`` or ``dataset_drift`` (drift reports, true = failed),
    or ``verdict``/``decision`` holding one of the words. ``None`` (the upstream task left nothing)
    fails the gate.

    :param name: evidence name (e.g. ``gx``, ``drift``).
    :param value: the evidence.
    """
    if value is None:
        return {"passed": False, "detail": f"evidence {name!r} is missing (did the upstream task run?)"}
    if isinstance(value, bool):
        return {"passed": value, "detail": f"evidence {name!r} is {value}"}
    if isinstance(value, str):
        word = value.strip().lower()
        if word in PASSING_WORDS | FAILING_WORDS:
            return {"passed": word in PASSING_WORDS, "detail": f"evidence {name!r} says {word!r}"}
    if isinstance(value, Mapping):
        for key, failed_when in (("success", False), ("passed", False)):
            if isinstance(value.get(key), bool):
                passed = value[key] is not failed_when
                return {"passed": passed, "detail": f"evidence {name!r}: {key}={value[key]}"}
        for key in ("drift_detected", "dataset_drift"):
            if isinstance(value.get(key), bool):
                return {"passed": not value[key], "detail": f"evidence {name!r}: {key}={value[key]}"}
        for key in ("verdict", "decision"):
            if isinstance(value.get(key), str):
                return evidence_verdict(name, value[key])
    raise MLPlatConfigError(
        f"evidence {name!r} = {value!r} is not a verdict: pass a bool, one of "
        f"{sorted(PASSING_WORDS | FAILING_WORDS)}, or a dict with success/passed/drift_detected/"
        "dataset_drift/verdict"
    )


def decide(
    gates: PromotionGates,
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    evidence: Mapping[str, Any],
) -> dict[str, Any]:
    """
    The promotion decision from metrics and evidence: every check, and the failed ones as reasons.

    :param gates: the gates.
    :param challenger: the challenger's metrics.
    :param champion: the champion's metrics, or None when there is no champion yet (first model).
    :param evidence: upstream verdicts by name.
    """
    checks: list[dict[str, Any]] = []
    for metric, limit in gates.thresholds.items():
        value, lower = challenger[metric], metric in gates.lower_is_better
        passed = value <= limit if lower else value >= limit
        checks.append(
            {
                "gate": "threshold",
                "metric": metric,
                "value": value,
                "limit": limit,
                "passed": passed,
                "detail": f"{metric} {value:.6g} {'<=' if lower else '>='} {limit:.6g}"
                + ("" if passed else " failed"),
            }
        )
    if champion is not None:
        metric = gates.primary_metric
        gain = gates.better_by(metric, challenger[metric], champion[metric])
        passed = gain > 0 and gain >= gates.min_improvement
        checks.append(
            {
                "gate": "improvement",
                "metric": metric,
                "value": challenger[metric],
                "champion": champion[metric],
                "limit": gates.min_improvement,
                "passed": passed,
                "detail": f"{metric} improves on the champion by {gain:.6g} "
                f"(needs > 0 and >= {gates.min_improvement:.6g})",
            }
        )
        for metric in gates.secondary_metrics:
            loss = -gates.better_by(metric, challenger[metric], champion[metric])
            limit = gates.max_regression[metric]
            checks.append(
                {
                    "gate": "regression",
                    "metric": metric,
                    "value": challenger[metric],
                    "champion": champion[metric],
                    "limit": limit,
                    "passed": loss <= limit,
                    "detail": f"{metric} regresses by {max(loss, 0.0):.6g} (allowed {limit:.6g})",
                }
            )
    for name, value in evidence.items():
        verdict = evidence_verdict(name, value)
        checks.append({"gate": "evidence", "name": name, **verdict})
    reasons = [c["detail"] for c in checks if not c["passed"]]
    return {"decision": "rejected" if reasons else "promoted", "checks": checks, "reasons": reasons}


@dataclass
class Promotion:
    """
    One promotion of a registered model's challenger, run under the model's registry lock.

    :param hook: MLflow hook of the registry.
    :param model_name: registered model name.
    :param challenger: challenger version number or alias.
    :param gates: the gates.
    :param evidence: upstream verdicts by name.
    :param decided_by: who decides (``dag_id/run_id/task_id[/map_index]``): a re-run of the same
        task instance re-reports a champion move it made.
    :param write_record: stores the JSON decision record and returns its URI.
    :param champion_alias: alias of the serving model.
    :param previous_alias: alias the replaced champion moves to (for rollback).
    :param lock_timeout: seconds to wait for a concurrent promotion of the same model.
    """

    hook: MLflowHook
    model_name: str
    challenger: str
    gates: PromotionGates
    evidence: Mapping[str, Any]
    decided_by: str
    write_record: Callable[[dict[str, Any]], str]
    champion_alias: str = "champion"
    previous_alias: str = "previous-champion"
    lock_timeout: float = 60.0

    def run(self) -> dict[str, Any]:
        """Decide, record and (on promote) move the aliases; return the XCom summary."""
        with self.hook.registry_lock(self.model_name, self.decided_by, timeout=self.lock_timeout):
            return self._run()

    def _run(self) -> dict[str, Any]:
        hook, name = self.hook, self.model_name
        challenger = hook.model_version(name, self.challenger)  # errors name what is missing
        champion = hook.alias_target(name, self.champion_alias)
        audit = json.loads(challenger.tags.get(TAG_AUDIT, "{}"))
        if champion is not None and champion.version == challenger.version:
            seen = hook.version_metrics(challenger)
            decision = challenger.tags.get(TAG_DECISION, "promoted")
            return self._summary(
                challenger,
                decision=decision,
                moved=decision == "promoted" and audit.get("decided_by") == self.decided_by,
                metrics={m: seen["metrics"].get(m) for m in self.gates.challenger_metrics},
                metrics_run=seen,
                compared_to=audit.get("compared_to"),
                reasons=[f"version {challenger.version} is already {self.champion_alias}"],
                record_uri=audit.get("record"),
                champion=challenger.version,
            )
        chal, champ, metrics, champion_metrics, outcome = self._judge(challenger, champion)
        champion_version = champion.version if champion else None
        fingerprint = _fingerprint(
            challenger.version, champion_version, metrics, champion_metrics, self.gates, self.evidence
        )
        record_uri = audit.get("record")
        if audit.get("fingerprint") != fingerprint or not record_uri:
            record_uri = self._record(challenger, chal, champion_version, champ, outcome, fingerprint)
        moved = outcome["decision"] == "promoted"
        if moved:
            # previous first, then champion: the model always has a champion, and the old one is
            # already reachable for rollback when the new one takes over
            if champion_version is not None:
                hook.set_alias(name, self.previous_alias, champion_version)
            hook.set_alias(name, self.champion_alias, challenger.version)
        return self._summary(
            challenger,
            decision=outcome["decision"],
            moved=moved,
            metrics=metrics,
            metrics_run=chal,
            compared_to=champion_version,
            reasons=outcome["reasons"],
            record_uri=record_uri,
            champion=challenger.version if moved else champion_version,
        )

    def preview(self) -> dict[str, Any] | None:
        """
        The decision the gates would make now, with nothing written; None when the challenger is
        already the champion.
        """
        challenger = self.hook.model_version(self.model_name, self.challenger)
        champion = self.hook.alias_target(self.model_name, self.champion_alias)
        if champion is not None and champion.version == challenger.version:
            return None
        _, _, metrics, champion_metrics, outcome = self._judge(challenger, champion)
        return {
            "model_name": self.model_name,
            "version": challenger.version,
            "champion_version": champion.version if champion else None,
            "metrics": metrics,
            "champion_metrics": champion_metrics,
            "gates": asdict(self.gates),
            **outcome,
        }

    def _judge(self, challenger, champion) -> tuple[dict, dict | None, dict, dict | None, dict]:
        """Both versions' metrics (runs and the gated values) and the gates' outcome."""
        chal = self.hook.version_metrics(challenger, self.gates.challenger_metrics)
        champ = self.hook.version_metrics(champion, self.gates.compared_metrics) if champion else None
        metrics = {m: chal["metrics"][m] for m in self.gates.challenger_metrics}
        champion_metrics = {m: champ["metrics"][m] for m in self.gates.compared_metrics} if champ else None
        return (
            chal,
            champ,
            metrics,
            champion_metrics,
            decide(self.gates, metrics, champion_metrics, self.evidence),
        )

    def _record(self, challenger, chal, champion_version, champ, outcome, fingerprint) -> str:
        decided_at = datetime.now(UTC).isoformat()
        record = {
            "model_name": self.model_name,
            "decision": outcome["decision"],
            "reasons": outcome["reasons"],
            "checks": outcome["checks"],
            "challenger": {
                "version": challenger.version,
                "run_id": challenger.run_id,
                "metrics_run_id": chal["run_id"],
                "metrics": chal["metrics"],
                "model_uri": f"models:/{self.model_name}/{challenger.version}",
            },
            "champion": None
            if champ is None
            else {
                "version": champion_version,
                "metrics_run_id": champ["run_id"],
                "metrics": champ["metrics"],
            },
            "gates": asdict(self.gates),
            "evidence": dict(self.evidence),
            "aliases": {"champion": self.champion_alias, "previous": self.previous_alias},
            "decided_by": self.decided_by,
            "decided_at": decided_at,
            "fingerprint": fingerprint,
        }
        uri = self.write_record(record)
        audit = {
            "record": uri,
            "compared_to": champion_version,
            "decided_by": self.decided_by,
            "decided_at": decided_at,
            "fingerprint": fingerprint,
        }
        tags = {
            TAG_DECISION: outcome["decision"],
            TAG_REASONS: "; ".join(outcome["reasons"])[:4000] or "all gates passed",
            TAG_AUDIT: json.dumps(audit, sort_keys=True),
        }
        self.hook.set_version_tags(self.model_name, challenger.version, tags)
        return uri

    def _summary(
        self, challenger, *, decision, moved, metrics, metrics_run, compared_to, reasons, record_uri, champion
    ):
        return {
            "model_name": self.model_name,
            "decision": decision,
            "champion_moved": moved,
            "version": challenger.version,
            "run_id": challenger.run_id,
            "model_uri": f"models:/{self.model_name}/{challenger.version}",
            "metrics": metrics,
            "metrics_run_id": metrics_run["run_id"],
            "experiment_id": metrics_run["experiment_id"],
            "compared_to": compared_to,
            "champion_version": champion,
            "reasons": reasons,
            "record_uri": record_uri,
        }


def _fingerprint(*parts: Any) -> str:
    encoded = json.dumps(
        [asdict(p) if isinstance(p, PromotionGates) else p for p in parts], sort_keys=True, default=str
    )
    return hashlib.sha256(encoded.encode()).hexdigest()[:32]
