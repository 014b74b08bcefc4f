"""docker-compose.yaml: valid Compose Specification, health checks, loopback ports, secrets only from .env."""

from __future__ import annotations

import json
import re
import stat

import jsonschema
import pytest
import yaml

from mlplat import keys
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yaml"
OVERRIDE = REPO / "tests" / "compose" / "docker-compose.test.yaml"
#: one-shot jobs: they exit when done, so "healthy" means nothing (dependants wait for their success)
ONE_SHOT = {"mlplat-init", "demo"}
REQUIRED = re.compile(r"\$\{(\w+):\?([^}]*)\}")
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|FERNET_KEY|TOKEN)$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.parametrize("path", [COMPOSE, OVERRIDE], ids=lambda p: p.name)
def test_the_files_validate_against_the_compose_specification(path):
    schema = json.loads((REPO / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load(path.read_text()))


def test_no_key_that_docker_compose_1_29_rejects(compose):
    assert "name" not in compose  # a top-level name: is v2-only


def test_every_long_running_service_has_a_health_check(compose):
    services = compose["services"]
    missing = [
        name
        for name, svc in services.items()
        if name not in ONE_SHOT and "test" not in svc.get("healthcheck", {})
    ]
    assert not missing
    assert set(services) >= ONE_SHOT


def test_every_published_port_is_on_loopback(compose):
    published = [(name, port) for name, svc in compose["services"].items() for port in svc.get("ports", [])]
    assert published
    assert all(isinstance(port, str) and port.startswith("127.0.0.1:") for _, port in published), published


def test_secrets_come_only_from_env_and_each_names_the_command_that_makes_it(compose):
    text = COMPOSE.read_text()
    required = REQUIRED.findall(text)
    assert {var for var, _ in required} == set(keys.ENV_NAMES.values())
    assert all("make compose-env" in message for _, message in required)
    for name, svc in compose["services"].items():
        env = svc.get("environment", {})
        for var, value in env.items():
            if SECRET_NAME.search(var):
                assert REQUIRED.fullmatch(str(value)), f"{name}: {var} is not taken from .env"
    # database URLs carry the password only by reference
    for url in re.findall(r"postgresql\S*://[^\s\"']+", text):
        assert "${MLPLAT_POSTGRES_PASSWORD:?" in url, url


def test_the_env_file_is_written_once_private_and_holds_every_secret(tmp_path):
    env = tmp_path / ".env"
    assert keys.write_env(env)
    first = env.read_text()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in first.splitlines() if not line.startswith("#"))
    assert set(values) == set(keys.ENV_NAMES.values())
    assert len(values["MLPLAT_JWT_SECRET"]) >= 64 and all(values.values())
    assert not keys.write_env(env) and env.read_text() == first  # kept: secrets are made once


def test_the_init_service_writes_the_connection_ids_mlplat_up_writes(monkeypatch, tmp_path):
    from mlplat.compose import ComposeStack
    from mlplat.platform import Platform, Settings

    monkeypatch.setenv("RAY_AUTH_TOKEN", "t" * 64)
    local = Platform(Settings(home=tmp_path)).connections()
    stack = ComposeStack().connections()
    assert set(stack) == set(local)
    assert {conn_id: c["conn_type"] for conn_id, c in stack.items()} == {
        conn_id: c["conn_type"] for conn_id, c in local.items()
    }
    assert (
        stack["ray_default"]["host"] == "http://ray-head:8265"
        and stack["ray_default"]["password"] == "t" * 64
    )
    assert stack["feast_default"]["extra"]["batch_engine"]["type"] == "ray.engine"
