"""KServe request-log sink: an InferenceService logger's CloudEvents, paired by ce-id, as inference log rows."""

# This module runs in the model server process only (never imported by Airflow components), so the
# serving SDKs are imported at module level.
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import cloudevents.exceptions
import orjson
from cloudevents.http import CloudEvent, from_http
from fastapi import APIRouter, HTTPException, Request, Response
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse
from kserve.protocol.rest.v2_datamodels import InferenceRequest, InferenceResponse
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from mlplat_model_server.inference_log import InferenceLogWriter
from mlplat_model_server.models import log_records, records, to_frame

# a child of KServe's logger, which the server configures
log = logging.getLogger("kserve.mlplat")

#: CloudEvent types of KServe's request logger (pkg/logger/worker.go)
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
#: InferenceService annotations naming the served version, listed in the logger's ``metadataAnnotations``
MODEL_NAME_ANNOTATION = "mlplat.io/model-name"
MODEL_VERSION_ANNOTATION = "mlplat.io/model-version"
#: outcomes of an event: each event is counted once, with the outcome it ended with
OUTCOMES = ("paired", "unpaired", "duplicate", "malformed")
EVENTS = Counter(
    "mlplat_request_log_events",
    "CloudEvents of KServe's request logger received by the sink, by how they ended",
    ("outcome",),
)
PENDING = Gauge("mlplat_request_log_pending", "Request-log events waiting for the other half of their pair")
for _outcome in OUTCOMES:  # the series exist from 0, so increase() counts the first events too
    EVENTS.labels(_outcome)


class MalformedEvent(ValueError):
    """An event the sink cannot turn into rows (answered 400, no row written)."""


@dataclass(frozen=True)
class Half:
    """
    One decoded event: a request (its rows) or a response (its predictions).

    :param id: ``ce-id``, shared by a request and its response.
    :param is_request: a request event (else a response).
    :param deployment: the InferenceService name.
    :param model_name: registered model name (annotation).
    :param model_version: model version (annotation).
    :param time: when KServe received the request or its answer.
    :param values: the request's rows, or the response's predictions.
    """

    id: str
    is_request: bool
    deployment: str
    model_name: str
    model_version: str
    time: datetime
    values: list[Any]


def _extension_json(event: CloudEvent, name: str) -> Any:
    """An extension holding JSON, as KServe's Go SDK sends it (raw) or percent-encoded (HTTP binding 1.0.2)."""
    raw = event.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise MalformedEvent(f"extension {name!r} must be a string holding JSON, not {raw!r:.200}")
    for text in (raw, unquote(raw)):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
    raise MalformedEvent(f"extension {name!r} is not JSON: {raw[:200]!r}")


def _time(event: CloudEvent) -> datetime:
    """The event's ``time`` (else KServe's ``recordedtime``, else now), in UTC."""
    for name in ("time", "recordedtime"):
        value = event.get(name)
        if value:
            try:
                # Go sends nanoseconds; Python 3.11 reads up to microseconds of any longer fraction
                stamp = datetime.fromisoformat(value)
            except ValueError:
                raise MalformedEvent(f"{name}={value!r} is not an RFC 3339 timestamp") from None
            if stamp.tzinfo is None:
                raise MalformedEvent(f"{name}={value!r} has no UTC offset")
            return stamp.astimezone(UTC)
    return datetime.now(UTC)


def request_rows(payload: Any) -> list[dict[str, Any]]:
    """
    The rows of a V1 (``instances``/``dataframe_records`` of objects, ``dataframe_split``) or V2 JSON request,
    as the local model server logs them.

    :param payload: decoded request body.
    """
    if isinstance(payload, dict) and isinstance(payload.get("inputs"), list):
        try:
            request = InferRequest.from_inference_request(InferenceRequest.model_validate(payload), "")
            return to_frame(request, None).to_dict("records")
        except ValidationError as err:
            raise MalformedEvent(f"not a V2 inference request: {_errors(err)}") from None
        except InvalidInput as err:  # e.g. FP16 data in JSON
            raise MalformedEvent(f"V2 inputs cannot be decoded: {err.reason}") from None
        except ValueError as err:
            raise MalformedEvent(f"V2 inputs do not make a table: {err}") from None
    rows = records(payload)
    if rows is not None:
        return rows
    try:
        return to_frame(payload, None).to_dict("records")
    except InvalidInput as err:
        raise MalformedEvent(f"not a V1 request with named features ({err.reason})") from None
    except (TypeError, ValueError) as err:
        raise MalformedEvent(f"V1 dataframe_split does not make a table: {err}") from None


