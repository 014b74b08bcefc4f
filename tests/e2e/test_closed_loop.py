"""The whole loop on a running local platform: features -> training -> rollout -> drift -> retrain -> rollout."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)  # ~8 min on a quiet 2-core machine: the loop runs in the closed_loop fixture
def test_the_loop_closes_with_no_manual_step_after_the_feature_run(closed_loop, capsys):
    from mlplat.demo import print_report

    report, aliases, serving, api = (
        closed_loop.report,
        closed_loop.aliases,
        closed_loop.serving,
        closed_loop.api,
    )
    api_runs = {dag: api.run_ids(dag) for dag in ("training_pipeline", "deployment_pipeline")}

    timeline = report["timeline"]
    assert [(e["dag_id"], e["run_type"]) for e in timeline] == [
        ("feature_pipeline", "scheduled"),  # unpaused: its run of the hour that ended
        ("training_pipeline", "asset_triggered"),
        ("deployment_pipeline", "asset_triggered"),
        ("monitoring_pipeline", "scheduled"),  # unpaused: the last hour, no traffic yet
        ("monitoring_pipeline", "manual"),  # the demo's clock: the normal traffic's window
        ("monitoring_pipeline", "manual"),  # the drifted traffic's window
        ("training_pipeline", "asset_triggered"),
        ("deployment_pipeline", "asset_triggered"),
    ]
    assert all(e["state"] == "success" for e in timeline)
    # each stage started after the one before it, and after the Asset event that triggered it
    for before, after in itertools.pairwise(timeline):
        assert after["start_date"] >= before["start_date"], (before, after)
    assert all(e["schedule_delay"] >= 0 for e in timeline if e["triggered_by"])
    assert timeline[1]["triggered_by"] == ["feast://rides/driver_hourly_stats"]
    assert timeline[2]["triggered_by"] == ["mlflow://models/trip_completion"]
    assert timeline[6]["triggered_by"] == ["drift://models/trip_completion"]
    assert timeline[7]["triggered_by"] == ["mlflow://models/trip_completion"]
    assert len(api_runs["training_pipeline"]) == 2 and len(api_runs["deployment_pipeline"]) == 2

    first, retrained = report["versions"]["first"], report["versions"]["retrained"]
    assert int(retrained) == int(first) + 1
    assert aliases["champion"] == retrained and aliases["previous-champion"] == first

    normal, drifted = report["drift"]
    assert normal["detected"] is False and drifted["detected"] is True
    assert normal["version"] == first and drifted["version"] == first  # the traffic v1 served
    assert drifted["drift_share"] >= 0.5 > normal["drift_share"]
    assert {"avg_speed_kmh", "trip_distance_km"} <= set(drifted["drifted_features"])

    rollout = report["rollout"]
    assert (rollout["version"], rollout["previous_version"], rollout["outcome"]) == (
        retrained,
        first,
        "promoted",
    )
    assert rollout["steps"] == [10, 50, 100]  # a canary this time: there was a stable version
    assert serving["ready"] is True
    # the traffic went on through the canary and was answered by both versions, without errors
    answered = report["traffic"]["drifted"]
    assert {key.split()[0] for key in answered} == {f"v{first}", f"v{retrained}"}
    assert {key.split()[1] for key in answered} == {"200"}

    capsys.readouterr()
    print_report(report)  # what `mlplat demo` prints at the end
    printed = capsys.readouterr().out
    assert f"Model versions: v{first} (first champion) -> v{retrained} (after drift)" in printed
    assert f"Serving trip-completion: v{retrained}" in printed and "10% -> 50% -> 100%" in printed
    assert printed.count("monitoring_pipeline") == 3 and "Drift of the drifted traffic" in printed
    assert lineage_path(
        closed_loop.lineage, "feast://rides/driver_hourly_stats", "drift://models/trip_completion"
    )


def lineage_path(events: Path, source: str, target: str) -> list[str]:
    """
    The datasets from ``source`` to ``target`` along the input -> output edges of the OpenLineage
    COMPLETE events (a dataset is ``namespace/name``: an Asset's URI for the provider's schemes).
    """
    edges: dict[str, set[str]] = {}
    for event in map(json.loads, events.read_text().splitlines()):
        if event["eventType"] == "COMPLETE":
            for i in event.get("inputs", []):
                for o in event.get("outputs", []):
                    edges.setdefault(f"{i['namespace']}/{i['name']}", set()).add(
                        f"{o['namespace']}/{o['name']}"
                    )
    paths, seen = [[source]], {source}
    while paths:
        path = paths.pop(0)
        if path[-1] == target:
            return path
        for step in sorted(edges.get(path[-1], ())):
            if step not in seen:
                seen.add(step)
                paths.append([*path, step])
    raise AssertionError(
        f"no lineage from {source} to {target}: { ({k: sorted(v) for k, v in edges.items()}) }"
    )
