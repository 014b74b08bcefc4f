"""The ``mlplat`` pytest plugin: ini options, the Airflow home set before airflow is imported, the fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from airflow_provider_mlplat.testing.airflow import configure_airflow

#: the modules whose fixtures and hooks the plugin brings
pytest_plugins = [
    "airflow_provider_mlplat.testing.ci",
    "airflow_provider_mlplat.testing.airflow",
    "airflow_provider_mlplat.testing.platform",
    "airflow_provider_mlplat.testing.stores",
    "airflow_provider_mlplat.testing.feast",
    "airflow_provider_mlplat.testing.kubernetes.fixtures",
]
_HOME_KEY = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ini options."""
    parser.addini(
        "mlplat_dags_folder",
        "DAGs folder run_dag runs from, relative to the ini file ($MLPLAT_TEST_DAGS_FOLDER wins; "
        "default: dags/ of the root directory)",
        type="paths",
    )
    parser.addini(
        "mlplat_plugins_folder", "Airflow plugins folder for the tests (default: none)", type="paths"
    )


def _folder(config: pytest.Config, option: str, env: str) -> Path | None:
    if os.environ.get(env):
        return Path(os.environ[env]).resolve()
    paths = config.getini(option)
    return Path(paths[0]).resolve() if paths else None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Set up the isolated Airflow home before conftest files (or anything else) import airflow."""
    dags = _folder(early_config, "mlplat_dags_folder", "MLPLAT_TEST_DAGS_FOLDER")
    plugins = _folder(early_config, "mlplat_plugins_folder", "MLPLAT_TEST_PLUGINS_FOLDER")
    home = configure_airflow(dags or early_config.rootpath / "dags", plugins)
    if not os.environ.get("MLPLAT_TEST_AIRFLOW_HOME"):
        early_config.stash[_HOME_KEY] = home  # ours: removed at the end of the session


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary Airflow home this session made."""
    if home := config.stash.get(_HOME_KEY, None):
        shutil.rmtree(home, ignore_errors=True)
