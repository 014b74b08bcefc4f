"""The closed loop on a running local platform: features -> training -> rollout -> traffic -> drift -> retrain."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from airflow_provider_mlplat.exceptions import MLPlatError

if TYPE_CHECKING:
    import pandas as pd

    from mlplat.airflow_api import AirflowRestClient

MODEL = "trip_completion"
DEPLOYMENT = "trip-completion"
FEATURE_SERVICE = "trip_completion_v1"
#: the DAGs the loop runs on, in order
LOOP_DAGS = ("feature_pipeline", "training_pipeline", "deployment_pipeline", "monitoring_pipeline")
#: the hourly ones (created paused): unpaused only while the demo needs them, so no hour passing
#: during the demo adds runs of its own
CLOCK_DAGS = ("feature_pipeline", "monitoring_pipeline")


class Stack(Protocol):
    """
    What the demo needs of a running platform: the local one (:class:`mlplat.platform.Platform`)
    or the container stack (:class:`mlplat.compose.ComposeStack`).
    """

    #: state folder shared with the tasks (raw data under ``data/``)
    home: Path
    #: the services it runs
    service_names: tuple[str, ...]

    def connections(self) -> dict[str, dict[str, Any]]:
        """The Airflow connections of its services, as the demo reaches them."""

    def airflow_client(self) -> AirflowRestClient:
        """A REST client of its Airflow, logged in as admin."""

    def links(self) -> dict[str, str]:
        """Service name -> URL a person opens."""


@dataclass
class LoopSettings:
    """
    How the demo drives the loop.

    :param history_hours: hours of raw data landed before the first feature run.
    :param drift_hours: the newest hours replaced by shifted data when the world changes.
    :param drift_magnitude: strength of the shift (``include/datagen.py``).
    :param phase_seconds: seconds of traffic in each phase (normal, drifted).
    :param requests_per_second: traffic rate of the simulated clients.
    :param canary_analysis: thresholds of the asset-triggered canary (Variable ``mlplat_canary_analysis``):
        short windows, and a 50 ms p99 floor (latency noise on a busy laptop is not a regression).
    :param stage_timeout: seconds any one stage may take.
    """

    history_hours: int = 60
    drift_hours: int = 30
    drift_magnitude: float = 0.8
    phase_seconds: float = 20.0
    requests_per_second: float = 25.0
    canary_analysis: dict[str, Any] = field(
        default_factory=lambda: {"window_seconds": 10, "min_requests": 5, "p99_floor_seconds": 0.05}
    )
    stage_timeout: float = 900.0


class Traffic:
    """
    Simulated clients: one request per row, at a steady rate, from a background thread; the rows
    can be swapped while it runs (a new traffic phase). Counts answers per phase, version and status.

    :param url: the deployment's V1 predict URL.
    :param rate: requests per second.
    """

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.interval = url, 1.0 / rate
        self.counts: Counter[tuple[str, str | None, int]] = Counter()
        self.phase, self._rows, self._i = "", [], 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def switch(self, phase: str, rows: list[dict[str, Any]]) -> None:
        """
        Send these rows from now on.

        :param phase: name of the phase (counted separately).
        :param rows: request rows (feature name -> value), sent round-robin.
        """
        with self._lock:
            self.phase, self._rows, self._i = phase, rows, 0
        if not self._thread.is_alive():
            self._thread.start()

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(self.interval):
                with self._lock:
                    phase, row = self.phase, self._rows[self._i % len(self._rows)]
                    self._i += 1
                try:
                    r = client.post(self.url, json={"instances": [row]})
                except httpx.HTTPError:
                    self.counts[(phase, None, 0)] += 1
                    continue
                self.counts[(phase, r.headers.get("x-mlplat-model-version"), r.status_code)] += 1

    def stop(self) -> None:
        """Stop sending."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self, phase: str) -> dict[str, int]:
        """Answers of one phase as ``"v<version> <status>" -> count``."""
        return {f"v{v} {s}": n for (p, v, s), n in sorted(self.counts.items(), key=str) if p == phase}


