"""MLflow credentials: sent per request, never in the process environment, never logged."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading

import pytest

from airflow_provider_mlplat.hooks.mlflow import MLflowHook
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.services import free_port

pytestmark = pytest.mark.integration
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class AuthProxy:
    """
    An authenticating reverse proxy in front of the real MLflow server, as MLflow is deployed behind
    an ingress (the MLflow basic-auth app needs Flask-WTF, which the environment does not ship).
    It answers 401 unless the Authorization header is the expected one, and notes, while serving
    each request, whether the client process had credentials in its environment.
    """

    def __init__(self, upstream: str, authorization: str) -> None:
        self.upstream, self.authorization = upstream, authorization
        self.port = free_port()
        self.seen: list[tuple[str, str | None, bool]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    async def _handle(self, request):
        from aiohttp import ClientSession, web

        header = request.headers.get("Authorization")
        self.seen.append((request.path, header, any(v in os.environ for v in CREDENTIAL_VARS)))
        if header != self.authorization:
            return web.Response(status=401, text="unauthorized")
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                data=await request.read(),
                headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
            ) as upstream,
        ):
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body, content_type=upstream.content_type)

    def _serve(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> AuthProxy:
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.mark.parametrize(
    ("fields", "authorization"),
    [
        (
            {"login": "alice", "password": "s3cret-pw"},
            "Basic " + base64.b64encode(b"alice:s3cret-pw").decode(),
        ),
        ({"password": "t0ken-value"}, "Bearer t0ken-value"),
    ],
    ids=["basic", "token"],
)
def test_client_sends_the_connections_credentials_per_request_only(
    mlflow_server, caplog, fields, authorization
):
    secret = fields["password"]
    with AuthProxy(mlflow_server, authorization) as proxy, caplog.at_level(logging.DEBUG):
        set_connection("mlflow_auth", conn_type="mlflow", host=f"http://127.0.0.1:{proxy.port}", **fields)
        hook = MLflowHook("mlflow_auth")
        ok, message = hook.test_connection()
        assert ok, message
        hook.client.create_registered_model(name := f"auth_{proxy.port}")
        assert hook.registered_model(name).name == name
        assert hook.alias_version(name, "champion") is None
    assert len(proxy.seen) >= 4
    assert {header for _, header, _ in proxy.seen} == {authorization}
    assert not any(in_env for *_, in_env in proxy.seen), "credentials were in os.environ during a request"
    assert not any(v in os.environ for v in CREDENTIAL_VARS)
    assert secret not in caplog.text


def test_wrong_credentials_fail_test_connection_with_the_servers_answer(mlflow_server):
    with AuthProxy(mlflow_server, "Bearer right") as proxy:
        set_connection(
            "mlflow_wrong", conn_type="mlflow", host=f"http://127.0.0.1:{proxy.port}", password="wrong"
        )
        ok, message = MLflowHook("mlflow_wrong").test_connection()
    assert ok is False and "401" in message
    assert "wrong" not in message
