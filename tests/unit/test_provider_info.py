"""The provider registers with Airflow and describes exactly the modules it ships."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema

import airflow_provider_mlplat
from airflow_provider_mlplat import CONNECTION_TYPES, get_provider_info

PKG = Path(airflow_provider_mlplat.__file__).parent


def test_provider_info_matches_airflow_schema():
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_every_listed_module_imports_and_every_module_is_listed():
    info = get_provider_info()
    for kind in ("hooks", "operators", "sensors", "triggers"):
        listed = {m for entry in info.get(kind, []) for m in entry["python-modules"]}
        shipped = {
            f"airflow_provider_mlplat.{kind}.{p.stem}"
            for p in (PKG / kind).glob("*.py")
            if not p.stem.startswith("_") and p.stem != "base"
        }
        assert listed == shipped, f"{kind}: listed {sorted(listed)} but the package ships {sorted(shipped)}"
        for module in listed:
            importlib.import_module(module)


def test_connection_types_point_at_hooks_that_own_them():
    for entry in get_provider_info()["connection-types"]:
        module, _, name = entry["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), name)
        assert hook.conn_type == entry["connection-type"]
        assert hook.default_conn_name == f"{hook.conn_type}_default"
        assert set(entry["conn-fields"]) == set(CONNECTION_TYPES[hook.conn_type]["fields"])
    assert {"mlflow", "feast", "ray", "kserve"} <= set(CONNECTION_TYPES)


def test_airflow_cli_lists_and_describes_the_provider():
    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {p["package_name"] for p in json.loads(listed.stdout)}
    assert "airflow-provider-mlplat" in names
    described = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "get", "airflow-provider-mlplat", "--output", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(described.stdout) == [
        {"Provider": "airflow-provider-mlplat", "Version": airflow_provider_mlplat.__version__}
    ]


def test_providers_manager_exposes_connection_form_fields():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    runtime = ProvidersManagerTaskRuntime()
    assert runtime.hooks["mlflow"].hook_class_name == "airflow_provider_mlplat.hooks.mlflow.MLflowHook"
    assert runtime.hooks["ray"].connection_id_attribute_name == "ray_conn_id"
    manager = ProvidersManager()
    assert "host" in manager.field_behaviours["feast"]["hidden_fields"]
    assert manager.field_behaviours["ray"]["relabeling"]["password"] == "Auth token"
    feast_fields = {k for k in manager.connection_form_widgets if k.startswith("extra__feast__")}
    assert feast_fields == {f"extra__feast__{name}" for name in CONNECTION_TYPES["feast"]["fields"]}
