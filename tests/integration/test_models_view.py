"""The Models view of the UI plugin and human approval (HITL) in a real Airflow: auth, parts, actions."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from airflow_provider_mlplat.testing.ci import unavailable
from airflow_provider_mlplat.testing.services import free_port, postgres_database, running_platform
from airflow_provider_mlplat.ui.actions import ACTION_DAGS
from tests.conftest import REPO

pytestmark = pytest.mark.integration
MODEL = "view_model"
GATED = "gated_model"
#: a promotion that asks a person: the reference DAGs' Param, on, with a version chosen per run
APPROVAL_DAG = """
from airflow.sdk import Param, dag
from airflow_provider_mlplat.operators.mlflow import MLflowPromoteModelOperator

@dag(schedule=None, render_template_as_native_obj=True, params={"challenger": Param("1", type="string")})
def gated_promotion():
    MLflowPromoteModelOperator(
        task_id="promote", model_name="GATED", challenger="{{ params.challenger }}",
        thresholds={"roc_auc": 0.7}, require_approval="{{ True }}",
    )

gated_promotion()
""".replace("GATED", GATED)


def login(base: str, user: str, password: str) -> str:
    response = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Airflow (with the provider's plugin) and MLflow of the local platform; a model with 12 versions."""
    import mlflow
    import sqlalchemy

    home = tmp_path_factory.mktemp("view")
    dags = home / "dags"  # the DAGs the actions run (none runs on a timer) and one that asks for approval
    dags.mkdir()
    for dag_id in ACTION_DAGS.values():
        (dags / f"{dag_id}.py").symlink_to(REPO / "dags" / f"{dag_id}.py")
    (dags / "gated_promotion.py").write_text(APPROVAL_DAG)
    with ExitStack() as stack:
        try:  # PostgreSQL: a task waiting for a person and the REST API write at once
            db = stack.enter_context(postgres_database())
        except sqlalchemy.exc.OperationalError as err:
            unavailable(f"PostgreSQL is not reachable: {err.orig}")
        platform = stack.enter_context(
            running_platform(home, ("mlflow", "airflow"), dags_folder=dags, airflow_db_url=db)
        )
        s, sec = platform.settings, platform.secrets()
        client = mlflow.MlflowClient(f"http://127.0.0.1:{s.mlflow_port}")
        client.create_registered_model(MODEL)
        for _ in range(12):
            client.create_model_version(MODEL, "s3://nowhere/model")  # never loaded
        client.set_registered_model_alias(MODEL, "previous-champion", "2")  # older than the newest 10
        client.set_registered_model_alias(MODEL, "champion", "12")
        base = f"http://127.0.0.1:{s.airflow_port}"
        api = platform.airflow_client()
        api.wait_for_dag("deployment_pipeline")
        api.wait_for_dag("gated_promotion")
        client.create_registered_model(GATED)
        for roc_auc in (0.9, 0.95):  # versions with a run holding the metric the gate reads
            run = client.create_run("0")
            client.log_metric(run.info.run_id, "roc_auc", roc_auc)
            client.create_model_version(GATED, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        down = f"http://127.0.0.1:{free_port()}"  # a model server that is down
        api.http.post(
            "/connections", json={"connection_id": "kserve_default", "conn_type": "kserve", "host": down}
        ).raise_for_status()
        yield {
            "base": base,
            "admin": login(base, "admin", sec["airflow_admin_password"]),
            "viewer": login(base, "viewer", sec["airflow_viewer_password"]),
            "api": api,
            "down": down,
            "mlflow": client,
            "scheduler_log": home / "logs" / "airflow-scheduler.log",
        }


def call(airflow, method: str, path: str, user: str | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {airflow[user]}"} if user else {}
    return httpx.request(method, f"{airflow['base']}/mlplat{path}", headers=headers, timeout=60, **kwargs)


def test_anonymous_requests_get_401(airflow):
    for method, path in [("GET", "/"), ("GET", f"/models/{MODEL}"), ("GET", f"/api/models/{MODEL}"),
                         ("POST", f"/api/models/{MODEL}/actions/retrain"), ("GET", "/reports?uri=/x.html"),
                         ("GET", "/open/mlflow")]:  # fmt: skip
        assert call(airflow, method, path, json={}).status_code == 401, (method, path)
    assert call(airflow, "GET", "/", cookies={"_token": "forged"}).status_code == 403  # not Airflow's JWT


def test_a_viewer_reads_but_may_not_act(airflow):
    page = call(airflow, "GET", "/", "viewer")
    assert page.status_code == 200 and f"/mlplat/models/{MODEL}" in page.text
    for action in ("retrain", "rollback", "promote"):
        refused = call(airflow, "POST", f"/api/models/{MODEL}/actions/{action}", "viewer", json={})
        assert refused.status_code == 403, refused.text
        assert "'viewer' may not trigger runs of DAG" in refused.json()["detail"]


def test_the_view_lists_newest_and_aliased_versions_and_a_broken_part_names_its_error(airflow):
    parts = call(airflow, "GET", f"/api/models/{MODEL}", "viewer").json()
    registry = parts["registry"]["value"]
    assert registry["aliases"] == {"champion": "12", "previous-champion": "2"}
    assert [v["version"] for v in registry["versions"]] == [str(n) for n in range(12, 2, -1)] + ["2"]
    assert registry["versions"][0]["aliases"] == ["champion"]
    # the model server is down: serving names what failed; the rest still renders
    assert parts["serving"]["value"] is None and airflow["down"] in parts["serving"]["error"]
    assert parts["rollout"] == {"value": None, "error": None}
    html = call(airflow, "GET", f"/models/{MODEL}", "viewer").text
    assert (
        "Serving could not be read" in html and 'data-version="12"' in html and "@previous-champion" in html
    )

    unknown = call(airflow, "GET", "/api/models/no_such_model", "viewer").json()
    assert "registered model 'no_such_model' not found" in unknown["registry"]["error"]
    assert unknown["promotion"]["error"].startswith("needs the registry: registered model 'no_such_model'")


def test_actions_start_runs_as_the_user_and_bad_input_is_named(airflow):
    bad = call(
        airflow,
        "POST",
        f"/api/models/{MODEL}/actions/promote",
        "admin",
        json={"version": "99", "holdout_uri": "/h"},
    )
    assert bad.status_code == 400 and "has no version 99" in bad.json()["detail"]
    bad = call(airflow, "POST", f"/api/models/{MODEL}/actions/promote", "admin", json={"version": "x"})
    assert bad.status_code == 400 and "version='x' must be a version number" in bad.json()["detail"]
    bad = call(airflow, "POST", f"/api/models/{MODEL}/actions/deploy", "admin", json={})
    assert bad.status_code == 400 and "unknown action 'deploy'; valid: promote, rollback, retrain" in bad.text
    form = call(airflow, "POST", f"/api/models/{MODEL}/actions/rollback", "admin", data={"a": "b"})
    assert form.status_code == 415  # a cross-site form post cannot drive an action

    started = call(airflow, "POST", f"/api/models/{MODEL}/actions/rollback", "admin", json={})
    assert started.status_code == 201, started.text
    run = started.json()
    assert run["dag_id"] == "deployment_pipeline"
    assert run["conf"] == {"model_name": MODEL, "model_version": "2", "strategy": "direct"}
    seen = airflow["api"].http.get(f"/dags/deployment_pipeline/dagRuns/{run['dag_run_id']}").json()
    assert seen["conf"] == run["conf"] and seen["run_type"] == "manual"


def test_reports_are_served_from_the_artifact_root_only(airflow):
    refused = call(airflow, "GET", "/reports", "viewer", params={"uri": "/etc/passwd"})
    assert refused.status_code == 400 and "not an HTML report under the artifact root" in refused.text
    assert call(airflow, "GET", "/open/nothing", "viewer").status_code == 404
    opened = call(airflow, "GET", "/open/mlflow", "viewer", follow_redirects=False)
    assert opened.status_code == 307 and opened.headers["location"].startswith("http://127.0.0.1:")


def awaiting_approval(airflow, run_id: str, timeout: float = 240) -> dict:
    """
    Wait until the run's promote task asks for approval and the scheduler has processed the exit of
    the process that parked it; return its HITL detail. (Answering before that loses a race in
    Airflow 3.3: the late "success" of the parked process fails the resumed task.)
    """
    api, path = airflow["api"], f"/dags/gated_promotion/dagRuns/{run_id}/taskInstances/promote"
    parked = f"TaskInstance Finished: dag_id=gated_promotion, task_id=promote, run_id={run_id},"
    deadline = time.monotonic() + timeout
    while (state := api.http.get(path).json().get("state")) != "awaiting_input" or (
        parked not in airflow["scheduler_log"].read_text()
    ):
        assert state not in ("failed", "success", "upstream_failed"), promote_log(api, run_id)
        assert time.monotonic() < deadline, f"promote still {state} after {timeout} s"
        time.sleep(1)
    return api.http.get(f"{path}/-1/hitlDetails").json()


def finished(api, run_id: str) -> str:
    """Wait for a run of the gated DAG; its state, with the promote task's log when it did not succeed."""
    run = api.wait_for_run("gated_promotion", run_id, timeout=240)
    return "success" if run["state"] == "success" else f"{run['state']}: {promote_log(api, run_id)}"


def promote_log(api, run_id: str) -> str:
    """The promote task's log of each try, events and errors (for failure messages)."""
    path = f"/dags/gated_promotion/dagRuns/{run_id}/taskInstances/promote"
    lines = []
    for attempt in range(1, api.http.get(path).json()["try_number"] + 1):
        for line in api.http.get(f"{path}/logs/{attempt}").json()["content"]:
            lines.append(f"{line.get('event')} {line.get('error_detail') or ''}"[:3000])
    return "\n".join(lines)


def answer(airflow, run_id: str, user: str, option: str) -> httpx.Response:
    return httpx.patch(
        f"{airflow['base']}/api/v2/dags/gated_promotion/dagRuns/{run_id}/taskInstances/promote/-1/hitlDetails",
        headers={"Authorization": f"Bearer {airflow[user]}"},
        json={"chosen_options": [option], "params_input": {}},
        timeout=30,
    )


@pytest.mark.timeout(600)  # two runs that wait for a person: ~1 min measured
def test_promotion_waits_for_approval_and_a_rejection_is_a_recorded_decision(airflow):
    api, client = airflow["api"], airflow["mlflow"]
    approved = api.trigger("gated_promotion", {"challenger": "1"})
    detail = awaiting_approval(airflow, approved)
    assert detail["subject"] == f"Promote {GATED} v1 to @champion?"
    assert '"roc_auc": 0.9' in detail["body"] and '"decision": "promoted"' in detail["body"]  # the evidence
    assert dict(client.get_registered_model(GATED).aliases) == {}  # nothing moved while it waits
    assert answer(airflow, approved, "viewer", "Approve").status_code == 403  # may read, not answer
    assert answer(airflow, approved, "admin", "Approve").status_code == 200
    assert finished(api, approved) == "success"
    assert dict(client.get_registered_model(GATED).aliases) == {"champion": "1"}

    rejected = api.trigger("gated_promotion", {"challenger": "2"})
    awaiting_approval(airflow, rejected)
    assert answer(airflow, rejected, "admin", "Reject").status_code == 200
    assert finished(api, rejected) == "success"  # a decision, not a crash
    assert dict(client.get_registered_model(GATED).aliases) == {"champion": "1"}  # no alias moved
    result = api.xcom("gated_promotion", rejected, "promote")
    assert result["decision"] == "rejected" and result["champion_moved"] is False
    assert "evidence 'human_approval' says 'rejected'" in result["reasons"]
    record = json.loads(Path(result["record_uri"].removeprefix("file://")).read_text())
    assert record["evidence"]["human_approval"]["by"] == "admin"
    # the Models view shows the recorded rejection as the last promotion decision
    promotion = call(airflow, "GET", f"/api/models/{GATED}", "viewer").json()["promotion"]["value"]
    assert (promotion["version"], promotion["decision"]) == ("2", "rejected")
    assert promotion["evidence"]["human_approval"]["verdict"] == "rejected"
