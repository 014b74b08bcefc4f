"""The local platform: services under one supervisord, their config, health and connections."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any
from xmlrpc.client import Fault

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatServiceUnavailable
from mlplat import keys

if TYPE_CHECKING:
    from mlplat.airflow_api import AirflowRestClient

#: the reference DAG bundle (dags/, include/, plugins/): package resources, which in a checkout are
#: links to the repository's top-level folders
BUNDLE = Path(__file__).resolve().parent / "bundle"
BIN = Path(sys.executable).parent
#: the model server's own environment, which `make install` prepares in a checkout
CHECKOUT_MODEL_SERVER = (
    Path(__file__).resolve().parents[2] / "model_server" / ".venv" / "bin" / "mlplat-model-server"
)
#: Airflow components in start order; supervisord stops them in reverse (scheduler first).
AIRFLOW_COMPONENTS = ("api-server", "dag-processor", "triggerer", "scheduler")
ALL_SERVICES = ("mlflow", "ray", "model-server", "prometheus", "pushgateway", "airflow")
#: SQLite metadata DB: four Airflow components and the REST API write to one file; wait up to 30 s for
#: a lock (the default 5 s made REST writes fail with "database is locked" while a DAG ran)
SQLITE_CONNECT_ARGS = {"timeout": 30}
SQLITE_AIRFLOW_ENV = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{__name__}.SQLITE_CONNECT_ARGS",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": f"{__name__}.SQLITE_CONNECT_ARGS",
}
#: set for every supervised process (and so its children): how `down` finds what is left
MARKER = "MLPLAT_SUPERVISED_HOME"


@dataclass
class Settings:
    """
    Where the platform lives and which ports it takes; every field can come from ``MLPLAT_<FIELD>``.

    :param home: state folder (databases, logs, artifacts, secrets).
    :param airflow_port: Airflow API server / UI port.
    :param mlflow_port: MLflow tracking server port.
    :param ray_port: Ray GCS port (the next two ports go to the Ray client server and dashboard agent).
    :param ray_dashboard_port: Ray dashboard / Job Submission API port.
    :param model_server_port: KServe model server port.
    :param prometheus_port: Prometheus port.
    :param pushgateway_port: Prometheus Pushgateway port (batch jobs such as drift checks push there).
    :param airflow_db_url: Airflow metadata database (default: SQLite under home).
    :param mlflow_db_url: MLflow backend store (default: SQLite under home).
    :param dags_folder: DAG folder Airflow runs (default: the reference bundle's ``dags/``).
    :param plugins_folder: Airflow plugins folder (default: the reference bundle's ``plugins/``).
    :param model_server_command: the ``mlplat-model-server`` executable, installed in an environment
        of its own (default: the checkout's ``model_server/.venv``, else the one on ``PATH``).
    :param openlineage_transport: where Airflow sends OpenLineage events (the OpenLineage provider's
        transport JSON, e.g. ``{"type": "http", "url": "http://marquez:5000"}``; empty: none are sent).
    :param services: which services to run.
    """

    home: Path = Path(".mlplat")
    airflow_port: int = 8080
    mlflow_port: int = 5000
    ray_port: int = 6380
    ray_dashboard_port: int = 8265
    model_server_port: int = 8090
    prometheus_port: int = 9090
    pushgateway_port: int = 9091
    airflow_db_url: str = ""
    mlflow_db_url: str = ""
    dags_folder: Path = BUNDLE / "dags"
    plugins_folder: Path = BUNDLE / "plugins"
    model_server_command: str = ""
    openlineage_transport: str = ""
    services: tuple[str, ...] = ALL_SERVICES

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser().resolve()
        self.dags_folder = Path(self.dags_folder).expanduser().resolve()
        self.plugins_folder = Path(self.plugins_folder).expanduser().resolve()
        unknown = set(self.services) - set(ALL_SERVICES)
        if unknown:
            raise MLPlatConfigError(f"unknown service(s) {sorted(unknown)}; valid: {', '.join(ALL_SERVICES)}")
        for f in fields(self):
            if f.name.endswith("_port"):
                port = getattr(self, f.name)
                if not isinstance(port, int) or not 1024 <= port <= 65533:
                    raise MLPlatConfigError(f"{f.name}={port!r} is not a port number between 1024 and 65533")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """
        Settings from ``MLPLAT_*`` environment variables, then explicit overrides (None = unset).

        :param overrides: field values that win over the environment.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"MLPLAT_{f.name.upper()}")
            if raw is None:
                continue
            if f.name.endswith("_port"):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise MLPlatConfigError(f"MLPLAT_{f.name.upper()}={raw!r} is not a port number") from None
            elif f.name == "services":
                values[f.name] = tuple(s.strip() for s in raw.split(",") if s.strip())
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def run_dir(self) -> Path:
        """Short folder for unix sockets (a socket path must stay under 108 bytes)."""
        digest = hashlib.sha1(str(self.home).encode()).hexdigest()[:10]
        return Path("/tmp") / f"mlplat-{digest}"

    def to_json(self) -> dict[str, Any]:
        """JSON-able form, saved next to the state so ``status`` and ``down`` find the same ports."""
        data = asdict(self)
        data.update(
            home=str(self.home),
            dags_folder=str(self.dags_folder),
            plugins_folder=str(self.plugins_folder),
            services=list(self.services),
        )
        return data


@dataclass(frozen=True)
class Service:
    """One supervised program; ``files`` are config files ``write_config`` writes for it."""

    name: str
    command: list[str]
    url: str
    health_path: str
    ports: tuple[int, ...]
    env: dict[str, str] = field(default_factory=dict)
    priority: int = 100
    autostart: bool = True
    stop_wait: int = 20
    files: dict[Path, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoints:
    """
    Where the services answer, as the DAGs' tasks reach them (``None``: not running).

    :param home: state folder the tasks share: raw data, Feast registry, inference log.
    :param mlflow: MLflow tracking URI.
    :param ray_dashboard: Ray dashboard / Job API URL.
    :param ray_token: Ray auth token.
    :param model_server: KServe model server URL.
    :param prometheus: Prometheus URL.
    :param pushgateway: Pushgateway URL.
    :param feast_online_store: Feast online store config (default: SQLite under ``home``).
    :param feast_batch_engine: Feast batch engine config (default: Feast's local engine).
    """

    home: Path
    mlflow: str | None = None
    ray_dashboard: str | None = None
    ray_token: str = ""
    model_server: str | None = None
    prometheus: str | None = None
    pushgateway: str | None = None
    feast_online_store: dict[str, Any] | None = None
    feast_batch_engine: dict[str, Any] | None = None


def connections(endpoints: Endpoints) -> dict[str, dict[str, Any]]:
    """
    The Airflow connections that point the reference DAGs at the platform's services.

    :param endpoints: where the services answer.
    """
    e, conns = endpoints, {}
    if e.mlflow:
        conns["mlflow_default"] = {"conn_type": "mlflow", "host": e.mlflow}
    if e.ray_dashboard:
        conns["ray_default"] = {"conn_type": "ray", "host": e.ray_dashboard, "password": e.ray_token}
    if e.model_server:
        conns["kserve_default"] = {
            "conn_type": "kserve",
            "host": e.model_server,
            "extra": {"namespace": "local", "inference_log": str(e.home / "inference-log")},
        }
    if e.prometheus:
        conns["prometheus_default"] = {"conn_type": "prometheus", "host": e.prometheus}
        if e.pushgateway:
            conns["prometheus_default"]["extra"] = {"pushgateway_url": e.pushgateway}
    # Feast needs no service of its own: the reference repo, its raw data, registry and online store
    feast = {
        "repo_path": str(BUNDLE / "include" / "feature_repo"),
        "data_dir": str(e.home / "data"),
        "registry": str(e.home / "feast" / "registry.db"),
        "online_store": e.feast_online_store
        or {"type": "sqlite", "path": str(e.home / "feast" / "online.db")},
    }
    if e.feast_batch_engine:
        feast.update(batch_engine=e.feast_batch_engine, ray_conn_id="ray_default")
    conns["feast_default"] = {"conn_type": "feast", "extra": feast}
    return conns


#: restarts by supervisord a service may take while the platform comes up, before it counts as broken
MAX_RESTARTS = 2


class Platform:
    """
    The local platform under one ``$MLPLAT_HOME``: ``up``, ``status``, ``down``.

    :param settings: where it lives and which ports it takes.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home
        self.state_file = self.home / "platform.json"
        self.conf_file = self.home / "supervisord.conf"
        self.socket = settings.run_dir / "supervisor.sock"

    # -- secrets and derived config -------------------------------------------------------------

    def secrets(self) -> dict[str, str]:
        """Generated once per home and kept there (mode 0600): passwords, tokens, keys."""
        path = self.home / "secrets.json"
        if path.exists():
            values = json.loads(path.read_text())
            missing = {k: v for k, v in keys.generate().items() if k not in values}  # a home from before
            if not missing:
                return values
            values.update(missing)
        else:
            values = keys.generate()
        self.home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(values, indent=2))
        return values

    def airflow_env(self) -> dict[str, str]:
        """Environment of every Airflow component and of the ``airflow`` CLI calls ``up`` makes."""
        s, sec, home = self.settings, self.secrets(), self.home / "airflow"
        api = f"http://127.0.0.1:{s.airflow_port}"
        return {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(s.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(s.plugins_folder),
            # DAGs import the bundle's helpers as `include.<module>` (the Astro convention)
            "PYTHONPATH": str(BUNDLE),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # 32 pre-forked workers (the default) cost ~5 GB; 4 run the reference DAGs.
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": sec["airflow_fernet_key"],
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": sec["airflow_jwt_secret"],
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": s.airflow_db_url or f"sqlite:///{home / 'airflow.db'}",
            **({} if s.airflow_db_url else SQLITE_AIRFLOW_ENV),
            # new DAG files show up within 30 s instead of the default 5 minutes
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__MLPLAT__ARTIFACT_ROOT": str(self.home / "artifacts"),
            **(
                {
                    "AIRFLOW__OPENLINEAGE__TRANSPORT": s.openlineage_transport,
                    "AIRFLOW__OPENLINEAGE__NAMESPACE": "mlplat",
                }
                if s.openlineage_transport
                else {}
            ),
        }

    def ray_env(self) -> dict[str, str]:
        """Environment of ``ray start`` and of every Ray driver: loopback only, token auth."""
        return {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.home / "ray" / "auth_token"),
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def model_server_command(self) -> str:
        """The model server executable: the setting, the checkout's environment, or ``PATH``."""
        command = self.settings.model_server_command or (
            str(CHECKOUT_MODEL_SERVER)
            if CHECKOUT_MODEL_SERVER.exists()
            else shutil.which("mlplat-model-server")
        )
        if not command or not Path(command).exists():
            raise MLPlatConfigError(
                f"the model-server service needs the mlplat-model-server command{f' ({command})' if command else ''}, "
                "installed in an environment of its own (KServe's SDK cannot share Airflow's): `make install` "
                "in a checkout, or `uv tool install <model_server folder or wheel>` (then set MLPLAT_MODEL_SERVER_COMMAND "
                "if it is not on PATH); or leave it out with --services"
            )
        return command

    def services(self) -> list[Service]:
        """The programs of the selected services, with the URL and path that say they answer."""
        s, out = self.settings, []
        if "mlflow" in s.services:
            out.append(
                Service(
                    name="mlflow",
                    command=[
                        str(BIN / "mlflow"),
                        "server",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(s.mlflow_port),
                        "--workers",
                        "1",
                        "--backend-store-uri",
                        s.mlflow_db_url or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}",
                        "--artifacts-destination",
                        str(self.home / "mlflow" / "artifacts"),
                    ],
                    # the job runner is not used by the platform and costs ~1 GB
                    env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                    url=f"http://127.0.0.1:{s.mlflow_port}",
                    health_path="/health",
                    ports=(s.mlflow_port,),
                    priority=10,
                )
            )
        if "ray" in s.services:
            out.append(
                Service(
                    name="ray",
                    command=[
                        str(BIN / "ray"),
                        "start",
                        "--head",
                        "--block",
                        "--disable-usage-stats",
                        "--node-ip-address",
                        "127.0.0.1",
                        "--port",
                        str(s.ray_port),
                        "--ray-client-server-port",
                        str(s.ray_port + 1),
                        "--dashboard-agent-listen-port",
                        str(s.ray_port + 2),
                        "--include-dashboard",
                        "true",
                        "--dashboard-host",
                        "127.0.0.1",
                        "--dashboard-port",
                        str(s.ray_dashboard_port),
                        "--object-store-memory",
                        str(1_000_000_000),
                        "--temp-dir",
                        str(s.run_dir / "ray"),
                    ],
                    # job entrypoints run `python ...` from the head's PATH: make it this environment's
                    env={**self.ray_env(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"},
                    url=f"http://127.0.0.1:{s.ray_dashboard_port}",
                    health_path="/api/version",
                    ports=(s.ray_port, s.ray_port + 1, s.ray_port + 2, s.ray_dashboard_port),
                    priority=10,
                    stop_wait=5,  # GCS and raylet can ignore SIGTERM for 20 s and more
                )
            )
        if "model-server" in s.services:
            out.append(
                Service(
                    name="model-server",
                    command=[self.model_server_command()],
                    env={
                        "MLPLAT_SERVING_HOST": "127.0.0.1",
                        "MLPLAT_SERVING_PORT": str(s.model_server_port),
                        "MLPLAT_SERVING_STATE_FILE": str(self.home / "serving" / "deployments.json"),
                        "MLPLAT_SERVING_INFERENCE_LOG": str(self.home / "inference-log"),
                        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{s.mlflow_port}",
                    },
                    url=f"http://127.0.0.1:{s.model_server_port}",
                    health_path="/v2/health/live",
                    ports=(s.model_server_port,),
                    priority=20,
                )
            )
        if "prometheus" in s.services:
            binary = _binary("prometheus", "prometheus")
            config = self.home / "prometheus" / "prometheus.yml"
            out.append(
                Service(
                    name="prometheus",
                    command=[
                        binary,
                        f"--config.file={config}",
                        f"--web.listen-address=127.0.0.1:{s.prometheus_port}",
                        f"--storage.tsdb.path={self.home / 'prometheus' / 'data'}",
                        "--storage.tsdb.retention.time=7d",
                    ],
                    url=f"http://127.0.0.1:{s.prometheus_port}",
                    health_path="/-/ready",
                    ports=(s.prometheus_port,),
                    priority=30,
                    files={
                        config: prometheus_config(
                            f"127.0.0.1:{s.prometheus_port}",
                            f"127.0.0.1:{s.model_server_port}",
                            f"127.0.0.1:{s.pushgateway_port}",
                        )
                    },
                )
            )
        if "pushgateway" in s.services:
            out.append(
                Service(
                    name="pushgateway",
                    command=[
                        _binary("prometheus-pushgateway", "pushgateway"),
                        f"--web.listen-address=127.0.0.1:{s.pushgateway_port}",
                        # pushed metrics survive a restart (Debian's default file is under /var/lib)
                        f"--persistence.file={self.home / 'pushgateway' / 'metrics.data'}",
                        "--persistence.interval=1m",
                    ],
                    url=f"http://127.0.0.1:{s.pushgateway_port}",
                    health_path="/-/ready",
                    ports=(s.pushgateway_port,),
                    priority=30,
                )
            )
        if "airflow" in s.services:
            api = f"http://127.0.0.1:{s.airflow_port}"
            for rank, component in enumerate(AIRFLOW_COMPONENTS):
                command = [str(BIN / "airflow"), component]
                if component in ("scheduler", "triggerer"):
                    command.append("--skip-serve-logs")  # the log servers would bind 0.0.0.0
                out.append(
                    Service(
                        name=f"airflow-{component}",
                        command=command,
                        env=self.airflow_env(),
                        url=api,
                        health_path="/api/v2/monitor/health",
                        ports=(s.airflow_port,) if component == "api-server" else (),
                        priority=100 + 10 * rank,
                        autostart=False,  # started once the metadata DB is migrated
                    )
                )
        return out

    def connections(self) -> dict[str, dict[str, Any]]:
        """The Airflow connections that point the reference DAGs at these services."""
        s = self.settings

        def url(service: str, port: int) -> str | None:
            return f"http://127.0.0.1:{port}" if service in s.services else None

        return connections(
            Endpoints(
                home=self.home,
                mlflow=url("mlflow", s.mlflow_port),
                ray_dashboard=url("ray", s.ray_dashboard_port),
                ray_token=self.secrets()["ray_auth_token"] if "ray" in s.services else "",
                model_server=url("model-server", s.model_server_port),
                prometheus=url("prometheus", s.prometheus_port),
                pushgateway=url("pushgateway", s.pushgateway_port),
            )
        )

    @property
    def service_names(self) -> tuple[str, ...]:
        """The services this platform runs."""
        return self.settings.services

    def airflow_client(self) -> AirflowRestClient:
        """A REST client of this platform's Airflow, logged in as its admin."""
        from mlplat.airflow_api import AirflowRestClient

        return AirflowRestClient(
            f"http://127.0.0.1:{self.settings.airflow_port}",
            "admin",
            self.secrets()["airflow_admin_password"],
        )

    def links(self) -> dict[str, str]:
        """Where a person looks: Airflow, MLflow, Ray and Prometheus URLs of the services running."""
        s = self.settings
        urls = {
            "airflow": f"http://127.0.0.1:{s.airflow_port}",
            "mlflow": f"http://127.0.0.1:{s.mlflow_port}",
            "ray": f"http://127.0.0.1:{s.ray_dashboard_port}",
            "prometheus": f"http://127.0.0.1:{s.prometheus_port}",
        }
        return {name: url for name, url in urls.items() if name in s.services}

    # -- supervisord --------------------------------------------------------------------------

    def write_config(self) -> None:
        """Write supervisord.conf, the Airflow password file, the Ray token and platform.json."""
        for sub in ("logs", "airflow", "mlflow/artifacts", "ray", "artifacts", "pushgateway"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self.settings.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sec = self.secrets()
        passwords = self.home / "airflow" / "passwords.json"
        passwords.touch(mode=0o600)
        passwords.write_text(
            json.dumps({"admin": sec["airflow_admin_password"], "viewer": sec["airflow_viewer_password"]})
        )
        token = self.home / "ray" / "auth_token"
        token.touch(mode=0o600)
        token.write_text(sec["ray_auth_token"])
        lines = [
            "[unix_http_server]",
            f"file={self.socket}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={self.home / 'logs' / 'supervisord.log'}",
            f"pidfile={self.settings.run_dir / 'supervisord.pid'}",
            f"directory={self.home}",
            f"environment={MARKER}={_env_value(str(self.home))}",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket}",
            "",
        ]
        for svc in self.services():
            for path, text in svc.files.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            env = ",".join(f"{k}={_env_value(v)}" for k, v in svc.env.items())
            lines += [
                f"[program:{svc.name}]",
                "command=" + " ".join(_quote(part) for part in svc.command),
                f"priority={svc.priority}",
                f"autostart={str(svc.autostart).lower()}",
                "autorestart=unexpected",
                "startsecs=3",
                "startretries=2",
                "stopasgroup=true",
                "killasgroup=true",
                f"stopwaitsecs={svc.stop_wait}",
                "stopsignal=TERM",
                f"stdout_logfile={self.home / 'logs' / (svc.name + '.log')}",
                "redirect_stderr=true",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=2",
            ]
            if env:
                lines.append(f"environment={env}")
            lines.append("")
        self.conf_file.write_text("\n".join(lines))
        self.state_file.write_text(json.dumps(self.settings.to_json(), indent=2))

    def rpc(self):
        """XML-RPC proxy of this home's supervisord (over its unix socket)."""
        from xmlrpc.client import ServerProxy

        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.socket}")
        return ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def supervisor_running(self) -> bool:
        """Whether this home's supervisord answers."""
        if not self.socket.exists():
            return False
        try:
            return self.rpc().getState()["statename"] == "RUNNING"
        except (OSError, Fault):
            return False

    def process_states(self) -> dict[str, str]:
        """Supervisor state of each program (RUNNING, STARTING, FATAL, ...); empty when down."""
        if not self.supervisor_running():
            return {}
        return {p["name"]: p["statename"] for p in self.rpc().getAllProcessInfo()}

    # -- up / status / down -------------------------------------------------------------------

    def check_ports(self) -> None:
        """Fail with the port and its owner's name when a port the platform needs is taken."""
        for svc in self.services():
            for port in svc.ports:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    # as the servers do, so that a port in TIME_WAIT after `down` counts as free
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        sock.bind(("127.0.0.1", port))
                    except OSError:
                        raise MLPlatConfigError(
                            f"port {port} on 127.0.0.1 (needed by {svc.name}) is already in use: stop "
                            "what holds it or choose other ports (mlplat up --help lists the options)"
                        ) from None

    def up(self, timeout: float = 180.0) -> dict[str, Any]:
        """
        Start what is not running, write the Airflow connections, wait until every service answers.

        :param timeout: seconds to wait for all services to answer.
        """
        started = time.monotonic()
        if not self.supervisor_running():
            self.check_ports()
            self.write_config()
            started_supervisor = subprocess.run(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf_file)],
                cwd=self.home,
                env=_clean_env(),
                capture_output=True,
                text=True,
            )
            if started_supervisor.returncode:
                raise MLPlatServiceUnavailable(
                    f"supervisord did not start: {started_supervisor.stderr.strip()}"
                )
            _wait(self.supervisor_running, 15, "supervisord did not start; see logs/supervisord.log")
        rpc = self.rpc()
        if "airflow" in self.settings.services:
            self._airflow_cli("db", "migrate")
            if not self.settings.airflow_db_url:
                with contextlib.closing(sqlite3.connect(self.home / "airflow" / "airflow.db")) as db:
                    db.execute("PRAGMA journal_mode=WAL")  # persistent: readers stop blocking writers
            for svc in self.services():
                if rpc.getProcessInfo(svc.name)["statename"] not in ("RUNNING", "STARTING"):
                    rpc.startProcess(svc.name, False)
            self._import_connections()  # while the components boot
        self.wait_healthy(timeout)
        return {"seconds": round(time.monotonic() - started, 1), "services": self.status()}

    def wait_healthy(self, timeout: float) -> None:
        """
        Wait until every service answers; fail early with its log tail when one dies, or keeps
        exiting and being restarted by supervisord (a process that crashes after ``startsecs`` loops
        that way). One restart is a second chance, not a failure: Ray's head can time out once on a
        loaded machine ("Timed out waiting for node info") and come up on its next start.
        """
        deadline = time.monotonic() + timeout
        pids: dict[str, set[int]] = {}
        while True:
            for info in self.rpc().getAllProcessInfo() if self.supervisor_running() else []:
                name, state, pid = info["name"], info["statename"], info["pid"]
                seen = pids.setdefault(name, set())
                seen.update({pid} if pid else set())
                restarts = len(seen) - 1
                if state in ("FATAL", "EXITED", "BACKOFF") or restarts > MAX_RESTARTS:
                    what = (
                        f"exited and was restarted {restarts} times (now {state})"
                        if restarts
                        else f"is {state}"
                    )
                    raise MLPlatServiceUnavailable(
                        f"{name} {what}; last lines of its log:\n{self.log_tail(name)}"
                    )
            health = self.health()
            if all(h["ok"] for h in health.values()):
                return
            if time.monotonic() > deadline:
                waiting = {name: h["detail"] for name, h in health.items() if not h["ok"]}
                raise MLPlatServiceUnavailable(f"services not answering after {timeout:.0f} s: {waiting}")
            time.sleep(0.5)

    def health(self) -> dict[str, dict[str, Any]]:
        """Whether each selected service answers, by asking it."""
        import httpx

        s, out = self.settings, {}
        token = self.secrets()["ray_auth_token"]
        for svc in self.services():
            if svc.name.startswith("airflow-") and svc.name != "airflow-api-server":
                continue  # the API server's health report covers the other components
            try:
                response = httpx.get(
                    svc.url + svc.health_path,
                    timeout=10,  # Airflow's health reads its metadata DB: slow, not down, on a busy laptop
                    headers={"Authorization": f"Bearer {token}"} if svc.name == "ray" else None,
                )
                ok, detail = response.status_code == 200, f"HTTP {response.status_code}"
                if ok and svc.name == "airflow-api-server":
                    report = response.json()
                    unhealthy = [c for c, v in report.items() if v.get("status") != "healthy"]
                    ok, detail = not unhealthy, f"unhealthy: {unhealthy}" if unhealthy else "healthy"
            except httpx.HTTPError as err:
                ok, detail = False, type(err).__name__
            name = "airflow" if svc.name.startswith("airflow-") else svc.name
            out[name] = {
                "ok": ok,
                "url": svc.url if name != "airflow" else f"http://127.0.0.1:{s.airflow_port}",
                "detail": detail,
            }
        return out

    def status(self) -> dict[str, dict[str, Any]]:
        """Each service: URL, whether it answers, and the supervisor state of its programs."""
        states = self.process_states()
        out = self.health()
        for name, info in out.items():
            info["processes"] = {p: st for p, st in states.items() if p == name or p.startswith(name + "-")}
        return out

    def down(self, timeout: float = 60.0) -> list[int]:
        """
        Stop every service and leave no process behind; returns the pids that had to be ended.

        :param timeout: seconds to wait for supervisord's graceful stop before killing.
        """
        import psutil

        before = self.processes()
        if self.supervisor_running():
            try:
                self.rpc().shutdown()
            except (OSError, Fault):
                pass
        supervisors = [p for p in before if p.pid == self.supervisor_pid()]
        psutil.wait_procs(supervisors, timeout=timeout)
        leftovers = [p for p in {*before, *self.processes()} if p.is_running()]
        for proc in leftovers:
            _signal(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for proc in alive:
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        return sorted(p.pid for p in leftovers)

    def supervisor_pid(self) -> int | None:
        """Pid of this home's supervisord, from its pid file."""
        path = self.settings.run_dir / "supervisord.pid"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def processes(self) -> list:
        """
        Every process of this platform: supervisord's descendants, plus orphans found by the
        marker variable or by the platform's socket folder on their command line.
        """
        import psutil

        found: dict[int, psutil.Process] = {}
        pid = self.supervisor_pid()
        if pid and psutil.pid_exists(pid):
            root = psutil.Process(pid)
            found.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        run_dir = str(self.settings.run_dir)
        for proc in psutil.process_iter():
            if proc.pid == os.getpid() or proc.pid in found:
                continue
            try:
                if proc.environ().get(MARKER) == str(self.home) or run_dir in " ".join(proc.cmdline()):
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return list(found.values())

    def log_tail(self, name: str, lines: int = 20) -> str:
        """
        Last lines of a program's log.

        :param name: program name.
        :param lines: how many lines.
        """
        path = self.home / "logs" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- Airflow CLI ----------------------------------------------------------------------------

    def _airflow_cli(self, *args: str) -> None:
        airflow_cli({**_clean_env(), **self.airflow_env()}, *args)

    def _import_connections(self) -> None:
        import_connections(
            self.connections(),
            self.home / "airflow" / "connections.json",
            {**_clean_env(), **self.airflow_env()},
        )


def airflow_cli(env: dict[str, str], *args: str) -> None:
    """
    Run an ``airflow`` CLI command; fail with the tail of its output.

    :param env: its environment.
    :param args: the command's arguments.
    """
    result = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True)
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise MLPlatServiceUnavailable(f"`airflow {' '.join(args)}` failed:\n{tail}")


def import_connections(conns: dict[str, dict[str, Any]], path: Path, env: dict[str, str]) -> None:
    """
    Create or replace Airflow connections (through a file of mode 0600: they hold secrets).

    :param conns: connection id -> fields, as :func:`connections` builds them.
    :param path: the file to write them to.
    :param env: environment of the ``airflow`` CLI (its metadata database).
    """
    path.touch(mode=0o600)
    path.write_text(json.dumps(conns, indent=2))
    airflow_cli(env, "connections", "import", "--overwrite", str(path))


def prometheus_config(prometheus: str, model_server: str, pushgateway: str) -> str:
    """
    The bundle's Prometheus config with its scrape targets filled in.

    :param prometheus: Prometheus's own ``host:port``.
    :param model_server: the model server's ``host:port``.
    :param pushgateway: the Pushgateway's ``host:port``.
    """
    template = Template((BUNDLE / "include" / "prometheus" / "prometheus.yml").read_text())
    return template.substitute(prometheus=prometheus, model_server=model_server, pushgateway=pushgateway)


def include_module(name: str):
    """
    A module of the bundle's ``include/`` folder (not on this process's import path), loaded once.

    :param name: file name without ``.py``, e.g. ``datagen``.
    """
    import importlib.util

    key = f"mlplat_include_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BUNDLE / "include" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[key]


def load(home: Path | str | None = None) -> Platform:
    """
    The platform of a home, with the settings ``up`` saved there (or from the environment).

    :param home: state folder; default ``$MLPLAT_HOME`` or ``./.mlplat``.
    """
    settings = Settings.from_env(home=home)
    state = settings.home / "platform.json"
    if state.exists():
        saved = json.loads(state.read_text())
        saved["services"] = tuple(saved["services"])
        settings = Settings(**saved)
    return Platform(settings)


def _quote(value: str) -> str:
    """Quote a word of a supervisord ``command=`` line (split like a POSIX shell)."""
    if value and all(c.isalnum() or c in "/._-:=@+" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _env_value(value: str) -> str:
    """
    Quote a value of supervisord's ``environment=`` (split by non-POSIX shlex: no escapes inside
    quotes, so a value holding double quotes, such as JSON, goes in single quotes).
    """
    quote = "'" if '"' in value else '"'
    if quote in value:
        raise MLPlatConfigError(f"an environment value cannot hold both kinds of quotes: {value!r}")
    return quote + value.replace("%", "%%") + quote


def _binary(name: str, service: str) -> str:
    """The path of a Debian-packaged server binary; a clear error naming the package when it is missing."""
    binary = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(binary).exists():
        raise MLPlatConfigError(
            f"the {service} service needs the {name} binary (Debian/Ubuntu: apt-get install {name}); "
            "or leave it out with --services"
        )
    return binary


def _clean_env() -> dict[str, str]:
    """The caller's environment minus Airflow settings that would leak into the platform."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_")) and k not in ("AIRFLOW_HOME", MARKER)
    }


def _wait(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise MLPlatServiceUnavailable(message)
        time.sleep(0.2)


def _signal(proc, sig: int) -> None:
    import psutil

    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
