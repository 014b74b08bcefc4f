"""Free ports, throwaway PostgreSQL databases and platform services for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(size: int) -> int:
    """The first of ``size`` consecutive free ports."""
    for _ in range(100):
        base = free_port()
        if base + size >= 65534:
            continue
        socks = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


POSTGRES_ADMIN_URL = os.environ.get(
    "MLPLAT_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def postgres_database() -> Iterator[str]:
    """
    A fresh, empty database on the machine's PostgreSQL, dropped afterwards; yields its URL.
    Raises ``sqlalchemy.exc.OperationalError`` when PostgreSQL does not answer.
    """
    import sqlalchemy

    name = f"mlplat_test_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    created = False
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        created = True
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        if created:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@contextmanager
def running_platform(home: Path, services: tuple[str, ...], **settings) -> Iterator:
    """
    The local platform with the given services on free ports under ``home``; stopped afterwards.

    :param home: state folder.
    :param services: which services to run.
    :param settings: further :class:`~mlplat.platform.Settings` fields (else from ``MLPLAT_*`` variables).
    """
    from mlplat.platform import Platform, Settings

    ports = {
        "airflow_port": free_port(),
        "mlflow_port": free_port(),
        "ray_port": free_port_block(3),
        "ray_dashboard_port": free_port(),
        "model_server_port": free_port(),
        "prometheus_port": free_port(),
        "pushgateway_port": free_port(),
    }
    platform = Platform(Settings.from_env(home=home, services=services, **{**ports, **settings}))
    try:
        platform.up(timeout=180)
        yield platform
    finally:
        platform.down()
