"""`mlplat`: run the whole ML platform on one machine (up / status / down / demo)."""

from __future__ import annotations

import argparse
import json
import sys

from airflow_provider_mlplat.exceptions import MLPlatError
from mlplat.platform import ALL_SERVICES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlplat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="state folder (default: $MLPLAT_HOME or ./.mlplat)")
    starting = argparse.ArgumentParser(add_help=False)
    group = starting.add_argument_group("services (each also from MLPLAT_<NAME>, e.g. MLPLAT_AIRFLOW_PORT)")
    group.add_argument("--airflow-port", type=int, help="Airflow UI / API port (default 8080)")
    group.add_argument("--mlflow-port", type=int, help="MLflow tracking server port (default 5000)")
    group.add_argument("--ray-port", type=int, help="Ray GCS port; the next two are taken too (default 6380)")
    group.add_argument("--ray-dashboard-port", type=int, help="Ray dashboard port (default 8265)")
    group.add_argument("--model-server-port", type=int, help="KServe model server port (default 8090)")
    group.add_argument("--prometheus-port", type=int, help="Prometheus port (default 9090)")
    group.add_argument("--pushgateway-port", type=int, help="Prometheus Pushgateway port (default 9091)")
    group.add_argument("--airflow-db-url", help="Airflow metadata DB URL (default: SQLite under home)")
    group.add_argument("--mlflow-db-url", help="MLflow backend store URL (default: SQLite under home)")
    group.add_argument("--dags-folder", help="DAG folder (default: the reference bundle's dags/)")
    group.add_argument("--plugins-folder", help="Airflow plugins folder (default: the bundle's plugins/)")
    group.add_argument(
        "--services", help=f"comma-separated subset of: {','.join(ALL_SERVICES)} (default: all)"
    )
    group.add_argument("--timeout", type=float, default=180, help="seconds to wait for services to answer")
    sub.add_parser("up", parents=[common, starting], help="start the platform and wait until it answers")
    status = sub.add_parser("status", parents=[common], help="show each service and whether it answers")
    status.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("down", parents=[common], help="stop every service; leave no process behind")
    sub.add_parser("demo", parents=[common, starting], help="bring the platform up and run the main job")
    return parser


def _platform(args: argparse.Namespace, starting: bool):
    from mlplat import platform

    if not starting:
        return platform.load(args.home)
    services = tuple(s.strip() for s in args.services.split(",")) if args.services else None
    settings = platform.Settings.from_env(
        home=args.home,
        airflow_port=args.airflow_port,
        mlflow_port=args.mlflow_port,
        ray_port=args.ray_port,
        ray_dashboard_port=args.ray_dashboard_port,
        model_server_port=args.model_server_port,
        prometheus_port=args.prometheus_port,
        pushgateway_port=args.pushgateway_port,
        airflow_db_url=args.airflow_db_url,
        mlflow_db_url=args.mlflow_db_url,
        dags_folder=args.dags_folder,
        plugins_folder=args.plugins_folder,
        services=services,
    )
    saved = platform.load(settings.home)
    if saved.supervisor_running() and saved.settings != settings and args.command == "up":
        print(f"platform under {settings.home} is already running; keeping its settings", file=sys.stderr)
        return saved
    return platform.Platform(settings)


def _print_status(services: dict, plat) -> None:
    for name, info in services.items():
        mark = "up  " if info["ok"] else "DOWN"
        procs = ", ".join(f"{p}={s}" for p, s in info.get("processes", {}).items())
        print(f"  {mark} {name:<8} {info['url']:<26} {info['detail']}" + (f"  [{procs}]" if procs else ""))
    if "airflow" in services:
        sec = plat.secrets()
        print(f"  Airflow login: admin / {sec['airflow_admin_password']}")
        print(f"  read-only login: viewer / {sec['airflow_viewer_password']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlplat`` console script."""
    args = _parser().parse_args(argv)
    try:
        plat = _platform(args, starting=args.command in ("up", "demo"))
        if args.command in ("up", "demo"):
            result = plat.up(timeout=args.timeout)
            print(f"ML platform up under {plat.home} in {result['seconds']} s:")
            _print_status(result["services"], plat)
            if args.command == "demo":
                from mlplat.demo import run_demo

                return run_demo(plat)
            return 0
        if args.command == "status":
            if not plat.supervisor_running():
                print(f"ML platform under {plat.home} is not running")
                return 3
            services = plat.status()
            if args.json:
                print(json.dumps(services, indent=2))
            else:
                print(f"ML platform under {plat.home}:")
                _print_status(services, plat)
            return 0 if all(s["ok"] for s in services.values()) else 1
        killed = plat.down()
        print(
            f"ML platform under {plat.home} stopped"
            + (f" ({len(killed)} leftover process(es) ended)" if killed else "")
        )
        return 0
    except MLPlatError as err:
        print(f"mlplat {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
