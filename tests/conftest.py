"""This project's test settings; the harness is the provider's pytest plugin (airflow_provider_mlplat.testing)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]  # tests/integration/test_testing_plugin.py runs a team's test session
REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run without the mlplat plugin (the provider's ``pytest11`` entry point)."""
    if not config.pluginmanager.has_plugin("mlplat"):
        raise pytest.UsageError("the mlplat pytest plugin is not loaded: run `uv sync`, or pass -p mlplat")
