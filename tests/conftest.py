"""This project's test settings; the harness is the provider's pytest plugin (airflow_provider_mlplat.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s_audit import audit_last, record

pytest_plugins = ["pytester"]  # tests/integration/test_testing_plugin.py runs a team's test session
REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run without the mlplat plugin (the provider's ``pytest11`` entry point)."""
    if not config.pluginmanager.has_plugin("mlplat"):
        raise pytest.UsageError("the mlplat pytest plugin is not loaded: run `uv sync`, or pass -p mlplat")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The RBAC audit runs last: it checks what all the other tests asked of the emulator."""
    audit_last(items)


@pytest.fixture
def k8s(k8s, request):
    """The plugin's emulator; what the provider asked of it is kept for the RBAC audit."""
    yield k8s
    record(request.node.nodeid, k8s)
