"""Platform settings: environment, validation, and the supervisord config they produce."""

from __future__ import annotations

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from mlplat.platform import Platform, Settings


def test_settings_come_from_the_environment_then_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPLAT_HOME", str(tmp_path))
    monkeypatch.setenv("MLPLAT_MLFLOW_PORT", "5111")
    monkeypatch.setenv("MLPLAT_SERVICES", "mlflow, ray")
    settings = Settings.from_env(mlflow_port=None, airflow_port=9999)
    assert (settings.home, settings.mlflow_port, settings.airflow_port) == (tmp_path, 5111, 9999)
    assert settings.services == ("mlflow", "ray")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mlflow_port": 80}, "mlflow_port=80 is not a port number between 1024 and 65533"),
        (
            {"services": ("mlflow", "grafana")},
            r"unknown service\(s\) \['grafana'\]; valid: mlflow, ray, model-server, prometheus, pushgateway, airflow",
        ),
    ],
)
def test_bad_settings_are_named(kwargs, message, tmp_path):
    with pytest.raises(MLPlatConfigError, match=message):
        Settings(home=tmp_path, **kwargs)


def test_bad_port_in_environment_is_named(monkeypatch):
    monkeypatch.setenv("MLPLAT_RAY_PORT", "six")
    with pytest.raises(MLPlatConfigError, match="MLPLAT_RAY_PORT='six' is not a port number"):
        Settings.from_env()


def test_config_keeps_every_service_on_loopback_and_secrets_private(tmp_path):
    platform = Platform(Settings(home=tmp_path))
    platform.write_config()
    conf = (tmp_path / "supervisord.conf").read_text()
    assert "--host 127.0.0.1" in conf and "--dashboard-host 127.0.0.1" in conf
    assert "--node-ip-address 127.0.0.1" in conf and "--skip-serve-logs" in conf
    assert 'AIRFLOW__CORE__PARALLELISM="4"' in conf
    for name in ("secrets.json", "airflow/passwords.json", "ray/auth_token"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    assert platform.secrets() == Platform(Settings(home=tmp_path)).secrets()  # generated once
    conns = platform.connections()
    assert conns["ray_default"]["password"] == (tmp_path / "ray/auth_token").read_text()


def test_environment_values_reach_the_programs_as_set_json_included(tmp_path):
    import configparser
    import json

    from supervisor.datatypes import dict_of_key_value_pairs

    transport = json.dumps({"type": "file", "log_file_path": str(tmp_path / "lineage.jsonl"), "append": True})
    platform = Platform(
        Settings(home=tmp_path / "home", services=("airflow",), openlineage_transport=transport)
    )
    platform.write_config()
    config = configparser.RawConfigParser()
    config.read(platform.conf_file)
    env = dict_of_key_value_pairs(config["program:airflow-scheduler"]["environment"])  # supervisord's parser
    assert env["AIRFLOW__OPENLINEAGE__TRANSPORT"] == transport
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(platform.settings.dags_folder)
