"""The KServe request-log sink without a server process: decoding, pairing, expiry, refusals."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import orjson
import pytest
from cloudevents.http import CloudEvent, to_binary, to_structured

ANNOTATIONS = {"mlplat.io/model-name": "trip", "mlplat.io/model-version": "3"}


def event(kind: str, id_: str, data, annotations=ANNOTATIONS, **attrs):
    """A request-logger event as KServe's worker.go builds it."""
    return CloudEvent(
        {
            "id": id_,
            "type": f"org.kubeflow.serving.inference.{kind}",
            "source": "http://localhost:9081/",
            "time": "2026-03-03T10:00:00.123456789Z",
            "inferenceservicename": "trip-isvc",
            "namespace": "ml",
            "component": "predictor",
            "endpoint": "default",
            "metadata": "{}",
            "annotations": orjson.dumps(annotations).decode()
            if isinstance(annotations, dict)
            else annotations,
            "datacontenttype": "application/json",
            **attrs,
        },
        data,
    )


@pytest.fixture
def sink_app(tmp_path):
    """(HTTP client of an app with only the sink, the sink, a fake clock, the writer)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mlplat_model_server.inference_log import InferenceLogWriter
    from mlplat_model_server.request_log import RequestLogSink, request_log_api

    now = [0.0]
    writer = InferenceLogWriter(tmp_path)
    sink = RequestLogSink(writer, pair_timeout=30, clock=lambda: now[0])
    app = FastAPI()
    app.include_router(request_log_api(sink))
    with TestClient(app) as client:
        yield client, sink, now, writer


def post(client, headers_body):
    headers, body = headers_body
    return client.post("/mlplat/v1/request-log", headers=headers, content=body)


def count(outcome: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("mlplat_request_log_events_total", {"outcome": outcome})


def test_pairs_v1_binary_and_v2_structured_in_either_order_into_the_router_s_rows(sink_app, tmp_path):
    from mlplat_model_server.inference_log import read_inference_log
    from mlplat_model_server.models import DeploymentRouter, MLflowVersionModel

    client, _, _, writer = sink_app
    paired = count("paired")
    v1_request = {"instances": [{"x": 1.5, "y": 2}, {"x": -1.0, "y": 4}]}
    assert post(client, to_binary(event("request", "a", v1_request))).json() == {
        "outcome": "pending",
        "rows": 0,
    }
    headers, body = to_binary(event("response", "a", {"predictions": [1, 0]}))
    headers["ce-annotations"] = quote(headers["ce-annotations"])  # as HTTP binding 1.0.2 senders encode it
    answer = client.post("/mlplat/v1/request-log", headers=headers, content=body)
    assert answer.json() == {"outcome": "paired", "rows": 2}
    v2_request = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [0.5]},
                             {"name": "y", "shape": [1], "datatype": "INT64", "data": [7]}]}  # fmt: skip
    v2_response = {"id": "b", "model_name": "trip-isvc", "outputs": [
        {"name": "predict", "shape": [1], "datatype": "INT64", "data": [1]}]}  # fmt: skip
    later = "2026-03-03T10:00:01Z"
    assert post(client, to_structured(event("response", "b", v2_response, time=later))).json()["rows"] == 0
    assert post(client, to_structured(event("request", "b", v2_request))).json()["rows"] == 1
    assert count("paired") - paired == 4

    class Fixed(MLflowVersionModel):  # the local server's own log, for the shape of its rows
        def __init__(self):
            super().__init__("trip", "3")
            self.ready = True

        def predict_frame(self, frame):
            return [1] * len(frame)

    asyncio.run(
        DeploymentRouter("trip-isvc", Fixed(), inference_log=writer)({"instances": [{"x": 2.0, "y": 1}]})
    )
    writer.flush()
    frame = read_inference_log(tmp_path, "trip-isvc")
    assert list(frame.columns) == ["x", "y", "timestamp", "deployment", "model_name", "model_version",
                                   "request_id", "status_code", "prediction"]  # fmt: skip
    sink_rows = frame.iloc[:3].drop(columns="timestamp").to_dict("records")
    assert sink_rows == [
        {"x": 1.5, "y": 2, "deployment": "trip-isvc", "model_name": "trip", "model_version": "3",
         "request_id": "a", "status_code": 200, "prediction": 1},
        {"x": -1.0, "y": 4, "deployment": "trip-isvc", "model_name": "trip", "model_version": "3",
         "request_id": "a", "status_code": 200, "prediction": 0},
        {"x": 0.5, "y": 7, "deployment": "trip-isvc", "model_name": "trip", "model_version": "3",
         "request_id": "b", "status_code": 200, "prediction": 1},
    ]  # fmt: skip
    # the request's time (KServe's nanoseconds cut to microseconds), not the response's or the arrival's
    assert [str(t) for t in frame["timestamp"][:3]] == ["2026-03-03 10:00:00.123456+00:00"] * 3


def test_unpaired_halves_expire_and_duplicates_are_counted(sink_app):
    client, sink, now, writer = sink_app
    before = {outcome: count(outcome) for outcome in ("unpaired", "duplicate", "paired")}
    post(client, to_binary(event("request", "lonely", {"instances": [{"x": 1}]})))
    now[0] = 10
    post(client, to_binary(event("response", "late", {"predictions": [1]})))
    assert (
        post(client, to_binary(event("response", "late", {"predictions": [1]}))).json()["outcome"]
        == "duplicate"
    )
    assert sink.expire() == 0
    now[0] = 30  # the first half waited 30 s
    assert sink.expire() == 1
    assert post(client, to_binary(event("request", "late", {"instances": [{"x": 2}]}))).json()["rows"] == 1
    post(client, to_binary(event("request", "left", {"instances": [{"x": 3}]})))
    sink.close()  # a half still waiting when the server stops is unpaired too
    after = {outcome: count(outcome) - before[outcome] for outcome in before}
    assert after == {"unpaired": 2, "duplicate": 1, "paired": 2}
    assert writer.flush() == 1


BAD = [
    ({"content-type": "application/json"}, b'{"instances": [{"x": 1}]}', "not a CloudEvent with a JSON body"),
    (*to_binary(event("reply", "t", {"instances": [{"x": 1}]})), "type 'org.kubeflow.serving.inference.reply'"),
    (*to_binary(event("request", "n", {"instances": [{"x": 1}]}, annotations={})),
     "annotations mlplat.io/model-name=None and mlplat.io/model-version=None"),
    (*to_binary(event("request", "v", {"instances": [{"x": 1}]},
                      annotations={**ANNOTATIONS, "mlplat.io/model-version": "champion"})),
     "mlplat.io/model-version='champion' must name"),
    ({**to_binary(event("request", "j", {}))[0]}, b"not json", "JSONDecodeError"),
    (*to_binary(event("request", "p", {"instances": [[1, 2]]})), "not a V1 request with named features"),
    (*to_binary(event("request", "s", {"inputs": [{"name": "x", "shape": [1], "data": [1]}]})),
     "not a V2 inference request: inputs.0.datatype: Field required"),
    (*to_binary(event("request", "h", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP16", "data": [1]}]})),
     "V2 inputs cannot be decoded: Sending FP16 data via JSON is not supported"),
    (*to_structured(event("request", "x", {"instances": [{"x": 1}]}, annotations=7)),
     "extension 'annotations' must be a string holding JSON"),
    (*to_binary(event("response", "r", {"answer": 1})), "'predictions' (V1) or 'outputs' (V2)"),
    (*to_binary(event("response", "o", {"id": "o", "model_name": "m", "outputs": [
        {"name": "p", "shape": [3], "datatype": "INT64", "data": [1]}]})), "V2 outputs cannot be decoded"),
    (*to_binary(event("request", "e", {"instances": []})), "not a V1 request with named features"),
    (*to_binary(event("request", "t", {"instances": [{"x": 1}]}, time="yesterday")), "time='yesterday'"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "body", "reason"), BAD, ids=[b[2][:30] for b in BAD])
def test_malformed_events_get_400_with_the_reason_and_no_row(sink_app, headers, body, reason):
    client, sink, _, writer = sink_app
    malformed = count("malformed")
    answer = client.post("/mlplat/v1/request-log", headers=headers, content=body)
    assert answer.status_code == 400 and reason in answer.json()["detail"], answer.text
    assert count("malformed") - malformed == 1
    assert not sink._pending and writer.flush() == 0


def test_a_pair_whose_counts_differ_is_refused_whole(sink_app):
    client, sink, _, writer = sink_app
    malformed = count("malformed")
    post(client, to_binary(event("request", "m", {"instances": [{"x": 1}, {"x": 2}]})))
    answer = post(client, to_binary(event("response", "m", {"predictions": [1]})))
    assert answer.status_code == 400
    assert "1 prediction(s) for 2 request row(s)" in answer.json()["detail"]
    assert count("malformed") - malformed == 2 and writer.flush() == 0 and not sink._pending


def test_without_an_inference_log_the_sink_answers_503():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mlplat_model_server.request_log import request_log_api

    app = FastAPI()
    app.include_router(request_log_api(None))
    answer = TestClient(app).post("/mlplat/v1/request-log", content=b"{}")
    assert answer.status_code == 503 and "MLPLAT_SERVING_INFERENCE_LOG" in answer.json()["detail"]


def test_a_pair_timeout_that_is_not_positive_is_refused(tmp_path):
    from mlplat_model_server.inference_log import InferenceLogWriter
    from mlplat_model_server.request_log import RequestLogSink

    with pytest.raises(
        ValueError, match=r"pair timeout 0.0 \(MLPLAT_SERVING_REQUEST_LOG_PAIR_SECONDS\) must be"
    ):
        RequestLogSink(InferenceLogWriter(tmp_path), pair_timeout=0.0)


def test_the_same_id_on_two_deployments_is_two_pairs(sink_app):
    client, sink, _, _ = sink_app
    for deployment in ("trip-isvc", "other-isvc"):
        answer = post(
            client,
            to_binary(event("request", "same", {"instances": [{"x": 1}]}, inferenceservicename=deployment)),
        )
        assert answer.json()["outcome"] == "pending"
    answer = post(
        client, to_binary(event("response", "same", {"predictions": [1]}, inferenceservicename="other-isvc"))
    )
    assert answer.json() == {"outcome": "paired", "rows": 1}
    assert [half.deployment for _, half in sink._pending.values()] == ["trip-isvc"]
