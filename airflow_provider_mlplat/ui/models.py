"""What the Models view shows, read from the connections the DAGs use; each part fails on its own."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError

if TYPE_CHECKING:
    from airflow_provider_mlplat.ui.airflow_api import UserAirflowAPI

#: versions listed per model: the newest ones, plus every version an alias points at
NEWEST = 10
ROLLOUT_RECORD_TAG = "mlplat.rollout.decision_record"
ROLLOUT_DEPLOYMENT_TAG = "mlplat.rollout.deployment"


@dataclass
class Part:
    """
    One part of the view: its value, or the error that kept it from being read.

    :param value: what was read.
    :param error: what failed, for the page.
    """

    value: Any = None
    error: str | None = None


def read_part(read: Callable[[], Any]) -> Part:
    """
    Read one part; an error becomes the part's message instead of failing the page.

    :param read: returns the part's value.
    """
    try:
        return Part(read())
    except MLPlatConfigError as err:
        return Part(error=str(err))
    except Exception as err:
        return Part(error=f"{type(err).__name__}: {err}")


class ModelsReader:
    """
    Reads the registry (MLflow), serving (KServe), decision records (artifact storage) and asset
    events (Airflow, as the user) for the Models view, with a bounded number of calls per model.

    :param mlflow_conn_id: ``mlflow`` connection.
    :param kserve_conn_id: ``kserve`` connection.
    :param airflow: the REST API as the logged-in user (asset events for lineage), or None.
    :param newest: how many of the newest versions to list.
    """

    def __init__(
        self,
        mlflow_conn_id: str = "mlflow_default",
        kserve_conn_id: str = "kserve_default",
        airflow: UserAirflowAPI | None = None,
        newest: int = NEWEST,
    ) -> None:
        from airflow_provider_mlplat.hooks.mlflow import MLflowHook

        self.mlflow = MLflowHook(mlflow_conn_id)
        self.kserve_conn_id, self.airflow, self.newest = kserve_conn_id, airflow, newest

    def models(self, page_token: str | None = None, max_results: int = 100) -> dict[str, Any]:
        """
        One page of registered models with their aliases (one registry call).

        :param page_token: the page after a previous one.
        :param max_results: models per page.
        """
        page = self.mlflow.client.search_registered_models(
            max_results=max_results, order_by=["name ASC"], page_token=page_token or None
        )
        return {
            "models": [{"name": m.name, "aliases": dict(m.aliases or {})} for m in page],
            "next_page_token": page.token,
        }

    def model(self, name: str) -> dict[str, Part]:
        """
        Every part of one model's page.

        :param name: registered model name.
        """
        registry = read_part(lambda: self.registry(name))
        versions = registry.value["versions"] if registry.value else None

        def needing_versions(read: Callable[[list[dict[str, Any]]], Any]) -> Part:
            if versions is None:
                return Part(error=f"needs the registry: {registry.error}")
            return read_part(lambda: read(versions))

        serving = read_part(lambda: self.serving(name))
        return {
            "registry": registry,
            "serving": serving,
            "rollout": needing_versions(self.last_rollout),
            "promotion": needing_versions(self.last_promotion),
            "drift": needing_versions(self.last_drift),
            "lineage": needing_versions(lambda vs: self.lineage(name, vs, serving.value)),
        }

    # -- the parts --------------------------------------------------------------------------------

    def registry(self, name: str) -> dict[str, Any]:
        """
        The model's aliases and versions: the newest ``newest`` plus every aliased one.

        :param name: registered model name.
        """
        aliases = dict(self.mlflow.registered_model(name).aliases or {})
        found = self.mlflow.client.search_model_versions(
            filter_string=f"name = '{name}'", max_results=self.newest, order_by=["version_number DESC"]
        )
        by_number = {str(v.version): v for v in found}
        for version in set(aliases.values()) - set(by_number):
            by_number[version] = self.mlflow.client.get_model_version(name, version)
        versions = []
        for number in sorted(by_number, key=int, reverse=True):
            v = by_number[number]
            versions.append(
                {
                    "version": number,
                    "aliases": sorted(a for a, n in aliases.items() if n == number),
                    "created": v.creation_timestamp,
                    "status": v.status,
                    "run_id": v.run_id,
                    "tags": dict(v.tags or {}),
                    "url": self.mlflow.model_version_url(name, number),
                }
            )
        return {"aliases": aliases, "versions": versions}

    def serving(self, name: str) -> dict[str, Any] | None:
        """
        Where the model serves on the ``kserve`` connection's target: traffic per version, revision, URL.

        :param name: registered model name.
        """
        from airflow_provider_mlplat.hooks.kserve import KServeHook
        from airflow_provider_mlplat.hooks.kserve_target import deployment_name

        target = KServeHook(self.kserve_conn_id).target()
        deployment = deployment_name(name)
        current = target.current(deployment)
        if current is None:
            return None
        facts = target.describe(deployment)
        return {
            "deployment": deployment,
            "namespace": target.namespace,
            "mode": current.mode,
            "stable": current.stable,
            "canary": current.canary,
            **facts,
        }

    def last_rollout(self, versions: list[dict[str, Any]]) -> dict[str, Any] | None:
        """
        The newest rollout decision record among the listed versions: steps, canary figures and thresholds.

        :param versions: the listed versions, newest first.
        """
        from airflow_provider_mlplat.artifacts import read_json

        for v in versions:
            if uri := v["tags"].get(ROLLOUT_RECORD_TAG):
                record = read_json(uri)
                return {
                    "version": v["version"],
                    "outcome": record.get("outcome"),
                    "reason": record.get("reason"),
                    "steps": record.get("steps"),
                    "thresholds": record.get("analysis"),
                    "history": record.get("history", []),
                    "traffic": record.get("traffic"),
                    "url": record.get("url"),
                    "finished_at": record.get("finished_at"),
                    "record_uri": uri,
                }
        return None

    def last_promotion(self, versions: list[dict[str, Any]]) -> dict[str, Any] | None:
        """
        The newest promotion decision among the listed versions: gates, checks, reasons, evidence.

        :param versions: the listed versions, newest first.
        """
        from airflow_provider_mlplat.artifacts import read_json
        from airflow_provider_mlplat.promotion import TAG_AUDIT, TAG_DECISION

        for v in versions:
            if decision := v["tags"].get(TAG_DECISION):
                audit = json.loads(v["tags"].get(TAG_AUDIT, "{}"))
                record = read_json(audit["record"]) if audit.get("record") else {}
                return {
                    "version": v["version"],
                    "decision": decision,
                    "reasons": record.get("reasons", []),
                    "checks": record.get("checks", []),
                    "gates": record.get("gates", {}),
                    "evidence": record.get("evidence", {}),
                    "compared_to": audit.get("compared_to"),
                    "decided_by": audit.get("decided_by"),
                    "decided_at": audit.get("decided_at"),
                    "record_uri": audit.get("record"),
                }
        return None

    def last_drift(self, versions: list[dict[str, Any]]) -> dict[str, Any] | None:
        """
        The newest drift check among the listed versions: share, drifted features, report.

        :param versions: the listed versions, newest first.
        """
        from airflow_provider_mlplat.hooks.mlflow import DRIFT_TAG

        checks = [
            {"version": v["version"], **json.loads(v["tags"][DRIFT_TAG])}
            for v in versions
            if DRIFT_TAG in v["tags"]
        ]
        return max(checks, key=lambda c: c["window_end"]) if checks else None

    def lineage(
        self, name: str, versions: list[dict[str, Any]], serving: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """
        Feature view window -> training set (hash) -> version -> deployment -> drift checks, for the
        version that serves most traffic (else the champion).

        :param name: registered model name.
        :param versions: the listed versions.
        :param serving: the serving part (None when nothing serves or it could not be read).
        """
        from datetime import UTC, datetime

        from airflow_provider_mlplat.hooks.mlflow import (
            DRIFT_TAG,
            TRAINING_SET_HASH_TAG,
            TRAINING_SET_TAG,
            TRAINING_SOURCE_TAG,
        )

        by_number = {v["version"]: v for v in versions}
        traffic = (serving or {}).get("traffic") or {}
        number = max(traffic, key=traffic.get) if traffic else None
        if number is None:
            number = next((v["version"] for v in versions if "champion" in v["aliases"]), None)
        if number is None or number not in by_number:
            return None
        v, tags = by_number[number], by_number[number]["tags"]
        created = datetime.fromtimestamp(v["created"] / 1000, UTC).isoformat()
        features = None
        if self.airflow is not None:
            events = self.airflow.asset_events("feast://", before=created)
            features = [{"uri": e["uri"], **(e.get("extra") or {})} for e in events]
        return {
            "feature_views": features,
            "training_set": {
                "uri": tags.get(TRAINING_SET_TAG),
                "content_hash": tags.get(TRAINING_SET_HASH_TAG),
                "source_uri": tags.get(TRAINING_SOURCE_TAG),
            },
            "version": {"version": number, "created": created, "url": v["url"], "run_id": v["run_id"]},
            "deployment": tags.get(ROLLOUT_DEPLOYMENT_TAG),
            "drift": json.loads(tags[DRIFT_TAG]) if DRIFT_TAG in tags else None,
        }
