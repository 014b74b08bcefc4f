"""Importing the provider or parsing a DAG file pulls in no heavy SDK (parse time is a feature)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = (
    "mlflow",
    "feast",
    "ray",
    "kserve",
    "evidently",
    "great_expectations",
    "kubernetes",
    "kubernetes_asyncio",
    "pandas",
    "sklearn",
    "pytest",  # the pytest plugin (airflow_provider_mlplat.testing) is loaded by pytest only
    "kmock",
)
PROVIDER_MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts)
    for kind in ("", "hooks", "operators", "sensors", "triggers", "links")
    for p in (REPO / "airflow_provider_mlplat" / kind).glob("*.py")
    if p.stem != "__init__" or kind
)
DAG_FILES = sorted(str(p) for p in (REPO / "dags").glob("*.py"))

_CHECK = """
import json, runpy, sys, importlib
for module in {modules!r}:
    importlib.import_module(module)
for path in {dag_files!r}:
    runpy.run_path(path)
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def heavy_modules_after(modules: list[str], dag_files: list[str], extra_path: str | None = None) -> list[str]:
    """Import modules and run DAG files in a fresh interpreter; return the heavy SDKs it loaded."""
    code = _CHECK.format(modules=modules, dag_files=dag_files, heavy=HEAVY)
    env = None
    if extra_path:
        import os

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([extra_path, str(REPO)])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_provider_modules_and_dag_files_import_no_heavy_sdk():
    assert "airflow_provider_mlplat.inference_log" in PROVIDER_MODULES
    assert DAG_FILES, "no DAG files found"
    assert heavy_modules_after(["airflow_provider_mlplat", *PROVIDER_MODULES], DAG_FILES) == []


def test_the_check_catches_a_module_level_heavy_import(tmp_path):
    (tmp_path / "careless_operator.py").write_text("import mlflow\n\nclass CarelessOperator: ...\n")
    assert "mlflow" in heavy_modules_after(["careless_operator"], [], extra_path=str(tmp_path))


@pytest.mark.parametrize("path", ["airflow_provider_mlplat/operators/new.py", "dags/new_pipeline.py"])
def test_ruff_bans_module_level_heavy_imports(path):
    ruff = Path(sys.executable).parent / "ruff"
    source = "import mlflow\nfrom feast import FeatureStore\n\n\ndef ok():\n    import pandas\n"
    result = subprocess.run(
        [str(ruff), "check", "--select", "TID253", "--stdin-filename", path, "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert "`mlflow` is banned at the module level" in result.stdout
    assert "`feast` is banned at the module level" in result.stdout
    assert "`pandas`" not in result.stdout  # a function-level import is the intended pattern
