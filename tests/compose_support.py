"""The container stack for tests and benchmarks: a Docker engine, the images, a compose project."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from airflow_provider_mlplat.testing.services import free_port
from mlplat import keys

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "docker" / "engine.sh"
COMPOSE_FILE = REPO / "docker-compose.yaml"
OVERRIDE = REPO / "tests" / "compose" / "docker-compose.test.yaml"
#: made from Debian's packages by `docker/engine.sh base` (debootstrap): no image registry needed
BASE_IMAGE = "mlplat-base:bookworm"
#: Debian's CLI, of the same release as its engine: it builds with the engine's built-in BuildKit
#: frontend, where a newer CLI without the buildx plugin refuses DOCKER_BUILDKIT=1
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
PROJECT_IMAGES = {"airflow": "mlplat-airflow:test", "model-server": "mlplat-model-server:test"}
STAND_INS = ("postgres", "redis", "prometheus", "pushgateway")  # tests/compose/Dockerfile.services
PORTS = ("airflow", "mlflow", "ray_dashboard", "model_server", "prometheus", "pushgateway", "grafana")


class EngineUnavailable(Exception):
    """No Docker engine could be installed or started here."""


def docker_engine() -> dict[str, str]:
    """
    Install Docker Engine, docker-compose and debootstrap from Debian when missing, start a dockerd
    when none answers, make the Debian base image once; the environment that reaches that engine.
    """
    result = subprocess.run([str(ENGINE), "base"], capture_output=True, text=True)
    if result.returncode:
        raise EngineUnavailable(result.stderr.strip() or f"{ENGINE} base failed")
    host = result.stdout.strip().rpartition("DOCKER_HOST=")[2]
    return {**os.environ, "DOCKER_HOST": host, "DOCKER_BUILDKIT": "1"}


def ca_bundle() -> str | None:
    """The CA bundle this machine's Python tools trust, for builds that reach the package index."""
    for candidate in (
        os.environ.get("SSL_CERT_FILE"),
        os.environ.get("PIP_CERT"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def build_images(env: dict[str, str]) -> dict[str, float]:
    """
    Build the project's images on the Debian base (layers and uv's cache stay in the engine's data
    root between runs) and the Debian stand-ins of the official images; seconds per image.

    :param env: environment reaching the engine.
    """
    secret = ["--secret", f"id=ca_bundle,src={ca}"] if (ca := ca_bundle()) else []
    seconds = {}
    builds = [
        (tag, ["--target", target, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *secret, str(REPO)])
        for target, tag in PROJECT_IMAGES.items()
    ] + [
        (
            f"mlplat-test-{name}:bookworm",
            ["--target", name, "-f", str(OVERRIDE.parent / "Dockerfile.services"), str(OVERRIDE.parent)],
        )
        for name in STAND_INS
    ]
    for tag, args in builds:
        started = time.monotonic()
        result = subprocess.run(
            [DOCKER, "build", "-q", "-t", tag, *args], env=env, capture_output=True, text=True
        )
        if result.returncode:
            raise RuntimeError(f"building {tag} failed:\n{result.stderr[-3000:]}")
        seconds[tag] = round(time.monotonic() - started, 1)
    return seconds


class ComposeProject:
    """
    One compose project of docker-compose.yaml with the test override: its own name, secrets
    (an env file made by :func:`mlplat.keys.write_env`) and free loopback ports.

    :param env: environment reaching the engine.
    :param workdir: folder for its env file.
    :param name: compose project name.
    """

    def __init__(self, env: dict[str, str], workdir: Path, name: str = "mlplat-test") -> None:
        self.name, self.env_file = name, workdir / ".env"
        keys.write_env(self.env_file)
        self.ports = {port: free_port() for port in PORTS}
        self.env = {
            **env,
            "MLPLAT_IMAGE": PROJECT_IMAGES["airflow"],
            "MLPLAT_MODEL_SERVER_IMAGE": PROJECT_IMAGES["model-server"],
            **{f"MLPLAT_{port.upper()}_PORT": str(number) for port, number in self.ports.items()},
        }

    def command(self, *args: str) -> list[str]:
        """The docker-compose command line for this project."""
        return [
            "docker-compose", "-p", self.name, "--env-file", str(self.env_file),
            "-f", str(COMPOSE_FILE), "-f", str(OVERRIDE), *args,
        ]  # fmt: skip

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        """
        Run docker-compose on this project.

        :param args: its arguments.
        :param check: fail with the output's tail on a non-zero exit.
        :param timeout: seconds.
        """
        result = subprocess.run(
            self.command(*args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode:
            raise RuntimeError(
                f"docker-compose {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}"
            )
        return result

    def compose_process(self, log: Path, *args: str) -> subprocess.Popen:
        """
        Start docker-compose on this project in the background, its output going to a file.

        :param log: the file.
        :param args: its arguments.
        """
        with log.open("w") as out:
            return subprocess.Popen(self.command(*args), env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def docker(self, *args: str) -> str:
        """Output of a docker CLI command on this project's engine."""
        return subprocess.run(
            [DOCKER, *args], env=self.env, capture_output=True, text=True, check=True
        ).stdout

    def containers(self) -> list[dict]:
        """``docker inspect`` of every container of this project, running or not."""
        ids = self.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}").split()
        return json.loads(self.docker("inspect", *ids)) if ids else []

    def up(self, **scale: int) -> None:
        """
        Start the stack (the images exist: nothing is built or pulled).

        :param scale: replicas per service, e.g. ``airflow_worker=2``.
        """
        replicas = [f"--scale={name.replace('_', '-')}={n}" for name, n in scale.items()]
        self.compose("up", "-d", "--no-build", *replicas)

    def health(self) -> dict[str, str]:
        """Container name -> health status (``exited <code>`` for one that stopped)."""
        out = {}
        for c in self.containers():
            state = c["State"]
            out[c["Name"].lstrip("/")] = (
                state.get("Health", {}).get("Status", state["Status"])
                if state["Running"]
                else f"exited {state['ExitCode']}"
            )
        return out

    def wait_healthy(self, timeout: float = 300) -> float:
        """
        Wait until every long-running container is healthy and the one-shot init exited 0; seconds.

        :param timeout: seconds.
        """
        started = time.monotonic()
        while True:
            health = self.health()
            pending = {
                n: s for n, s in health.items() if s != "healthy" and not (_init(n) and s == "exited 0")
            }
            if health and not pending:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"not healthy after {timeout:.0f} s: {pending}")
            time.sleep(2)

    def memory(self) -> dict[str, float]:
        """Memory in use per running container (MiB, as ``docker stats`` reports it)."""
        lines = self.docker("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}").splitlines()
        out = {}
        for line in lines:
            name, usage = line.split("\t")
            if name.startswith(f"{self.name}_"):
                out[name] = _mib(usage.split("/")[0].strip())
        return out

    def down(self) -> None:
        """Remove the containers, networks and volumes of this project (every profile)."""
        self.compose("--profile", "demo", "--profile", "grafana", "down", "--volumes", "--remove-orphans")

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.name}"
        return {
            "containers": self.docker("ps", "-aq", "--filter", label).split(),
            "networks": self.docker("network", "ls", "-q", "--filter", label).split(),
            "volumes": self.docker("volume", "ls", "-q", "--filter", label).split(),
        }


def _init(name: str) -> bool:
    return "_mlplat-init_" in name


def _mib(text: str) -> float:
    units = {
        "B": 1 / 2**20,
        "KiB": 1 / 2**10,
        "MiB": 1,
        "GiB": 2**10,
        "kB": 1e3 / 2**20,
        "MB": 1e6 / 2**20,
        "GB": 1e9 / 2**20,
    }
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(f"unknown memory figure {text!r}")
