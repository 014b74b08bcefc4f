"""CloudEvents as KServe's request logger sends them (pkg/logger/worker.go, handler.go), for the sink's tests and bench."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

REQUEST, RESPONSE = "request", "response"


def attributes(
    kind: str,
    event_id: str,
    deployment: str,
    model_name: str,
    version: str,
    at: datetime,
    endpoint: str = "default",
) -> dict[str, str]:
    """
    The attributes and extensions worker.go sets: ``ce-id`` shared by a request and its response, the
    InferenceService's name and the annotations listed in the logger's ``metadataAnnotations``.

    :param kind: ``request`` or ``response``.
    :param event_id: the request's id.
    :param deployment: InferenceService name.
    :param model_name: the ``mlplat.io/model-name`` annotation.
    :param version: the ``mlplat.io/model-version`` annotation.
    :param at: when KServe received the request (or its answer).
    :param endpoint: ``default`` or ``canary``.
    """
    stamp = at.isoformat().replace("+00:00", "Z")
    return {
        "id": event_id,
        "type": f"org.kubeflow.serving.inference.{kind}",
        "source": "http://localhost:9081/",
        "time": stamp,
        "recordedtime": stamp,
        "inferenceservicename": deployment,
        "namespace": "ml",
        "component": "predictor",
        "endpoint": endpoint,
        "metadata": "{}",
        "annotations": json.dumps({"mlplat.io/model-name": model_name, "mlplat.io/model-version": version}),
    }


def binary(attrs: dict[str, str], body: Any) -> tuple[dict[str, str], bytes]:
    """
    (headers, body) of a binary-mode event: attributes as ``ce-`` headers (unencoded, as KServe's Go SDK
    writes them), the inference body as sent or answered.

    :param attrs: from :func:`attributes`.
    :param body: the JSON request or response.
    """
    headers = {"ce-specversion": "1.0", **{f"ce-{k}": v for k, v in attrs.items()}}
    return {**headers, "content-type": "application/json"}, json.dumps(body).encode()


def structured(attrs: dict[str, str], body: Any) -> tuple[dict[str, str], bytes]:
    """
    (headers, body) of a structured-mode event: one JSON document holding attributes and data.

    :param attrs: from :func:`attributes`.
    :param body: the JSON request or response.
    """
    document = {"specversion": "1.0", **attrs, "datacontenttype": "application/json", "data": body}
    return {"content-type": "application/cloudevents+json"}, json.dumps(document).encode()


def v2_response(event_id: str, deployment: str, predictions: list[int]) -> dict[str, Any]:
    """
    A V2 response with one ``predict`` tensor, as the model server answers.

    :param event_id: the request's id.
    :param deployment: the model name answered with.
    :param predictions: one per row.
    """
    output = {"name": "predict", "shape": [len(predictions)], "datatype": "INT64", "data": predictions}
    return {"id": event_id, "model_name": deployment, "outputs": [output]}
