"""Every query of the Grafana dashboards is valid PromQL that returns series from a real platform."""

from __future__ import annotations

import json
import shutil
import threading
import uuid

import httpx
import pytest

from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable
from airflow_provider_mlplat.hooks.prometheus import PrometheusHook
from airflow_provider_mlplat.operators.evidently import PUSH_JOB, drift_samples
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.ci import unavailable
from airflow_provider_mlplat.testing.services import running_platform
from airflow_provider_mlplat.testing.waiting import wait_for
from tests.conftest import REPO

pytestmark = pytest.mark.integration
DASHBOARDS = sorted((REPO / "include" / "grafana").glob("*.json"))
#: what Grafana substitutes for the dashboards' variables ("All" deployments, a 4-scrape window)
VARIABLES = {"$deployment": ".+", "$__rate_interval": "30s"}
FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips", "trip_distance_km")


def queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL with the variables substituted) of every panel target."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in VARIABLES.items():
                    expr = expr.replace(name, value)
                found.append((path.name, panel["title"], expr))
    return found


def test_dashboards_are_well_formed():
    assert {p.stem for p in DASHBOARDS} == {"serving", "canary", "drift"}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"].startswith("mlplat-") and dashboard["panels"]
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert all("$" not in expr for _, _, expr in queries()), "a dashboard uses an unknown variable"


@pytest.fixture(scope="module")
def platform(mlflow_server, tmp_path_factory):
    """Model server + Prometheus + Pushgateway; two versions of a model serving a 50% canary."""
    import mlflow
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from airflow_provider_mlplat.hooks.base import scoped_env

    for binary in ("prometheus", "prometheus-pushgateway"):
        if not shutil.which(binary):
            unavailable(f"{binary} is not installed (Debian: apt-get install {binary})")
    mlflow.set_tracking_uri(mlflow_server)
    frame = pd.DataFrame(
        [[0.1 * (i % 10), 0.5, float(i % 30), 1.0 + i % 7] for i in range(100)], columns=FEATURES
    )
    model, name = (
        LogisticRegression().fit(frame, (frame["conv_rate"] > 0.5).astype(int)),
        f"gd_{uuid.uuid4().hex[:8]}",
    )
    with scoped_env({"MLFLOW_LOG_UV_FILES": "false"}):
        for _ in range(2):
            mlflow.sklearn.log_model(
                model, name="model", input_example=frame.head(2), pip_requirements=["scikit-learn"],
                registered_model_name=name,
            )  # fmt: skip
    home = tmp_path_factory.mktemp("grafana")
    mlflow_port = int(mlflow_server.rsplit(":", 1)[1])
    services = ("model-server", "prometheus", "pushgateway")
    with running_platform(home, services, mlflow_port=mlflow_port) as platform:
        url = f"http://127.0.0.1:{platform.settings.model_server_port}"
        for version in ("1", "2"):
            load = httpx.post(f"{url}/v2/repository/models/{name}@{version}/load", timeout=300)
            assert load.status_code == 200, load.text
        deployment = name.replace("_", "-")
        body = {"model_name": name, "stable": "1", "canary": "2", "canary_percent": 50}
        assert httpx.put(f"{url}/mlplat/v1/deployments/{deployment}", json=body).status_code == 200
        set_connection("prometheus_grafana", **platform.connections()["prometheus_default"])
        yield {"url": url, "model": name, "deployment": deployment}


def traffic(url: str, deployment: str, stop: threading.Event) -> None:
    """V1 requests until stopped; every tenth one malformed (a 4xx)."""
    with httpx.Client(timeout=10) as client:
        i = 0
        while not stop.wait(0.02):
            i += 1
            row = dict(zip(FEATURES, (0.1 * (i % 10), 0.5, float(i % 30), 2.0), strict=True))
            body = {"instances": [row]} if i % 10 else {"rows": "not instances"}
            client.post(f"{url}/v1/models/{deployment}:predict", json=body)


def test_every_panel_query_parses_and_returns_series(platform):
    summary = {
        "model_name": platform["model"],
        "deployment": platform["deployment"],
        "drift_share": 0.6,
        "detected": True,
        "scores": {"conv_rate": 0.001, "acc_rate": 0.4},
    }
    prometheus = PrometheusHook("prometheus_grafana")
    # the drift metrics exactly as the operator pushes them
    assert prometheus.push(PUSH_JOB, {"model": platform["model"]}, drift_samples(summary)) is not None
    stop = threading.Event()
    sender = threading.Thread(target=traffic, args=(platform["url"], platform["deployment"], stop))
    sender.start()
    empty: list[tuple[str, str, str]] = []

    def every_query_has_series() -> bool:
        empty.clear()
        for query in queries():
            try:
                result = prometheus.query(query[2])
            except MLPlatServiceUnavailable as err:  # what Prometheus says of invalid PromQL
                pytest.fail(f"{query[0]} / {query[1]}: {err}")
            if not result:
                empty.append(query)
        return not empty

    try:  # a wait for scrapes, not a timing assertion
        wait_for(
            every_query_has_series, 120, lambda: f"series of every panel query; none for {sorted(empty)}", 2
        )
    finally:
        stop.set()
        sender.join()
    served = prometheus.query(
        f'sum by (model_version) (mlplat_inference_requests_total{{deployment="{platform["deployment"]}"}})'
    )
    assert {s["metric"]["model_version"] for s in served} == {"1", "2"}  # the canary split served both
    scores = prometheus.query(f'mlplat_drift_score{{model="{platform["model"]}"}}')
    assert {s["metric"]["feature"] for s in scores} == {"conv_rate", "acc_rate"}
    assert all(s["metric"]["job"] == "mlplat_drift" for s in scores)  # honor_labels kept the pushed job