def response_predictions(payload: Any) -> list[Any]:
    """
    One prediction per row of a V1 (``predictions``) or V2 response; several V2 outputs give
    ``{output name: value}`` per row.

    :param payload: decoded response body.
    """
    if isinstance(payload, dict) and isinstance(payload.get("predictions"), list):
        return payload["predictions"]
    if not (isinstance(payload, dict) and "outputs" in payload):
        raise MalformedEvent("a response must hold 'predictions' (V1) or 'outputs' (V2)")
    try:
        InferenceResponse.model_validate(payload)
        outputs = [(o.name, o.as_numpy().tolist()) for o in InferResponse.from_rest(payload).outputs]
    except ValidationError as err:
        raise MalformedEvent(f"not a V2 inference response: {_errors(err)}") from None
    except (InvalidInput, ValueError) as err:  # unknown datatype, data that does not fit the shape
        raise MalformedEvent(f"V2 outputs cannot be decoded: {err}") from None
    if len(outputs) == 1:
        return outputs[0][1]
    names, columns = zip(*outputs, strict=True)
    if len({len(column) for column in columns}) > 1:
        raise MalformedEvent(f"V2 outputs {list(names)} hold different numbers of rows")
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _errors(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()[:3])


def decode(headers: Any, body: bytes) -> Half:
    """
    Decode one HTTP request carrying a binary or structured CloudEvent of KServe's logger.

    :param headers: the HTTP request's headers.
    :param body: the HTTP request's body.
    """
    try:
        event = from_http(headers, body, data_unmarshaller=orjson.loads)
    except cloudevents.exceptions.GenericException as err:
        raise MalformedEvent(f"not a CloudEvent with a JSON body: {str(err)[:300]}") from None
    if event["type"] not in (REQUEST_TYPE, RESPONSE_TYPE):
        raise MalformedEvent(f"type {event['type']!r}; valid: {REQUEST_TYPE!r}, {RESPONSE_TYPE!r}")
    deployment = event.get("inferenceservicename")
    if not deployment:
        raise MalformedEvent("no 'inferenceservicename' extension: send KServe's request logger events")
    annotations = _extension_json(event, "annotations") or {}
    if not isinstance(annotations, dict):
        raise MalformedEvent(f"extension 'annotations' is not a JSON object: {annotations!r:.200}")
    model_name, version = annotations.get(MODEL_NAME_ANNOTATION), annotations.get(MODEL_VERSION_ANNOTATION)
    if not model_name or not str(version or "").isdigit():
        raise MalformedEvent(
            f"InferenceService {deployment!r}: annotations {MODEL_NAME_ANNOTATION}={model_name!r} and "
            f"{MODEL_VERSION_ANNOTATION}={version!r} must name the model and its version number: set them on the "
            "InferenceService and list both in spec.predictor.logger.metadataAnnotations"
        )
    is_request = event["type"] == REQUEST_TYPE
    values = request_rows(event.data) if is_request else response_predictions(event.data)
    if not values:
        raise MalformedEvent(f"the {'request' if is_request else 'response'} holds no row")
    return Half(event["id"], is_request, deployment, model_name, str(version), _time(event), values)


