"""The machine's PostgreSQL and Redis as fixtures: a fresh database per test, an emptied Redis database."""

from __future__ import annotations

import os
from contextlib import ExitStack

import pytest

from airflow_provider_mlplat.testing.ci import unavailable
from airflow_provider_mlplat.testing.services import postgres_database


@pytest.fixture
def postgres_db_factory():
    """Make fresh, empty databases on the machine's PostgreSQL (``$MLPLAT_TEST_POSTGRES``, default
    127.0.0.1:5432); dropped afterwards."""
    import sqlalchemy

    with ExitStack() as stack:

        def make() -> str:
            try:
                return stack.enter_context(postgres_database())
            except sqlalchemy.exc.OperationalError as err:
                unavailable(f"PostgreSQL is not reachable: {err.orig}")

        yield make


@pytest.fixture
def postgres_url(postgres_db_factory) -> str:
    """A fresh, empty database on the machine's PostgreSQL, dropped afterwards."""
    return postgres_db_factory()


@pytest.fixture
def redis_url():
    """The machine's Redis (``$MLPLAT_TEST_REDIS``, default 127.0.0.1:6379 database 15), emptied
    before and after the test."""
    import redis

    url = os.environ.get("MLPLAT_TEST_REDIS", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as err:
        unavailable(f"Redis at {url} is not reachable: {err}")
    yield url
    client.flushdb()
    client.close()
