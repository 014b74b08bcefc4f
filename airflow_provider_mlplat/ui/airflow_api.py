"""Calls of Airflow's REST API (``/api/v2``) made with the logged-in user's own token."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def api_base_url() -> str:
    """The API server's own URL (``[api] base_url``, else ``http://127.0.0.1:<[api] port>``)."""
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="") or f"http://127.0.0.1:{conf.get('api', 'port')}"
    return base.rstrip("/")


class UserAirflowAPI:
    """
    Airflow's REST API as one user: every call carries that user's JWT, so Airflow applies their
    permissions.

    :param token: the user's JWT.
    :param base_url: API server URL (default: :func:`api_base_url`).
    """

    def __init__(self, token: str, base_url: str | None = None) -> None:
        self.token, self.base_url = token, base_url or api_base_url()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        response = httpx.request(
            method,
            f"{self.base_url}/api/v2{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
            **kwargs,
        )
        response.raise_for_status()
        return response.json()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        """
        Start a run of a DAG now; return the run.

        :param dag_id: the DAG.
        :param conf: run configuration (params).
        """
        body = {"logical_date": datetime.now(UTC).isoformat(), "conf": conf}
        return self._call("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def asset_events(
        self, uri_prefix: str, before: str | None = None, limit: int = 1
    ) -> list[dict[str, Any]]:
        """
        The newest events of the assets whose URI starts with a prefix.

        :param uri_prefix: e.g. ``feast://``.
        :param before: only events at or before this ISO 8601 time.
        :param limit: events per asset.
        """
        assets = self._call("GET", "/assets", params={"uri_pattern": uri_prefix, "limit": 100})["assets"]
        events: list[dict[str, Any]] = []
        for asset in assets:
            if not asset["uri"].startswith(uri_prefix):
                continue
            params: dict[str, Any] = {"asset_id": asset["id"], "order_by": "-timestamp", "limit": limit}
            if before:
                params["timestamp_lte"] = before
            events += self._call("GET", "/assets/events", params=params)["asset_events"]
        return sorted(events, key=lambda e: e["timestamp"], reverse=True)
