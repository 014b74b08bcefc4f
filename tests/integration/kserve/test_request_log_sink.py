"""KServe's request logger -> the model server's sink -> the inference log -> EvidentlyDriftOperator, unchanged."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest

from airflow_provider_mlplat.inference_log import read_inference_log
from airflow_provider_mlplat.operators.kserve import v2_request
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.services import running_platform
from airflow_provider_mlplat.testing.waiting import wait_for
from tests.drift_support import FEATURES, WINDOW, context, operator, register, stats
from tests.kserve_events import REQUEST, RESPONSE, attributes, binary, structured, v2_response

pytestmark = pytest.mark.integration

ROWS_PER_REQUEST = 10


def outcomes(url: str) -> dict[str, float]:
    """The sink's event counter, by outcome, from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return {
        s.labels["outcome"]: s.value
        for f in families
        for s in f.samples
        if s.name == "mlplat_request_log_events_total"
    }


@pytest.mark.timeout(240)
def test_kserve_logger_events_become_the_log_the_drift_operator_reads(
    drift_env, mlflow_server, tmp_path, monkeypatch
):
    model = register(drift_env["training_set"], versions=2)
    deployment = model.replace("_", "-")
    # the served traffic, shifted: 20 V1 requests (binary) and 10 V2 requests (structured) of 10 rows
    hours = [WINDOW[0] + timedelta(hours=h) for h in range(4)]
    frame = stats(hours, magnitude=1.0).head(310)
    events = []
    for i in range(31):
        chunk = frame.iloc[i * ROWS_PER_REQUEST : (i + 1) * ROWS_PER_REQUEST]
        rows = [{f: float(row[f]) for f in FEATURES} for _, row in chunk.iterrows()]
        at = chunk["event_timestamp"].iloc[0].to_pydatetime()
        # the last five V2 requests went to the canary, version 2
        version, endpoint = ("2", "canary") if i >= 25 else ("1", "default")
        attrs = {kind: attributes(kind, f"req-{i}", deployment, model, version, at, endpoint) for kind in (REQUEST, RESPONSE)}  # fmt: skip
        predictions = [int(r["conv_rate"] > 0.5) for r in rows]
        if i < 20:
            pair = [
                binary(attrs[REQUEST], {"instances": rows}),
                binary(attrs[RESPONSE], {"predictions": predictions}),
            ]
        else:
            pair = [structured(attrs[REQUEST], v2_request(rows)),
                    structured(attrs[RESPONSE], v2_response(f"req-{i}", deployment, predictions))]  # fmt: skip
        if i == 30:  # its response never comes: expires unpaired
            pair = pair[:1]
        events.extend(reversed(pair) if i % 3 == 0 else pair)  # a third of the responses come first

    monkeypatch.setenv("MLPLAT_SERVING_REQUEST_LOG_PAIR_SECONDS", "3")  # halves of a pair come ms apart
    mlflow_port = int(mlflow_server.rsplit(":", 1)[1])
    with running_platform(tmp_path / "platform", ("model-server",), mlflow_port=mlflow_port) as platform:
        url = f"http://127.0.0.1:{platform.settings.model_server_port}"
        before = outcomes(url)
        with httpx.Client(base_url=url, timeout=30) as client:
            answers = [client.post("/mlplat/v1/request-log", headers=h, content=b) for h, b in events]
            # malformed: a response with neither V1 predictions nor V2 outputs
            bad_attrs = attributes(RESPONSE, "bad", deployment, model, "1", WINDOW[0])
            bad = client.post("/mlplat/v1/request-log", **dict(zip(("headers", "content"), binary(bad_attrs, {"prediction": [1]}), strict=True)))  # fmt: skip
        assert [a.status_code for a in answers] == [200] * len(events)
        assert sum(a.json()["rows"] for a in answers) == 300
        assert bad.status_code == 400 and "'predictions' (V1) or 'outputs' (V2)" in bad.json()["detail"]

        log = platform.home / "inference-log"
        count = wait_for(
            lambda: outcomes(url)["unpaired"] - before["unpaired"],
            timeout=30,
            what="the unpaired request to expire",
        )
        assert count == 1
        after = outcomes(url)
        assert {k: after[k] - before[k] for k in after} == {
            "paired": 60, "unpaired": 1, "duplicate": 0, "malformed": 1
        }  # fmt: skip
        wait_for(lambda: read_inference_log(log, deployment).shape[0] >= 300, what="300 rows written")
        served = read_inference_log(log, deployment)
        assert served.shape[0] == 300  # not one row of the unpaired request
        assert served["model_version"].value_counts().to_dict() == {"1": 250, "2": 50}
        assert served["request_id"].nunique() == 30 and "req-30" not in set(served["request_id"])

        set_connection(
            "kserve_sink", conn_type="kserve", host="http://127.0.0.1:1", extra={"inference_log": str(log)}
        )
        ctx = context(f"drift_{uuid.uuid4().hex[:6]}")
        summary = operator(ctx["ti"].task_id, model, kserve_conn_id="kserve_sink").execute(ctx)
    assert summary["detected"] is True
    assert summary["rows_current"] == 300 and summary["versions_served"] == {"1": 250, "2": 50}
    assert summary["version"] == "1" and summary["features"] == list(FEATURES)
    assert {"conv_rate", "avg_speed_kmh", "cancel_rate"} <= set(summary["drifted_features"])
