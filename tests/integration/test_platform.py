"""`mlplat up / status / demo / down` run the real services, on loopback, and leave nothing behind."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from airflow_provider_mlplat.testing.services import free_port, free_port_block
from mlplat.platform import Platform, Settings, load

pytestmark = pytest.mark.integration
MLPLAT = str(Path(sys.executable).parent / "mlplat")


def mlplat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MLPLAT, *args], capture_output=True, text=True, timeout=600)


def port_args() -> list[str]:
    return [
        "--airflow-port",
        str(free_port()),
        "--mlflow-port",
        str(free_port()),
        "--ray-port",
        str(free_port_block(3)),
        "--ray-dashboard-port",
        str(free_port()),
        "--model-server-port",
        str(free_port()),
        "--prometheus-port",
        str(free_port()),
        "--pushgateway-port",
        str(free_port()),
    ]


def listening_addresses(procs) -> set[str]:
    addresses = set()
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    addresses.add(conn.laddr.ip.removeprefix("::ffff:"))
        except psutil.NoSuchProcess:
            continue
    return addresses


@pytest.mark.timeout(900)  # the demo runs every reference DAG: 1.5-6 min measured
def test_up_status_demo_down(tmp_path):
    home = str(tmp_path / "home")
    up = mlplat("up", "--home", home, *port_args())
    assert up.returncode == 0, up.stdout + up.stderr
    platform = load(home)
    try:
        s = platform.settings
        assert f"http://127.0.0.1:{s.airflow_port}" in up.stdout
        assert platform.secrets()["airflow_admin_password"] in up.stdout  # the login is printed
        procs = platform.processes()
        assert len(procs) > 10
        assert listening_addresses(procs) <= {"127.0.0.1", "::1"}, (
            "a platform service listens beyond loopback"
        )

        status = mlplat("status", "--home", home)
        assert status.returncode == 0, status.stdout
        for name in ("mlflow", "ray", "model-server", "prometheus", "pushgateway", "airflow"):
            assert any(line.split()[:2] == ["up", name] for line in status.stdout.splitlines()), status.stdout

        supervisor, service_pids = platform.supervisor_pid(), platform.rpc().getAllProcessInfo()
        again = mlplat("up", "--home", home)
        assert again.returncode == 0, again.stdout + again.stderr
        assert platform.supervisor_pid() == supervisor
        assert [p["pid"] for p in platform.rpc().getAllProcessInfo()] == [p["pid"] for p in service_pids]

        from mlplat.demo import run_demo

        assert run_demo(platform, loop=False) == 0  # the closed loop has its own e2e test
    finally:
        down = mlplat("down", "--home", home)
    assert down.returncode == 0, down.stderr
    assert platform.processes() == []
    for port in (
        s.airflow_port,
        s.mlflow_port,
        s.ray_port,
        s.ray_dashboard_port,
        s.model_server_port,
        s.prometheus_port,
        s.pushgateway_port,
    ):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is fine
            sock.bind(("127.0.0.1", port))  # nobody listens there any more
    assert mlplat("status", "--home", home).returncode == 3


def test_a_taken_port_is_named_and_nothing_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mlplat("up", "--home", str(tmp_path), "--services", "mlflow", "--mlflow-port", str(port))
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 (needed by mlflow) is already in use" in result.stderr
    assert not Platform(Settings(home=tmp_path)).supervisor_running()


@pytest.mark.timeout(600)  # up to 3 min measured
def test_postgres_backends_for_airflow_and_mlflow(tmp_path, postgres_db_factory):
    postgres_url, mlflow_db = postgres_db_factory(), postgres_db_factory()
    platform = Platform(
        Settings(
            home=tmp_path,
            airflow_port=free_port(),
            mlflow_port=free_port(),
            airflow_db_url=postgres_url,
            mlflow_db_url=mlflow_db,
            services=("mlflow", "airflow"),
        )
    )
    try:
        result = platform.up(timeout=180)
        assert all(s["ok"] for s in result["services"].values()), result
        import sqlalchemy
        from mlflow import MlflowClient

        MlflowClient(f"http://127.0.0.1:{platform.settings.mlflow_port}").create_experiment("pg-check")
        with sqlalchemy.create_engine(mlflow_db).connect() as conn:
            names = conn.execute(sqlalchemy.text("SELECT name FROM experiments")).scalars().all()
        assert "pg-check" in names
        with sqlalchemy.create_engine(postgres_url).connect() as conn:
            conns = conn.execute(sqlalchemy.text("SELECT conn_id FROM connection")).scalars().all()
        assert "mlflow_default" in conns  # `up` wrote the platform's connections into Airflow's DB
    finally:
        platform.down()
    assert platform.processes() == []
