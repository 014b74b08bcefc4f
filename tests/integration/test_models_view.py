"""The Models view of the UI plugin in a real Airflow API server: auth, parts that fail alone, actions."""

from __future__ import annotations

import httpx
import pytest

from tests.services import free_port, running_platform

pytestmark = pytest.mark.integration
MODEL = "view_model"


def login(base: str, user: str, password: str) -> str:
    response = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
    response.raise_for_status()
    return response.json()["access_token"]


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Airflow (with the provider's plugin) and MLflow of the local platform; a model with 12 versions."""
    import mlflow

    with running_platform(tmp_path_factory.mktemp("view"), ("mlflow", "airflow")) as platform:
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
