"""KServe models of the local server: MLflow model versions, a weighted canary router, a repository."""

# This module runs in the model server process only (never imported by Airflow components), so the
# serving SDKs are imported at module level.
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kserve import Model
from kserve.errors import InvalidInput
from kserve.model import InferenceVerb
from kserve.model_repository import ModelRepository
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.numpy_codec import from_np_dtype
from prometheus_client import Counter, Gauge, Histogram

from mlplat_model_server.inference_log import InferenceLogWriter

# a child of KServe's logger, which the server configures
log = logging.getLogger("kserve.mlplat")
# the array fast path feeds sklearn models fitted on DataFrames with arrays in the same column order
warnings.filterwarnings("ignore", message="X does not have valid feature names")

#: header naming the model version that answered
VERSION_HEADER = "x-mlplat-model-version"
#: latency buckets from 0.1 ms: a small model answers in about a millisecond
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
                   0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
_LABELS = ("deployment", "model_name", "model_version")
REQUESTS = Counter(
    "mlplat_inference_requests",
    "Inference requests served, by version and HTTP status",
    (*_LABELS, "status_code"),
)
LATENCY = Histogram(
    "mlplat_inference_request_duration_seconds",
    "Time to decode, predict and encode one request, by version",
    _LABELS,
    buckets=LATENCY_BUCKETS,
)
TRAFFIC = Gauge(
    "mlplat_deployment_traffic_percent", "Share of a deployment's traffic per version", (*_LABELS, "role")
)


def version_model_name(model_name: str, version: str) -> str:
    """
    The server-side name of one MLflow model version: ``<registered model>@<version>``.

    :param model_name: registered model name.
    :param version: model version number.
    """
    return f"{model_name}@{version}"


def parse_version_model_name(name: str) -> tuple[str, str]:
    """
    Split ``<registered model>@<version>``; the version must be a number (aliases move, so the caller
    resolves them).

    :param name: server-side model name.
    """
    model_name, _, version = name.rpartition("@")
    if not model_name or not version.isdigit():
        raise ValueError(
            f"model {name!r} is not '<registered model>@<version number>' (e.g. trip_completion@3); "
            "resolve aliases with MLflow first"
        )
    return model_name, version


def records(payload: Any) -> list[dict[str, Any]] | None:
    """
    The request's rows when they came as JSON objects (V1 ``instances`` or ``dataframe_records``).

    :param payload: decoded request body.
    """
    if isinstance(payload, dict):
        rows = payload.get("instances", payload.get("dataframe_records"))
        if isinstance(rows, list) and rows and all(isinstance(row, dict) for row in rows):
            return rows
    return None


def log_records(
    timestamp: datetime,
    deployment: str,
    model_name: str,
    model_version: str,
    request_id: str,
    status_code: int,
    rows: list[dict[str, Any]],
    predictions: list[Any] | None,
) -> list[dict[str, Any]]:
    """
    The inference log records of one request: one per row, with the keys of ``RECORD_FIELDS`` and ``features``.

    :param timestamp: when the request was served (timezone-aware).
    :param deployment: deployment (InferenceService) name.
    :param model_name: registered model name.
    :param model_version: model version that answered.
    :param request_id: the request's id.
    :param status_code: HTTP status of the answer.
    :param rows: the request's rows (feature name -> value).
    :param predictions: one prediction per row (None: no answer).
    """
    base = {
        "timestamp": timestamp.astimezone(UTC).isoformat(),
        "deployment": deployment,
        "model_name": model_name,
        "model_version": model_version,
        "request_id": request_id,
        "status_code": status_code,
    }
    predictions = predictions if predictions is not None else [None] * len(rows)
    return [{**base, "prediction": p, "features": f} for f, p in zip(rows, predictions, strict=False)]