class ClosedLoop:
    """
    Drive the reference DAGs through the whole loop on a running platform and record a timeline.

    The demo is the world around the platform: it lands raw data, sends traffic, changes the world
    (shifted data) and ticks the clock of the time-scheduled DAGs (it triggers the hourly feature and
    monitoring runs instead of waiting for the hour). Everything else is Assets: the feature run
    schedules training, a champion move schedules the rollout, detected drift schedules retraining.

    :param platform: a platform that is up, with every service (local or containers).
    :param api: an Airflow REST client of that platform.
    :param settings: how to drive the loop.
    :param echo: called with each line of progress.
    """

    def __init__(self, platform: Stack, api: AirflowRestClient, settings: LoopSettings, echo=print) -> None:
        self.platform, self.api, self.settings, self.echo = platform, api, settings, echo
        self.connections = platform.connections()
        self.timeline: list[dict[str, Any]] = []
        self.seen: dict[str, set[str]] = {}
        self.drift: list[dict[str, Any]] = []
        self.started = time.monotonic()
        server = self.connections["kserve_default"]["host"]
        self.traffic = Traffic(f"{server}/v1/models/{DEPLOYMENT}:predict", settings.requests_per_second)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run every stage; return the report (timeline, drift checks, traffic, final serving state)."""
        s = self.settings
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        history_start = (now - timedelta(hours=s.history_hours)).replace(hour=0)  # profiles: midnight
        self._say(f"landing raw data {history_start:%Y-%m-%d %H:00} .. {now:%H:00} UTC")
        self._datagen().generate(self._data_dir(), history_start, now)
        self.api.set_variable("mlplat_canary_analysis", s.canary_analysis)
        for dag_id in LOOP_DAGS:
            self.api.wait_for_dag(dag_id)
            self.api.set_paused(dag_id, dag_id in CLOCK_DAGS)  # the hourly ones stay paused
        try:
            return self._stages()
        finally:
            self.traffic.stop()
            for dag_id in CLOCK_DAGS:
                self.api.set_paused(dag_id, True)

    def _stages(self) -> dict[str, Any]:
        s = self.settings
        self.seen = {dag_id: set(self.api.run_ids(dag_id)) for dag_id in LOOP_DAGS}
        self._clock("feature_pipeline", "the last hour's features materialized")
        first = self._follow("training_pipeline", "trained on the features")
        v1 = self._xcom("training_pipeline", first, "promote")
        if v1["decision"] != "promoted":
            raise MLPlatError(f"the first model was not promoted: {v1['reasons']}")
        self._follow("deployment_pipeline", f"v{v1['version']} rolled out")
        self._clock("monitoring_pipeline", "drift check of the last hour (no traffic yet: skipped)")

        now = datetime.now(UTC)
        normal = self._trips(now - timedelta(hours=s.drift_hours + 24), 24)  # hours the shift leaves alone
        window = self._traffic_phase("normal", normal)
        self._check_drift(window, "normal traffic")

        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        shift_start = now - timedelta(hours=s.drift_hours)
        datagen = self._datagen()
        self._say(f"the world changes: {s.drift_hours} h of shifted data (magnitude {s.drift_magnitude})")
        datagen.generate(
            self._data_dir(), shift_start, now, shift=datagen.Shift(s.drift_magnitude, shift_start)
        )
        window = self._traffic_phase("drifted", self._trips(shift_start, s.drift_hours))
        monitoring = self._check_drift(window, "drifted traffic")
        if not monitoring["detected"]:
            raise MLPlatError(f"drift was not detected in the drifted traffic: {monitoring}")
        retrain = self._follow("training_pipeline", "retrained on drift")
        v2 = self._xcom("training_pipeline", retrain, "promote")
        if v2["decision"] != "promoted":
            raise MLPlatError(f"the retrained model was not promoted: {v2['reasons']}")
        rollout = self._follow("deployment_pipeline", f"v{v2['version']} rolled out")
        self.traffic.stop()
        return {
            "timeline": self.timeline,
            "drift": self.drift,
            "traffic": {phase: self.traffic.summary(phase) for phase in ("normal", "drifted")},
            "versions": {"first": v1["version"], "retrained": v2["version"]},
            "rollout": self._xcom("deployment_pipeline", rollout, "rollout"),
            "seconds": round(time.monotonic() - self.started, 1),
        }

    # -- stages ---------------------------------------------------------------------------------

    def _clock(self, dag_id: str, what: str) -> str:
        """Unpause an hourly DAG: its run for the hour that ended starts at once; wait for it, pause again."""
        self.api.set_paused(dag_id, False)
        try:
            return self._follow(dag_id, what)
        finally:
            self.api.set_paused(dag_id, True)

    def _tick(self, dag_id: str, conf: dict[str, Any], what: str) -> str:
        """Start one run of an hourly DAG now, with its own window (the demo's clock), and wait for it."""
        try:
            run_id = self.api.trigger(dag_id, conf)  # unpauses it for this run
            self.seen[dag_id].add(run_id)
            return self._record(
                dag_id, self.api.wait_for_run(dag_id, run_id, self.settings.stage_timeout), what
            )
        finally:
            self.api.set_paused(dag_id, True)

    def _follow(self, dag_id: str, what: str) -> str:
        """Wait for the next run of a DAG that the demo did not start, and for its end."""
        deadline = time.monotonic() + self.settings.stage_timeout
        while not (new := [r for r in self.api.run_ids(dag_id) if r not in self.seen[dag_id]]):
            if time.monotonic() > deadline:
                raise MLPlatError(f"no {dag_id} run started within {self.settings.stage_timeout:.0f} s")
            time.sleep(0.5)
        run_id = sorted(new)[0]
        self.seen[dag_id].add(run_id)
        return self._record(dag_id, self.api.wait_for_run(dag_id, run_id, self.settings.stage_timeout), what)

    def _record(self, dag_id: str, run: dict[str, Any], what: str) -> str:
        events = self.api.upstream_asset_events(dag_id, run["dag_run_id"])
        entry = {
            "dag_id": dag_id,
            "run_id": run["dag_run_id"],
            "run_type": run["run_type"],
            "state": run["state"],
            "what": what,
            "queued_at": run.get("queued_at"),
            "start_date": run.get("start_date"),
            "end_date": run.get("end_date"),
            "duration": _seconds(run.get("start_date"), run.get("end_date")),
            "triggered_by": [e["uri"] for e in events],
            # Airflow's share of the hop: the producer's asset event -> this run started
            "schedule_delay": max(
                (_seconds(e["timestamp"], run.get("start_date")) for e in events), default=None
            ),
            "tasks": {
                ti["task_id"]: _seconds(ti.get("start_date"), ti.get("end_date")) for ti in run["tasks"]
            },
        }
        self.timeline.append(entry)
        by = f" <- {', '.join(entry['triggered_by'])} (+{entry['schedule_delay']:.1f} s)" if events else ""
        self._say(f"{dag_id:<20} {run['state']:<8} {entry['duration'] or 0:6.1f} s  {what}{by}")
        if run["state"] != "success":
            failed = [ti["task_id"] for ti in run["tasks"] if ti["state"] == "failed"]
            raise MLPlatError(f"{dag_id} run {run['dag_run_id']} {run['state']} (failed tasks: {failed})")
        return run["dag_run_id"]

    def _traffic_phase(self, phase: str, rows: list[dict[str, Any]]) -> tuple[datetime, datetime]:
        """Send one phase of traffic; return its time window (what the monitoring run looks at)."""
        start = datetime.now(UTC)
        self.traffic.switch(phase, rows)
        time.sleep(self.settings.phase_seconds)
        end = datetime.now(UTC)
        time.sleep(1.0)  # the model server's inference log flushes every 0.5 s
        self._say(f"traffic {phase:<8} {self.settings.phase_seconds:.0f} s: {self.traffic.summary(phase)}")
        return start, end

    def _check_drift(self, window: tuple[datetime, datetime], what: str) -> dict[str, Any]:
        """One monitoring run over the window (the demo ticks the hourly clock); its drift summary."""
        conf = {"window_start": window[0].isoformat(), "window_end": window[1].isoformat()}
        run_id = self._tick("monitoring_pipeline", conf, f"drift check of the {what}")
        summary = self._xcom("monitoring_pipeline", run_id, "detect_drift")
        self.drift.append({"what": what, "run_id": run_id, **summary})
        self._say(
            f"  v{summary['version']}: drift share {summary['drift_share']:.2f}, detected={summary['detected']}, "
            f"drifted features {summary['drifted_features']}"
        )
        return summary

    # -- data -----------------------------------------------------------------------------------

    def _trips(self, start: datetime, hours: int) -> list[dict[str, Any]]:
        """Request rows of the trips of ``hours`` hours from ``start``: their features from Feast."""
        import pandas as pd

        from airflow_provider_mlplat.hooks.base import scoped_env
        from airflow_provider_mlplat.hooks.feast import FeastHook

        start = start.replace(minute=0, second=0, microsecond=0)
        trips = pd.read_parquet(self._data_dir() / "trips")
        trips = trips[
            (trips.event_timestamp >= start) & (trips.event_timestamp < start + timedelta(hours=hours))
        ]
        # every platform connection: the feast one may name another (the Ray engine's ray_conn_id)
        conns = {
            f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(
                {**conn, "extra": json.dumps(conn.get("extra", {}))}
            )
            for conn_id, conn in self.connections.items()
        }
        with scoped_env(conns):
            hook = FeastHook()
            with hook.repo_env():
                frame = hook.store.get_historical_features(
                    entity_df=trips.drop(columns=["completed"]),
                    features=hook.feature_service(FEATURE_SERVICE),
                ).to_df()
        return _request_rows(frame)

    def _data_dir(self):
        return self.platform.home / "data"

    @staticmethod
    def _datagen():
        from mlplat.platform import include_module

        return include_module("datagen")

    def _xcom(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self.api.xcom(dag_id, run_id, task_id)

    def _say(self, line: str) -> None:
        self.echo(f"[{time.monotonic() - self.started:6.1f} s] {line}")


def _request_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The model's inputs of each row: every numeric column but the entity key (as training uses)."""
    frame = frame.dropna()
    columns = [c for c in frame.select_dtypes("number").columns if c not in ("driver_id", "completed")]
    return frame[columns].astype("float64").to_dict("records")


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 2)
