"""`mlplat demo`: run the platform's main job through the Airflow REST API and print what happened."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.exceptions import MLPlatError
from mlplat.closed_loop import MODEL, ClosedLoop, LoopSettings
from mlplat.platform import ALL_SERVICES

if TYPE_CHECKING:
    from mlplat.closed_loop import Stack


def run_demo(platform: Stack, loop: bool = True, settings: LoopSettings | None = None) -> int:
    """
    Check every platform connection from an Airflow task, then (``loop``) run the closed loop and
    print its timeline and where to look.

    :param platform: a platform that is up: the local one or the container stack.
    :param loop: run the closed loop after the check.
    :param settings: how to drive the loop.
    """
    services = platform.service_names
    if "airflow" not in services:
        print("the demo runs DAGs: start the platform with the airflow service", file=sys.stderr)
        return 2
    api = platform.airflow_client()
    connections = sorted(platform.connections())
    print("\nDemo: platform_check (tests every platform connection from an Airflow task)")
    api.wait_for_dag("platform_check")
    run_id = api.trigger("platform_check", {"connections": connections})
    run = api.wait_for_run("platform_check", run_id)
    for ti in sorted(run["tasks"], key=lambda t: (t["task_id"], t["map_index"])):
        label = ti.get("rendered_map_index") or (ti["map_index"] if ti["map_index"] >= 0 else "")
        print(f"  {ti['task_id']:<22} {label!s:<16} {ti['state']:<8} {ti.get('duration') or 0:.1f} s")
    print(f"  run {run_id}: {run['state']}")
    code = 0 if run["state"] == "success" else 1
    if loop and code == 0:
        missing = sorted(set(ALL_SERVICES) - set(services))
        if missing:
            print(f"the closed loop needs every service; missing: {missing}", file=sys.stderr)
            return 2
        print("\nDemo: the closed loop (features -> training -> rollout -> traffic -> drift -> retrain)")
        try:
            report = ClosedLoop(
                platform, api, settings or LoopSettings(), echo=lambda line: print(f"  {line}")
            ).run()
        except MLPlatError as err:
            print(f"  the loop stopped: {err}", file=sys.stderr)
            code = 1
        else:
            print_report(report)
    pages = {
        "airflow": ("Airflow", "/dags"),
        "mlflow": ("MLflow", f"/#/models/{MODEL}"),
        "ray": ("Ray", "/#/jobs"),
        "prometheus": ("Prometheus", ""),
    }
    print()
    for name, url in platform.links().items():
        label, path = pages[name]
        print(f"{label + ':':<8} {url}{path}")
    return code


def print_report(report: dict[str, Any]) -> None:
    """
    The loop's timeline: each DAG run, its duration and scheduling delay, versions, traffic, drift.

    :param report: what :meth:`ClosedLoop.run` returned.
    """
    print(f"\n  Timeline ({report['seconds']:.0f} s in all)")
    print(f"  {'DAG run':<22} {'state':<8} {'run':>7} {'sched':>6}  what")
    for entry in report["timeline"]:
        delay = f"{entry['schedule_delay']:.1f}s" if entry["schedule_delay"] is not None else "-"
        print(
            f"  {entry['dag_id']:<22} {entry['state']:<8} {entry['duration'] or 0:6.1f}s {delay:>6}  {entry['what']}"
        )
    versions = report["versions"]
    print(
        f"\n  Model versions: v{versions['first']} (first champion) -> v{versions['retrained']} (after drift)"
    )
    rollout = report["rollout"]
    steps = " -> ".join(f"{step}%" for step in rollout.get("steps", [])) or "direct"
    print(f"  Serving {rollout['deployment']}: v{rollout['version']} at {rollout.get('traffic')} ({steps})")
    for phase, answers in report["traffic"].items():
        print(f"  Traffic {phase:<8} {answers}")
    for check in report["drift"]:
        scores = {k: round(v, 4) for k, v in sorted(check.get("scores", {}).items())}
        print(
            f"  Drift of the {check['what']}: share {check['drift_share']:.2f}, detected {check['detected']}"
        )
        print(f"    scores {scores}")
