"""The plugin's FastAPI app, mounted by Airflow's API server under ``/mlplat``: pages, actions, reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.ui.auth import current_user, require_trigger

URL_PREFIX = "/mlplat"  # links.evidently.REPORTS_PATH lives under it
TEMPLATES = Path(__file__).parent / "templates"
#: service -> the connection whose host the external view opens
SERVICE_CONNECTIONS = {
    "mlflow": "mlflow_default",
    "ray": "ray_default",
    "prometheus": "prometheus_default",
    "grafana": "grafana_default",
}

app = FastAPI(title="ML platform", docs_url=None, redoc_url=None, openapi_url=None)


def _render(template: str, **values: Any) -> HTMLResponse:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    return HTMLResponse(env.get_template(template).render(prefix=URL_PREFIX, **values))


def _reader(request: Request):
    from airflow_provider_mlplat.ui.airflow_api import UserAirflowAPI
    from airflow_provider_mlplat.ui.models import ModelsReader

    return ModelsReader(airflow=UserAirflowAPI(request.state.mlplat_token))


def _model_json(name: str, request: Request) -> dict[str, Any]:
    from dataclasses import asdict

    return {part: asdict(value) for part, value in _reader(request).model(name).items()}


@app.get("/", response_class=HTMLResponse)
def models_page(request: Request, page_token: str | None = None, user: Any = Depends(current_user)):
    """The list of registered models with their aliases, one page at a time."""
    from airflow_provider_mlplat.ui.models import read_part

    listing = read_part(lambda: _reader(request).models(page_token))
    return _render("models.html", listing=listing, user=user.get_name())


@app.get("/models/{name}", response_class=HTMLResponse)
def model_page(name: str, request: Request, user: Any = Depends(current_user)):
    """One model: versions, serving, last rollout, promotion and drift check, lineage, actions."""
    return _render("model.html", name=name, parts=_reader(request).model(name), user=user.get_name())


@app.get("/api/models/{name}")
def model_json(name: str, request: Request, user: Any = Depends(current_user)) -> dict[str, Any]:
    """The model page's parts as JSON: ``{part: {"value": ..., "error": ...}}``."""
    return _model_json(name, request)


async def json_body(request: Request) -> dict[str, Any]:
    """
    FastAPI dependency: an action's JSON object body. Only JSON: a cross-site form cannot send it
    without a CORS preflight, so the UI's cookie cannot be used for CSRF.

    :param request: the incoming request.
    """
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, "actions take a JSON object body")
    body = await request.json() if await request.body() else {}
    if not isinstance(body, dict):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"the body must be a JSON object, got {body!r}")
    return body


@app.post("/api/models/{name}/actions/{action}")
def run_action(name: str, action: str, request: Request, user: Any = Depends(current_user),
               body: dict[str, Any] = Depends(json_body)) -> JSONResponse:  # fmt: skip
    """
    Start the DAG run of an action as the logged-in user: 401 without a login, 403 when the user may
    not trigger that DAG, 400 naming the bad input, else the run Airflow started.
    """
    import httpx

    from airflow_provider_mlplat.ui.actions import ACTION_DAGS, plan_action

    if action in ACTION_DAGS:
        require_trigger(user, ACTION_DAGS[action])
    reader = _reader(request)
    try:
        dag_id, conf = plan_action(action, name, body, reader.mlflow)
        run = reader.airflow.trigger(dag_id, conf)
    except MLPlatConfigError as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from None
    except httpx.HTTPStatusError as err:
        raise HTTPException(
            err.response.status_code, f"Airflow refused the run: {err.response.text}"
        ) from None
    return JSONResponse(
        {
            "action": action,
            "dag_id": dag_id,
            "dag_run_id": run["dag_run_id"],
            "conf": conf,
            "state": run["state"],
        },
        status_code=status.HTTP_201_CREATED,
    )


@app.get("/reports", response_class=HTMLResponse)
def report(uri: str, user: Any = Depends(current_user)) -> HTMLResponse:
    """A drift report (HTML) from artifact storage, local or object storage; nothing outside it."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_mlplat.artifacts import artifact_root

    root = str(artifact_root()).rstrip("/") + "/"
    path = ObjectStoragePath(uri if "://" in uri else f"file://{uri}")
    if ".." in Path(path.path).parts or not str(path).startswith(root) or path.suffix != ".html":
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"{uri!r} is not an HTML report under the artifact root {root}"
        )
    if not path.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report at {uri!r}")
    return HTMLResponse(path.read_text())


@app.get("/open/{service}")
def open_service(service: str, user: Any = Depends(current_user)) -> RedirectResponse:
    """Redirect to a service's UI at its connection's address (the external views link here)."""
    from airflow.sdk import BaseHook

    if service not in SERVICE_CONNECTIONS:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"unknown service {service!r}; valid: {', '.join(SERVICE_CONNECTIONS)}"
        )
    conn_id = SERVICE_CONNECTIONS[service]
    try:
        host = (BaseHook.get_connection(conn_id).host or "").rstrip("/")
    except Exception:
        host = ""
    if not host.startswith(("http://", "https://")):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"{service}: connection {conn_id!r} is missing or has no http(s) host"
        )
    return RedirectResponse(host, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
