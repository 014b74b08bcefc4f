"""Loop latency: drift detected -> retrained model serving 100% traffic, by stage, on the local platform."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path

from airflow_provider_mlplat.testing.services import postgres_database, running_platform
from mlplat.airflow_api import AirflowRestClient
from mlplat.closed_loop import ClosedLoop, LoopSettings
from mlplat.platform import ALL_SERVICES

#: Airflow's share of each hop (asset event -> downstream run started) must stay under this
HOP_TARGET_S = 5.0


def run() -> str:
    with (
        tempfile.TemporaryDirectory() as home,
        postgres_database() as db,
        running_platform(Path(home), ALL_SERVICES, airflow_db_url=db) as platform,
    ):
        s = platform.settings
        api = AirflowRestClient(
            f"http://127.0.0.1:{s.airflow_port}", "admin", platform.secrets()["airflow_admin_password"]
        )
        report = ClosedLoop(platform, api, LoopSettings(phase_seconds=15)).run()
        steps = _canary_steps(report["rollout"]["decision_record"])
    timeline = report["timeline"]
    drift_check, retrain, rollout = timeline[-3], timeline[-2], timeline[-1]
    detected = _at(drift_check["end_date"])
    rows = [
        ("drift check (Evidently) ends: drift event", drift_check["duration"], None),
        ("training_pipeline (Feast set, GX, Ray train, evaluate x2, promote)", retrain["duration"], retrain),
        ("deployment_pipeline (load, smoke, canary, promote)", rollout["duration"], rollout),
    ]
    hops = [e["schedule_delay"] for e in timeline if e["schedule_delay"] is not None]
    lines = [
        "## Closed loop latency (issue 7)",
        "",
        "One `ClosedLoop` run on a fresh local platform (all services, Airflow on PostgreSQL, 2 cores): 60 h of "
        "raw data, feature run, training, rollout, 15 s of normal traffic + drift check, shifted data, "
        "15 s of drifted traffic + drift check, then Assets carry it to retraining and a canary rollout "
        "(10 -> 50 -> 100 %, 10 s Prometheus analysis per step) while traffic flows at 25 req/s.",
        "",
        "| stage | stage seconds | Airflow hop: asset event -> run started (s) |",
        "|---|---:|---:|",
    ]
    for name, seconds, entry in rows:
        hop = f"{entry['schedule_delay']:.2f}" if entry else "-"
        lines.append(f"| {name} | {seconds:.1f} | {hop} |")
    for step in steps:
        lines.append(f"| &nbsp;&nbsp;canary step {step['what']} | {step['seconds']:.1f} | - |")
    for task, seconds in retrain["tasks"].items():
        lines.append(f"| &nbsp;&nbsp;training task `{task}` | {seconds or 0:.1f} | - |")
    total = (_at(rollout["end_date"]) - detected).total_seconds()
    verdict = "meets" if max(hops) < HOP_TARGET_S else "MISSES"
    lines += [
        "",
        f"**Drift detected -> retrained model serving 100 %: {total:.1f} s.** Airflow's share per hop "
        f"(all {len(hops)} asset hops of the loop): max {max(hops):.2f} s, mean {sum(hops) / len(hops):.2f} s "
        f"- {verdict} the < {HOP_TARGET_S:.0f} s target. The rest is the work itself: the Ray job and "
        "MLflow evaluations dominate training; the canary is bounded by its analysis windows.",
        f"Whole loop including the first model: {report['seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def _canary_steps(record_uri: str) -> list[dict]:
    """Seconds between the rollout's recorded phases (load, each traffic step, promote)."""
    record = json.loads(Path(record_uri.removeprefix("file://")).read_text())
    out, previous = [], _at(record["started_at"])
    for entry in record["history"]:
        at = _at(entry["at"])
        what = f"{entry['percent']}%" if entry["percent"] is not None else entry["phase"]
        out.append({"what": what, "seconds": (at - previous).total_seconds()})
        previous = at
    return out


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)
