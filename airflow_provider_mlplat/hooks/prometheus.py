"""Prometheus hook: PromQL instant and range queries over the HTTP API; pushes to a Pushgateway."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable
from airflow_provider_mlplat.extras import require_extra
from airflow_provider_mlplat.hooks.base import MLPlatHook


@dataclass(frozen=True)
class Sample:
    """
    One gauge value to push.

    :param name: metric name.
    :param help: metric description.
    :param value: the value.
    :param labels: label names and values (the same names for every sample of a metric).
    """

    name: str
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


class PrometheusHook(MLPlatHook):
    """
    Queries a Prometheus server and pushes batch-job metrics to its Pushgateway. The connection's
    host is the base URL; login + password give basic auth, a password alone is a bearer token
    (for Prometheus; the Pushgateway, from the ``pushgateway_url`` extra, is reached without them).

    :param prometheus_conn_id: Airflow connection id of type ``prometheus``.
    """

    conn_name_attr = "prometheus_conn_id"
    conn_type = "prometheus"
    default_conn_name = "prometheus_default"
    hook_name = "Prometheus"

    def __init__(self, prometheus_conn_id: str = default_conn_name) -> None:
        super().__init__(conn_id=prometheus_conn_id)

    @property
    def base_url(self) -> str:
        """The server's base URL."""
        host = (self.connection.host or "").rstrip("/")
        if not host:
            raise ValueError(
                f"connection {self.conn_id!r} has no host: set the URL, e.g. http://127.0.0.1:9090"
            )
        return host if "://" in host else f"http://{host}:{self.connection.port or 9090}"

    def get_conn(self):
        """An ``httpx.Client`` for the server, with the connection's credentials."""
        import httpx

        login, password = self.connection.login, self.connection.password
        auth = (login, password) if login and password else None
        headers = {"Authorization": f"Bearer {password}"} if password and not login else None
        return httpx.Client(base_url=self.base_url, auth=auth, headers=headers, timeout=30)

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        import httpx

        try:
            with self.get_conn() as client:
                response = client.get(path, params=params)
        except httpx.HTTPError as err:
            raise MLPlatServiceUnavailable(f"Prometheus at {self.base_url} did not answer: {err}") from None
        body = (
            response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        )
        if response.status_code != 200 or body.get("status") != "success":
            raise MLPlatServiceUnavailable(
                f"Prometheus query {params.get('query')!r} failed: HTTP {response.status_code} "
                f"{body.get('errorType', '')} {body.get('error', response.text[:200])}"
            )
        return body["data"]

    def query(self, promql: str, time: datetime | float | None = None) -> list[dict[str, Any]]:
        """
        An instant query; returns the result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``).

        :param promql: the PromQL expression.
        :param time: evaluation time (default: now).
        """
        params: dict[str, Any] = {"query": promql}
        if time is not None:
            params["time"] = time.timestamp() if isinstance(time, datetime) else time
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_value(self, promql: str, time: datetime | float | None = None) -> float | None:
        """
        The single number an instant query returns; None when it returns no sample or NaN.

        :param promql: a PromQL expression that yields at most one series.
        :param time: evaluation time (default: now).
        """
        result = self.query(promql, time)
        if len(result) > 1:
            raise ValueError(f"{promql!r} returned {len(result)} series, expected at most one")
        value = float(result[0]["value"][1]) if result else math.nan
        return None if math.isnan(value) else value

    def query_range(
        self, promql: str, start: datetime | float, end: datetime | float, step: float
    ) -> list[dict[str, Any]]:
        """
        A range query; returns the result matrix (``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``).

        :param promql: the PromQL expression.
        :param start: first evaluation time.
        :param end: last evaluation time.
        :param step: seconds between evaluations.
        """

        def ts(value: datetime | float) -> float:
            return value.timestamp() if isinstance(value, datetime) else value

        data = self._get(
            "/api/v1/query_range", {"query": promql, "start": ts(start), "end": ts(end), "step": step}
        )
        return data["result"]

    @property
    def pushgateway_url(self) -> str | None:
        """The Pushgateway's URL (``pushgateway_url`` extra); None when the connection names none."""
        url = self.extra("pushgateway_url")
        return url.rstrip("/") if url else None

    def push(self, job: str, grouping_key: Mapping[str, str], samples: Sequence[Sample]) -> str | None:
        """
        Replace the group ``job`` + ``grouping_key`` on the Pushgateway with these gauges (a group's
        metrics not pushed again disappear); returns the URL pushed to, None when no Pushgateway is set.

        :param job: the ``job`` label of the group.
        :param grouping_key: further labels identifying the group.
        :param samples: the gauge values.
        """
        require_extra("evidently", "PrometheusHook.push")
        from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

        url = self.pushgateway_url
        if url is None:
            return None
        registry, gauges = CollectorRegistry(), {}
        for sample in samples:
            if sample.name not in gauges:
                gauges[sample.name] = Gauge(sample.name, sample.help, tuple(sample.labels), registry=registry)
            gauge = gauges[sample.name]
            (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)
        try:
            push_to_gateway(url, job=job, registry=registry, grouping_key=dict(grouping_key), timeout=30)
        except OSError as err:  # URLError and HTTPError are OSErrors
            raise MLPlatServiceUnavailable(
                f"Pushgateway at {url} refused the push of {job!r}: {err}"
            ) from None
        return url

    def probe(self) -> str:
        """Read the server's build info."""
        info = self._get("/api/v1/status/buildinfo", {})
        return f"Prometheus {info.get('version')} at {self.base_url}"
