"""Who calls the plugin: the Airflow user behind a request (JWT header or the UI's cookie)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request, status

#: the cookie the Airflow UI keeps its JWT in (``COOKIE_NAME_JWT_TOKEN`` of the auth manager)
TOKEN_COOKIE = "_token"


def request_token(request: Request) -> str | None:
    """
    The JWT a request carries: an explicit bearer token wins over the UI's session cookie.

    :param request: the incoming request.
    """
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return request.cookies.get(TOKEN_COOKIE)


async def current_user(request: Request) -> Any:
    """
    FastAPI dependency: the user the Airflow auth manager finds in the request's token.
    No token: 401; an invalid one: 403 (as Airflow's own API answers).

    :param request: the incoming request.
    """
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    user = await resolve_user_from_token(request_token(request))
    request.state.mlplat_token = request_token(request)
    return user


def require_trigger(user: Any, dag_id: str) -> None:
    """
    Raise 403 unless the user may start runs of a DAG (the auth manager decides, as for the REST API).

    :param user: the authenticated user.
    :param dag_id: the DAG the action would run.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    allowed = get_auth_manager().is_authorized_dag(
        method="POST", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
    )
    if not allowed:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"user {user.get_name()!r} may not trigger runs of DAG {dag_id!r}",
        )