def to_frame(payload: Any, columns: list[str] | None) -> pd.DataFrame:
    """
    The rows of a V1 (``instances`` / ``dataframe_records`` / ``dataframe_split``) or V2 request.

    :param payload: decoded request body.
    :param columns: the model's input names, for positional V1 rows.
    """
    if isinstance(payload, InferRequest):
        return payload.as_dataframe()
    if not isinstance(payload, dict):
        raise InvalidInput("expected a JSON object with 'instances' (send Content-Type: application/json)")
    if "dataframe_split" in payload:
        return pd.DataFrame(**payload["dataframe_split"])
    rows = payload.get("instances", payload.get("dataframe_records"))
    if not isinstance(rows, list) or not rows:
        raise InvalidInput(
            "expected a non-empty list in 'instances' (or 'dataframe_records'/'dataframe_split')"
        )
    if isinstance(rows[0], dict):
        return pd.DataFrame.from_records(rows)
    if columns is None:
        raise InvalidInput("the model has no input names: send 'instances' as objects, not lists")
    return pd.DataFrame(rows, columns=columns)


def to_list(result: Any) -> list[Any]:
    """
    A model's predictions as a JSON-able list, one entry per row.

    :param result: what ``pyfunc.predict`` returned.
    """
    if isinstance(result, pd.DataFrame):
        if result.shape[1] != 1:
            return result.to_dict("records")
        result = result.iloc[:, 0]
    if hasattr(result, "tolist"):
        return result.tolist()
    return list(result)


def respond(payload: Any, predictions: list[Any], name: str, version: str) -> dict | InferResponse:
    """
    The response in the request's protocol: ``{"predictions": [...]}`` for V1, one ``predict``
    output tensor for V2.

    :param payload: decoded request body.
    :param predictions: one prediction per row.
    :param name: model name to answer with.
    :param version: model version that predicted.
    """
    if not isinstance(payload, InferRequest):
        return {"predictions": predictions}
    array = np.asarray(predictions)
    output = InferOutput(name="predict", shape=list(array.shape), datatype=from_np_dtype(array.dtype))
    output.set_data_from_numpy(array, binary_data=False)
    return InferResponse(
        response_id=payload.id or uuid.uuid4().hex,
        model_name=name,
        model_version=version,
        infer_outputs=[output],
    )


