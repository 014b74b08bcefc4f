"""The container stack next to `mlplat up`: time to every service healthy, idle memory per service."""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

from airflow_provider_mlplat.testing.services import free_port, free_port_block
from mlplat.platform import Platform, Settings
from tests.compose_support import ComposeProject, build_images, docker_engine

SETTLE_S = 30
HEALTHY_TARGET_S = 90
MEMORY_TARGET_GIB = 8


def _compose() -> tuple[dict[str, float], float, dict[str, float]]:
    """Build (cached layers), up, healthy, idle memory per container, down."""
    env = docker_engine()
    built = build_images(env)
    with tempfile.TemporaryDirectory() as workdir:
        project = ComposeProject(env, Path(workdir), name="mlplat-bench")
        try:
            started = time.monotonic()
            project.up()
            project.wait_healthy(timeout=600)
            healthy = time.monotonic() - started
            time.sleep(SETTLE_S)
            memory = project.memory()
        finally:
            project.down()
    return built, healthy, {name.removeprefix("mlplat-bench_"): mib for name, mib in memory.items()}


def _local() -> tuple[float, dict[str, float]]:
    """`mlplat up` with every service on a fresh home: seconds to answering, idle RSS per program (MiB)."""
    with tempfile.TemporaryDirectory() as home:
        platform = Platform(
            Settings.from_env(  # MLPLAT_MODEL_SERVER_COMMAND, as `mlplat up` reads it
                home=home,
                airflow_port=free_port(),
                mlflow_port=free_port(),
                ray_port=free_port_block(3),
                ray_dashboard_port=free_port(),
                model_server_port=free_port(),
                prometheus_port=free_port(),
                pushgateway_port=free_port(),
            )
        )
        started = time.monotonic()
        try:
            platform.up(timeout=300)
            ready = time.monotonic() - started
            time.sleep(SETTLE_S)
            rss: dict[str, float] = defaultdict(float)
            for program in psutil.Process(platform.supervisor_pid()).children():
                name = _program(program)
                for proc in [program, *program.children(recursive=True)]:
                    try:
                        rss[name] += proc.memory_info().rss / 2**20
                    except psutil.NoSuchProcess:
                        continue
        finally:
            platform.down()
    return ready, dict(rss)


def _program(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        if f"airflow {name}" in cmd:
            return f"airflow-{name}"
    for name in ("mlflow", "model-server", "pushgateway", "prometheus", "ray"):
        if name in cmd:
            return name
    return "other (the API server, whose process title names no service)"


def run() -> str:
    built, healthy, memory = _compose()
    ready, rss = _local()
    total = sum(memory.values()) / 1024
    local_total = sum(rss.values()) / 1024
    rows = "\n".join(f"| {name} | {mib:.0f} |" for name, mib in sorted(memory.items()))
    local_rows = "\n".join(f"| {name} | {mib:.0f} |" for name, mib in sorted(rss.items()))
    builds = ", ".join(f"{tag} {seconds:.0f} s" for tag, seconds in built.items())
    return (
        "## The container stack next to `mlplat up`\n\n"
        "`docker-compose.yaml` with the test override (Debian stand-ins for the official PostgreSQL, Redis, "
        "Prometheus and Pushgateway images), images built before `up` on the Debian base "
        f"(cached layers; this run: {builds}). `up` on fresh volumes until every container is healthy "
        f"and the init service exited 0: **{healthy:.0f} s** (target <= {HEALTHY_TARGET_S} s). Idle memory "
        f"{SETTLE_S} s later (`docker stats`, the cgroup's memory without page cache): **{total:.2f} GiB** in {len(memory)} containers "
        f"(target <= {MEMORY_TARGET_GIB} GB).\n\n"
        f"`mlplat up` (every service, SQLite) on the same machine right after: answering in **{ready:.0f} s**, "
        f"**{local_total:.2f} GiB** summed RSS (no PostgreSQL, Redis, Celery worker or Ray worker node).\n\n"
        "| container | MiB |\n|---|---:|\n"
        f"{rows}\n\n"
        "| `mlplat up` program | MiB |\n|---|---:|\n"
        f"{local_rows}"
    )
