"""Run the local model server: KServe's REST server on 127.0.0.1, configured from the environment."""

# The model server is its own process (never imported by Airflow components): SDKs at module level.
# ``kserve.model_server`` parses sys.argv when imported, so the server takes no flags of its own.
from __future__ import annotations

import contextlib
import logging
import os
import signal
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from mlplat_model_server.inference_log import InferenceLogWriter, inference_log_writer
from mlplat_model_server.models import MLflowModelRepository
from mlplat_model_server.request_log import RequestLogSink, request_log_api

# a child of KServe's logger, which the server configures
log = logging.getLogger("kserve.mlplat")
API_PREFIX = "/mlplat/v1"


@dataclass(frozen=True)
class ServingConfig:
    """
    The server's settings, each from ``MLPLAT_SERVING_<FIELD>`` (MLflow from ``MLFLOW_TRACKING_URI``).

    :param host: address to bind (loopback by default).
    :param port: HTTP port.
    :param state_file: JSON file keeping the deployments across restarts (empty: not kept).
    :param inference_log: inference log folder or PostgreSQL URL (empty: requests are not logged).
    :param log_flush_seconds: how often the inference log is written.
    :param request_log_pair_seconds: how long the request-log sink keeps half of a pair waiting for the other.
    :param grace_seconds: how long in-flight requests may finish on SIGTERM.
    :param access_log: log a line per request (KServe's timing trace and uvicorn's access log).
    :param fast_path: let sklearn models predict from arrays when that gives pyfunc's predictions.
    """

    host: str = "127.0.0.1"
    port: int = 8090
    state_file: str = ""
    inference_log: str = ""
    log_flush_seconds: float = 0.5
    request_log_pair_seconds: float = 60.0
    grace_seconds: int = 10
    access_log: bool = False
    fast_path: bool = True

    @classmethod
    def from_env(cls) -> ServingConfig:
        """Read the settings from the environment."""
        values: dict[str, Any] = {}
        for name, default in cls().__dict__.items():
            raw = os.environ.get(f"MLPLAT_SERVING_{name.upper()}")
            if raw is not None:
                values[name] = (
                    raw.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(raw)
                )
        return cls(**values)


class TrafficSpec(BaseModel):
    """Body of ``PUT /mlplat/v1/deployments/{name}``."""

    model_name: str
    stable: str
    canary: str | None = None
    canary_percent: int = Field(0, ge=0, le=100)


def deployments_api(repository: MLflowModelRepository) -> APIRouter:
    """
    The deployment (traffic split) API next to KServe's V1/V2 endpoints.

    :param repository: the server's model repository.
    """
    router = APIRouter(prefix=API_PREFIX, tags=["mlplat"])

    def get(name: str) -> Any:
        if name not in repository.deployments:
            raise HTTPException(404, f"no deployment {name!r}; known: {sorted(repository.deployments)}")
        return repository.deployments[name]

    @router.get("/deployments")
    async def list_deployments() -> list[dict[str, Any]]:
        return [d.state() for d in repository.deployments.values()]

    @router.get("/deployments/{name}")
    async def get_deployment(name: str) -> dict[str, Any]:
        return get(name).state()

    @router.put("/deployments/{name}")
    async def put_deployment(name: str, spec: TrafficSpec) -> dict[str, Any]:
        try:
            return repository.set_traffic(name, **spec.model_dump())
        except LookupError as err:
            raise HTTPException(409, str(err)) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    @router.delete("/deployments/{name}")
    async def delete_deployment(name: str) -> dict[str, Any]:
        get(name)
        return repository.delete_deployment(name)

    return router


@contextlib.contextmanager
def _drain_on_signal(server: Any) -> Iterator[None]:
    """
    Replace uvicorn's signal capture: stop accepting, let requests finish, and return from
    ``serve()`` instead of re-raising the signal (which would kill the process before the inference
    log is flushed).
    """

    def stop(signum: int, frame: Any) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build(
    config: ServingConfig,
) -> tuple[Any, MLflowModelRepository, InferenceLogWriter | None, RequestLogSink | None]:
    """
    The REST server (not started), its repository (deployments restored), the inference log and the
    KServe request-log sink writing to it.

    :param config: server settings.
    """
    from kserve import ModelServer
    from kserve.model_server import app
    from kserve.protocol.rest.server import RESTServer

    writer = (
        inference_log_writer(config.inference_log, config.log_flush_seconds) if config.inference_log else None
    )
    sink = RequestLogSink(writer, config.request_log_pair_seconds) if writer is not None else None
    state_file = Path(config.state_file) if config.state_file else None
    repository = MLflowModelRepository(state_file, writer, config.fast_path)
    model_server = ModelServer(
        http_port=config.port,
        enable_grpc=False,
        registered_models=repository,
        enable_latency_logging=False,
        grace_period=config.grace_seconds,
    )
    rest = RESTServer(
        "kserve.model_server:app",
        model_server.dataplane,
        model_server.model_repository_extension,
        config.port,
        grace_period=config.grace_seconds,
    )
    rest.config.host = config.host  # KServe hard-codes 0.0.0.0
    if not config.access_log:  # two log lines per request would cost more than the prediction
        for name in ("kserve.trace", "uvicorn.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # KServe's endpoints answer with ORJSONResponse, which FastAPI warns about on every request
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    app.include_router(deployments_api(repository))
    app.include_router(request_log_api(sink))
    # RESTServer keeps its uvicorn server private; only its signal capture is replaced
    rest._server.capture_signals = lambda: _drain_on_signal(rest._server)
    repository.restore()
    return rest, repository, writer, sink


async def serve(config: ServingConfig) -> None:
    """
    Serve until SIGTERM/SIGINT, then flush the inference log.

    :param config: server settings.
    """
    rest, _, writer, sink = build(config)
    if writer is not None:
        writer.start()
    if sink is not None:
        sink.start()
    try:
        await rest.start()
    finally:
        if sink is not None:
            sink.close()
        if writer is not None:
            writer.close()
            log.info("inference log flushed: %d records written", writer.written)


def main() -> None:
    """Entry point: ``mlplat-model-server``."""
    import uvloop  # a dependency of uvicorn[standard], which KServe requires

    uvloop.run(serve(ServingConfig.from_env()))