class MLflowVersionModel(Model):
    """
    One MLflow model version served by its own name (``<registered model>@<version>``).

    :param model_name: registered model name.
    :param version: model version number.
    :param fast_path: predict sklearn models from arrays when that gives pyfunc's predictions.
    """

    def __init__(self, model_name: str, version: str, fast_path: bool = True) -> None:
        super().__init__(version_model_name(model_name, version))
        self.model_name, self.version = model_name, version
        self.model_uri = f"models:/{model_name}/{version}"
        self.fast_path = fast_path
        self.columns: list[str] | None = None
        self._pyfunc: Any = None
        self._array_model: Any = None

    def load(self) -> bool:
        """Load the pyfunc model from the MLflow registry (``MLFLOW_TRACKING_URI``)."""
        import mlflow.pyfunc

        started = time.monotonic()
        self._pyfunc = mlflow.pyfunc.load_model(self.model_uri)
        schema = self._pyfunc.metadata.get_input_schema()
        self.columns = schema.input_names() if schema is not None and schema.has_input_names() else None
        self._array_model = self._checked_array_model() if self.fast_path else None
        self.ready = True
        log.info(
            "loaded %s in %.1f s (array fast path: %s)",
            self.model_uri,
            time.monotonic() - started,
            self._array_model is not None,
        )
        return self.ready

    def _checked_array_model(self) -> Any:
        """
        The raw sklearn model, if it predicts from a float array in signature order exactly what pyfunc
        predicts from a DataFrame on the logged input example. pyfunc's DataFrame and schema path costs
        about 1 ms per single-row call, the array path about 0.2 ms. None: pyfunc serves every request.
        """
        from mlflow.types import DataType

        schema = self._pyfunc.metadata.get_input_schema()
        example = self._pyfunc.input_example
        numeric = (DataType.double, DataType.float, DataType.long, DataType.integer)
        if (
            "sklearn" not in self._pyfunc.metadata.flavors
            or self.columns is None
            or any(spec.type not in numeric for spec in schema.inputs)
            or not isinstance(example, pd.DataFrame)
        ):
            return None
        raw = self._pyfunc.get_raw_model()
        try:
            fast = raw.predict(example[self.columns].to_numpy(dtype="float64"))
            same = np.array_equal(np.asarray(fast), np.asarray(to_list(self._pyfunc.predict(example))))
        except Exception:  # e.g. a pipeline that selects columns by name: it needs the DataFrame
            log.info("%s: predicting from arrays failed; pyfunc serves it", self.model_uri, exc_info=True)
            return None
        return raw if same else None

    def predict_payload(self, payload: Any) -> tuple[list[dict[str, Any]], list[Any]]:
        """
        The rows of a decoded request (as dicts, for the inference log) and one prediction per row.

        :param payload: decoded request body (V1 dict or V2 ``InferRequest``).
        """
        rows = records(payload)
        if rows is None:
            frame = to_frame(payload, self.columns)
            return frame.to_dict("records"), self.predict_frame(frame)
        if self._array_model is None:
            return rows, self.predict_frame(pd.DataFrame.from_records(rows))
        try:
            array = np.array([[row[column] for column in self.columns] for row in rows], dtype="float64")  # type: ignore[union-attr]
        except KeyError as err:
            raise InvalidInput(
                f"{self.name}: the request has no input {err}; inputs: {self.columns}"
            ) from None
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"{self.name}: inputs {self.columns} must be numbers: {err}") from None
        return rows, self._array_model.predict(array).tolist()

    def predict_frame(self, frame: pd.DataFrame) -> list[Any]:
        """
        Predict rows; a schema mismatch is the caller's fault (HTTP 400).

        :param frame: input rows.
        """
        from mlflow.exceptions import MlflowException

        try:
            return to_list(self._pyfunc.predict(frame))
        except MlflowException as err:
            if err.error_code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"):
                raise InvalidInput(f"{self.name}: {err.message}") from None
            raise

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict | InferResponse:
        """
        Answer a request sent to this version directly (smoke tests; not counted as traffic).

        :param payload: decoded request body.
        :param headers: request headers.
        """
        return respond(payload, self.predict_payload(payload)[1], self.name, self.version)