class RequestLogSink:
    """
    Pairs request and response events by id, in either order, and appends each pair's rows to the
    inference log; a half whose pair does not come within ``pair_timeout`` seconds expires.

    Call :meth:`receive` from one thread (the server's event loop); :meth:`start` runs a thread that
    expires halves while no event arrives.

    :param writer: the inference log.
    :param pair_timeout: seconds a half waits for the other one.
    :param clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        writer: InferenceLogWriter,
        pair_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not pair_timeout > 0:
            raise ValueError(
                f"request-log pair timeout {pair_timeout!r} (MLPLAT_SERVING_REQUEST_LOG_PAIR_SECONDS) must be a "
                "positive number of seconds, e.g. 60"
            )
        self.writer, self.pair_timeout, self.clock = writer, pair_timeout, clock
        # (deployment, ce-id) -> (deadline, half): a client may set the id, so it is unique per deployment only
        self._pending: OrderedDict[tuple[str, str], tuple[float, Half]] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-log-expiry", daemon=True)

    def start(self) -> RequestLogSink:
        """Start the thread that expires unpaired halves."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(min(self.pair_timeout / 2, 5.0)):
            self.expire()

    def receive(self, half: Half) -> tuple[str, int]:
        """
        Keep a half until its pair comes, or write the pair's rows; returns (outcome, rows written).

        :param half: a decoded event.
        """
        with self._lock:
            key = (half.deployment, half.id)
            waiting = self._pending.get(key)
            if waiting is None:
                self._pending[key] = (self.clock() + self.pair_timeout, half)
                PENDING.set(len(self._pending))
                return "pending", 0
            if waiting[1].is_request == half.is_request:
                EVENTS.labels("duplicate").inc()
                log.warning("request log: duplicate %s event %s ignored", _kind(half), half.id)
                return "duplicate", 0
            del self._pending[key]
            PENDING.set(len(self._pending))
        request, response = (half, waiting[1]) if half.is_request else (waiting[1], half)
        if len(request.values) != len(response.values):
            EVENTS.labels("malformed").inc()  # the half that waited; the caller counts the one that came
            raise MalformedEvent(
                f"event {half.id}: the response holds {len(response.values)} prediction(s) for "
                f"{len(request.values)} request row(s); neither half is logged"
            )
        self.writer.append(
            log_records(
                request.time,
                request.deployment,
                request.model_name,
                request.model_version,
                request.id,
                200,
                request.values,
                response.values,
            )
        )
        EVENTS.labels("paired").inc(2)
        return "paired", len(request.values)

    def expire(self) -> int:
        """Drop the halves that waited longer than ``pair_timeout``; return how many."""
        now, expired = self.clock(), []
        with self._lock:
            while self._pending:
                key, (deadline, half) = next(iter(self._pending.items()))
                if deadline > now:
                    break
                del self._pending[key]
                expired.append(half)
            PENDING.set(len(self._pending))
        self._unpaired(expired, f"no pair within {self.pair_timeout:g} s")
        return len(expired)

    def close(self) -> None:
        """Stop the expiry thread; the halves still waiting are counted unpaired."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            left = [half for _, half in self._pending.values()]
            self._pending.clear()
            PENDING.set(0)
        self._unpaired(left, "the server stopped first")

    @staticmethod
    def _unpaired(halves: list[Half], why: str) -> None:
        if not halves:
            return
        EVENTS.labels("unpaired").inc(len(halves))
        shown = ", ".join(f"{_kind(h)} {h.id} of {h.deployment}" for h in halves[:5])
        log.warning("request log: %d unpaired event(s) dropped (%s): %s", len(halves), why, shown)


def _kind(half: Half) -> str:
    return "request" if half.is_request else "response"


def request_log_api(sink: RequestLogSink | None) -> APIRouter:
    """
    ``POST /mlplat/v1/request-log``: the ``logger.url`` of InferenceServices.

    :param sink: the sink (None: the server has no inference log, and answers 503).
    """
    router = APIRouter(prefix="/mlplat/v1", tags=["mlplat"])

    @router.post("/request-log")
    async def request_log(request: Request) -> Response:
        if sink is None:
            raise HTTPException(
                503,
                "this model server has no inference log: set MLPLAT_SERVING_INFERENCE_LOG to a folder or URL",
            )
        body = await request.body()
        try:
            outcome, rows = sink.receive(decode(request.headers, body))
        except MalformedEvent as err:
            EVENTS.labels("malformed").inc()
            log.warning("request log: event %s rejected: %s", request.headers.get("ce-id", "?"), err)
            raise HTTPException(400, str(err)) from None
        # a ready response: FastAPI's validation of a returned dict would cost more than decoding the event
        return Response(orjson.dumps({"outcome": outcome, "rows": rows}), media_type="application/json")

    return router
