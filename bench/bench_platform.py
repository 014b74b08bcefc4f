"""Footprint of the local platform: `mlplat up` to every service answering, and idle RSS."""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict

import psutil

from airflow_provider_mlplat.testing.services import free_port, free_port_block
from mlplat.platform import Platform, Settings

SETTLE_S = 20


def _group(proc: psutil.Process) -> str:
    cmd = " ".join(proc.cmdline())
    for name in ("mlflow", "airflow", "supervisord"):
        if name in cmd:
            return name
    return "ray" if "ray" in cmd else "other"


def run() -> str:
    with tempfile.TemporaryDirectory() as home:
        platform = Platform(
            Settings(
                home=home,
                airflow_port=free_port(),
                mlflow_port=free_port(),
                ray_port=free_port_block(3),
                ray_dashboard_port=free_port(),
                services=("mlflow", "ray", "airflow"),  # the footprint target's scope
            )
        )
        started = time.monotonic()
        try:
            platform.up(timeout=300)
            ready = time.monotonic() - started
            time.sleep(SETTLE_S)
            rss: dict[str, int] = defaultdict(int)
            count = 0
            for proc in platform.processes():
                try:
                    rss[_group(proc)] += proc.memory_info().rss
                    count += 1
                except psutil.NoSuchProcess:
                    continue
        finally:
            platform.down()
    total = sum(rss.values()) / 2**30
    rows = "\n".join(f"| {name} | {value / 2**20:.0f} |" for name, value in sorted(rss.items()))
    return (
        "## Local platform footprint (Airflow + MLflow + Ray head)\n\n"
        f"`mlplat up` on a fresh home (SQLite, every service started, DB migrated, connections written) "
        f"until every service answers: **{ready:.1f} s** (target <= 30 s). Summed RSS of the {count} "
        f"platform processes {SETTLE_S} s after that: **{total:.2f} GiB** (target <= 4 GiB; with defaults, "
        "Airflow's 32 pre-forked LocalExecutor workers alone take ~5 GB: the platform runs 4, "
        "one API-server worker, one MLflow worker and no MLflow job runner).\n\n"
        "| group | RSS (MiB) |\n|---|---|\n" + rows + "\n\nRSS double-counts pages shared between forked "
        "processes (the Airflow workers, Ray's dashboard modules), so the real memory use is lower."
    )
