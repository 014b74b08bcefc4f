"""Shared hook plumbing: lazy connection, extras read by name from an allowlist, test_connection."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_provider_mlplat import connection_fields
from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatServiceUnavailable
from airflow_provider_mlplat.extras import require_extra

if TYPE_CHECKING:
    from airflow.sdk import Connection

#: seconds within which an unreachable service fails a task (a connection's ``timeout`` extra)
DEFAULT_TIMEOUT = 30


class MLPlatHook(BaseHook):
    """
    Base of the provider's hooks: no I/O until used; the connection is fetched once.

    Subclasses set ``conn_type``, ``default_conn_name``, ``hook_name``, the pip extras their SDK
    comes with (``required_extras``, checked when the hook is created: at run time, never at parse
    time) and implement ``probe()``.

    :param conn_id: Airflow connection id.
    """

    conn_name_attr = "conn_id"
    conn_type = ""
    default_conn_name = ""
    hook_name = ""
    required_extras: tuple[str, ...] = ()

    def __init__(self, conn_id: str | None = None) -> None:
        super().__init__()
        for extra in self.required_extras:
            require_extra(extra, type(self).__name__)
        self.conn_id = conn_id or self.default_conn_name

    @cached_property
    def connection(self) -> Connection:
        """The Airflow connection, fetched on first use; its extras checked (:meth:`checked`)."""
        return self.checked(self.get_connection(self.conn_id))

    def checked(self, connection: Connection) -> Connection:
        """
        The connection, once its extra is a JSON object of fields this connection type declares: a
        typo fails naming the key and the closest known one, instead of being silently ignored.

        :param connection: a connection of this hook's type.
        """
        if not connection.extra:
            return connection
        try:
            extra = json.loads(connection.extra)
        except json.JSONDecodeError as err:
            raise MLPlatConfigError(
                f"connection {self.conn_id!r}: its extra is not valid JSON ({err.msg} at line {err.lineno} "
                f"column {err.colno}); it must be a JSON object of {self.conn_type} fields"
            ) from None
        if not isinstance(extra, dict):
            raise MLPlatConfigError(
                f"connection {self.conn_id!r}: its extra must be a JSON object, got {type(extra).__name__}"
            )
        known = connection_fields(self.conn_type)
        for key in extra:
            if key not in known:
                close = difflib.get_close_matches(key.removeprefix(f"extra__{self.conn_type}__"), known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise MLPlatConfigError(
                    f"connection {self.conn_id!r} ({self.conn_type}): unknown extra {key!r}; {hint}"
                    f"known extras: {', '.join(known)}"
                )
        return connection

    def extra(self, name: str, default: Any = None) -> Any:
        """
        One connection extra, by name; only the extras the connection type declares can be read.

        :param name: extra field name.
        :param default: value when the extra is unset or empty.
        """
        allowed = connection_fields(self.conn_type)
        if name not in allowed:
            raise KeyError(f"{name!r} is not an extra of {self.conn_type} connections; known: {allowed}")
        value = self.connection.extra_dejson.get(name)
        return default if value in (None, "") else value

    def json_extra(self, name: str) -> dict[str, Any] | None:
        """
        A connection extra that holds a JSON object (as text or already parsed).

        :param name: extra field name.
        """
        value = self.extra(name)
        if value is None or isinstance(value, Mapping):
            return dict(value) if value is not None else None
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise MLPlatConfigError(
                f"connection {self.conn_id!r}: extra {name!r} must be a JSON object, got {value!r} ({err})"
            ) from None
        if not isinstance(parsed, dict):
            raise MLPlatConfigError(
                f"connection {self.conn_id!r}: extra {name!r} must be a JSON object, got {value!r}"
            )
        return parsed

    def ensure_reachable(self, url: str, service: str, **request: Any) -> None:
        """
        Wait for an HTTP answer (any status) from ``url`` at most the connection's ``timeout`` extra
        (default 30 s), retrying connection errors; then fail naming the service, its URL and
        "unreachable", instead of an SDK's minutes of retries ending in a misleading error.

        :param url: a URL of the service that answers cheaply (e.g. its health endpoint).
        :param service: the service's name in the message.
        :param request: more ``httpx.get`` arguments (the connection's ``auth`` or ``headers``).
        """
        import httpx
        import tenacity

        timeout = float(self.extra("timeout", DEFAULT_TIMEOUT))
        try:
            for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_delay(timeout),
                wait=tenacity.wait_exponential(min=0.5, max=5),
                retry=tenacity.retry_if_exception_type(httpx.TransportError),
                reraise=True,
            ):
                with attempt:
                    httpx.get(url, timeout=min(10.0, timeout), **request)
        except httpx.TransportError as err:
            raise MLPlatServiceUnavailable(
                f"{service} at {url} is unreachable: no answer within {timeout:.0f} s ({type(err).__name__})"
            ) from None

    def probe(self) -> str:
        """Really talk to the service; return a one-line description of what answered."""
        raise NotImplementedError

    def test_connection(self) -> tuple[bool, str]:
        """Check the connection from the Airflow UI / CLI by calling the service."""
        try:
            return True, self.probe()
        except Exception as err:  # the UI shows the message; any failure means "not connected"
            return False, f"{type(err).__name__}: {err}"


@contextmanager
def scoped_env(values: Mapping[str, str | None]) -> Iterator[None]:
    """
    Set environment variables for the duration of a block, then restore them exactly.

    :param values: variables to set; ``None`` removes the variable inside the block.
    """
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