class DeploymentRouter(Model):
    """
    A deployment: one name that splits requests between a stable and a canary version by weight,
    counts and times each request per version, and logs every served row.

    The split is exact, not random: of every 100 consecutive requests, ``canary_percent`` go to
    the canary.

    :param name: deployment name (what clients call).
    :param stable: the version serving the rest of the traffic.
    :param canary: the version under test, if any.
    :param canary_percent: share of requests for the canary, 0-100.
    :param revision: increases with every traffic change.
    :param inference_log: where served rows go (None: not logged).
    """

    def __init__(
        self,
        name: str,
        stable: MLflowVersionModel,
        canary: MLflowVersionModel | None = None,
        canary_percent: int = 0,
        revision: int = 1,
        inference_log: InferenceLogWriter | None = None,
    ) -> None:
        super().__init__(name)
        self.stable, self.canary, self.canary_percent = stable, canary, canary_percent if canary else 0
        self.revision = revision
        self.inference_log = inference_log
        self.updated_at = datetime.now(UTC).isoformat()
        self.ready = True
        self._count = 0
        self._series: dict[tuple[str, str], tuple[Any, Any]] = {}
        for role, model, percent in self.split():
            TRAFFIC.labels(name, model.model_name, model.version, role).set(percent)
            # the series exist from 0, so increase() counts the first requests too
            for status in ("200", "400", "500"):
                self._metrics(model, status)

    def split(self) -> list[tuple[str, MLflowVersionModel, int]]:
        """(role, version model, percent) of each version in the split."""
        out = [("stable", self.stable, 100 - self.canary_percent)]
        return out + ([("canary", self.canary, self.canary_percent)] if self.canary else [])

    def state(self) -> dict[str, Any]:
        """The deployment as the API reports it."""
        return {
            "name": self.name,
            "model_name": self.stable.model_name,
            "stable": self.stable.version,
            "canary": self.canary.version if self.canary else None,
            "canary_percent": self.canary_percent,
            "revision": self.revision,
            "ready": all(model.ready for _, model, _ in self.split()),
            "updated_at": self.updated_at,
        }

    async def healthy(self) -> bool:
        """Ready when every version of the split is loaded."""
        return all(model.ready for _, model, _ in self.split())

    def _pick(self) -> MLflowVersionModel:
        self._count += 1
        p = self.canary_percent
        if p and (self._count * p) // 100 != ((self._count - 1) * p) // 100:
            return self.canary  # type: ignore[return-value]
        return self.stable

    def _metrics(self, model: MLflowVersionModel, status: str) -> tuple[Any, Any]:
        key = (model.name, status)
        if key not in self._series:
            labels = (self.name, model.model_name, model.version)
            self._series[key] = (REQUESTS.labels(*labels, status), LATENCY.labels(*labels))
        return self._series[key]

    async def __call__(
        self, body: Any, headers: dict[str, str] | None = None, verb: InferenceVerb = InferenceVerb.PREDICT
    ) -> tuple[dict | InferResponse, dict[str, str]]:
        """
        Route one request to a version, measure it and log it.

        :param body: decoded request body (V1 dict or V2 ``InferRequest``).
        :param headers: request headers.
        :param verb: only ``PREDICT`` is served.
        """
        if verb != InferenceVerb.PREDICT:
            raise NotImplementedError(f"{self.name} serves predictions only")
        model, started = self._pick(), time.perf_counter()
        status, rows, predictions = "200", None, None
        try:
            rows, predictions = model.predict_payload(body)
            return respond(body, predictions, self.name, model.version), {VERSION_HEADER: model.version}
        except InvalidInput:
            status = "400"
            raise
        except Exception:
            status = "500"
            raise
        finally:
            requests, latency = self._metrics(model, status)
            requests.inc()
            latency.observe(time.perf_counter() - started)
            if self.inference_log is not None:
                self._log(model, status, rows or records(body) or [{}], predictions, headers)

    def _log(self, model, status, rows, predictions, headers) -> None:
        self.inference_log.append(  # type: ignore[union-attr]
            log_records(
                datetime.now(UTC),
                self.name,
                model.model_name,
                model.version,
                (headers or {}).get("x-request-id") or uuid.uuid4().hex,
                int(status),
                rows,
                predictions,
            )
        )


