"""
The e2e tests' shared closed loop: one local platform, the demo loop run through Airflow once, shared
by the tests that ask for ``closed_loop``. Those tests run one after the other and the platform is
stopped after the last of them, not at the end of the session.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlplat.testing.ci import unavailable
from airflow_provider_mlplat.testing.services import postgres_database, running_platform

LOOP_FIXTURE = "closed_loop"
MODEL = "trip_completion"
#: what stops the loop's platform: closed after the last test using it (and at the end of the session)
_LOOP_STACK = ExitStack()


@dataclass
class LoopRun:
    """
    A local platform after the closed loop ran on it.

    :param platform: the running platform (stopped after the last test using the loop).
    :param api: Airflow's REST API as admin.
    :param report: what the loop returned (``mlplat demo``'s report).
    :param lineage: the OpenLineage events file (file transport).
    :param aliases: the model's aliases right after the loop.
    :param serving: the model server's answer for the model right after the loop.
    """

    platform: Any
    api: Any
    report: dict[str, Any]
    lineage: Path
    aliases: dict[str, str]
    serving: dict[str, Any]

    @property
    def base_url(self) -> str:
        """Airflow's API server (and UI)."""
        return f"http://127.0.0.1:{self.platform.settings.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.platform.settings.mlflow_port}"

    @property
    def model_server_url(self) -> str:
        return f"http://127.0.0.1:{self.platform.settings.model_server_port}"


@pytest.fixture(scope="session")
def closed_loop(tmp_path_factory) -> LoopRun:
    """
    Every service of the local platform (Airflow on PostgreSQL, as in production: four components and
    the REST API write concurrently), after the demo's closed loop ran on it once.
    """
    import httpx
    import mlflow
    import sqlalchemy

    from mlplat.airflow_api import AirflowRestClient
    from mlplat.closed_loop import ClosedLoop, LoopSettings
    from mlplat.platform import ALL_SERVICES

    tmp = tmp_path_factory.mktemp("loop")
    lineage = tmp / "lineage.jsonl"
    transport = json.dumps({"type": "file", "log_file_path": str(lineage), "append": True})
    with _LOOP_STACK:  # at the end of the session if the last test using the loop did not stop it
        try:
            db = _LOOP_STACK.enter_context(postgres_database())
        except sqlalchemy.exc.OperationalError as err:
            unavailable(f"PostgreSQL is not reachable: {err.orig}")
        platform = _LOOP_STACK.enter_context(
            running_platform(tmp / "home", ALL_SERVICES, airflow_db_url=db, openlineage_transport=transport)
        )
        s = platform.settings
        api = AirflowRestClient(
            f"http://127.0.0.1:{s.airflow_port}", "admin", platform.secrets()["airflow_admin_password"]
        )
        report = ClosedLoop(platform, api, LoopSettings(phase_seconds=15)).run()
        client = mlflow.MlflowClient(f"http://127.0.0.1:{s.mlflow_port}")
        aliases = dict(client.get_registered_model(MODEL).aliases)
        serving = httpx.get(f"http://127.0.0.1:{s.model_server_port}/v1/models/trip-completion").json()
        yield LoopRun(platform, api, report, lineage, aliases, serving)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests using the loop run one after the other, from where the first of them was."""
    users = [item for item in items if LOOP_FIXTURE in getattr(item, "fixturenames", ())]
    if len(users) > 1:
        first = items.index(users[0])
        rest = [item for item in items[first + 1 :] if item not in users]
        items[first:] = [*users, *rest]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """Stop the loop's platform after the last test using it: the rest of the session runs without it."""
    try:
        return (yield)
    finally:
        uses = LOOP_FIXTURE in getattr(item, "fixturenames", ())
        if uses and (nextitem is None or LOOP_FIXTURE not in getattr(nextitem, "fixturenames", ())):
            _LOOP_STACK.close()