class MLflowModelRepository(ModelRepository):
    """
    Loads MLflow model versions on request (``POST /v2/repository/models/<model>@<version>/load``)
    and keeps the deployments (traffic splits), persisted to a state file so a restart serves the
    same versions.

    :param state_file: JSON file of the deployments (None: not persisted).
    :param inference_log: where deployments log served rows (None: not logged).
    :param fast_path: let sklearn versions predict from arrays (see :class:`MLflowVersionModel`).
    """

    def __init__(
        self,
        state_file: Path | None = None,
        inference_log: InferenceLogWriter | None = None,
        fast_path: bool = True,
    ) -> None:
        super().__init__()
        self.state_file = state_file
        self.inference_log = inference_log
        self.fast_path = fast_path
        self.deployments: dict[str, DeploymentRouter] = {}

    def _version(self, name: str) -> MLflowVersionModel | None:
        model = self.get_model(name)
        return model if isinstance(model, MLflowVersionModel) else None

    def load_version(self, name: str) -> MLflowVersionModel:
        """
        Load ``<model>@<version>`` unless it is loaded already.

        :param name: server-side model name.
        """
        existing = self._version(name)
        if existing is not None and existing.ready:
            return existing
        model = MLflowVersionModel(*parse_version_model_name(name), fast_path=self.fast_path)
        model.load()
        self.update(model)
        return model

    async def load(self, name: str) -> bool:
        """
        Load a version without blocking the server (model repository extension).

        :param name: ``<registered model>@<version>``.
        """
        await asyncio.to_thread(self.load_version, name)
        return True

    def unload(self, name: str) -> None:
        """
        Unload a version no deployment serves.

        :param name: server-side model name.
        """
        if name in self.deployments:
            raise ValueError(f"{name!r} is a deployment: DELETE /mlplat/v1/deployments/{name} instead")
        users = [d.name for d in self.deployments.values() if any(m.name == name for _, m, _ in d.split())]
        if users:
            raise ValueError(f"{name!r} serves deployment(s) {users}: shift their traffic away first")
        super().unload(name)

    def set_traffic(
        self, name: str, model_name: str, stable: str, canary: str | None = None, canary_percent: int = 0
    ) -> dict[str, Any]:
        """
        Create or change a deployment's split between loaded versions; a repeated call is a no-op.

        :param name: deployment name.
        :param model_name: registered model name.
        :param stable: stable version number.
        :param canary: canary version number, or None.
        :param canary_percent: share of requests for the canary, 0-100.
        """
        if not 0 <= canary_percent <= 100 or (canary is None and canary_percent):
            raise ValueError(f"canary_percent={canary_percent!r} must be 0-100, and 0 without a canary")
        if canary == stable:
            raise ValueError(f"canary and stable are the same version {stable!r}")
        models = []
        for version in (stable, canary):
            if version is None:
                models.append(None)
                continue
            model = self._version(version_model_name(model_name, version))
            if model is None or not model.ready:
                raise LookupError(
                    f"{model_name} version {version} is not loaded: "
                    f"POST /v2/repository/models/{version_model_name(model_name, version)}/load first"
                )
            models.append(model)
        old = self.deployments.get(name)
        if old is not None and (old.stable, old.canary, old.canary_percent) == (*models, canary_percent):
            return old.state()
        if old is not None:
            _clear_traffic(name, old)
        router = DeploymentRouter(
            name, models[0], models[1], canary_percent, (old.revision + 1) if old else 1, self.inference_log
        )
        self.deployments[name] = router
        self.update(router)
        self._save()
        log.info("deployment %s: %s", name, router.state())
        return router.state()

    def delete_deployment(self, name: str) -> dict[str, Any]:
        """
        Remove a deployment and unload the versions no other deployment serves.

        :param name: deployment name.
        """
        router = self.deployments.pop(name)
        del self.models[name]
        _clear_traffic(name, router)
        self._save()
        for _, model, _ in router.split():
            try:
                self.unload(model.name)
            except (ValueError, KeyError):
                pass  # still served by another deployment, or already gone
        return router.state()

    def _save(self) -> None:
        if self.state_file is None:
            return
        state = {
            name: {
                k: v
                for k, v in d.state().items()
                if k in ("model_name", "stable", "canary", "canary_percent", "revision")
            }
            for name, d in self.deployments.items()
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"deployments": state}, indent=2))
        os.replace(tmp, self.state_file)

    def restore(self) -> None:
        """Load the versions of the saved deployments and serve them again; a failure is logged."""
        if self.state_file is None or not self.state_file.exists():
            return
        for name, spec in json.loads(self.state_file.read_text()).get("deployments", {}).items():
            try:
                for version in (spec["stable"], spec.get("canary")):
                    if version is not None:
                        self.load_version(version_model_name(spec["model_name"], version))
                self.set_traffic(
                    name, spec["model_name"], spec["stable"], spec.get("canary"), spec["canary_percent"]
                )
                self.deployments[name].revision = spec["revision"]
            except Exception:
                log.exception("could not restore deployment %s (%s)", name, spec)
        self._save()


def _clear_traffic(name: str, router: DeploymentRouter) -> None:
    for role, model, _ in router.split():
        try:
            TRAFFIC.remove(name, model.model_name, model.version, role)
        except KeyError:
            pass
