"""The Models view in a real browser (headless Chromium), inside the Airflow UI, after the closed loop ran."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from airflow_provider_mlplat.testing.ci import unavailable
from tests.conftest import REPO

pytestmark = pytest.mark.e2e
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MODEL, DEPLOYMENT = "trip_completion", "trip-completion"
#: screenshots of each step (git-ignored)
ARTIFACTS = REPO / "test-artifacts" / "models_view"


@pytest.fixture(scope="session")
def chromium() -> None:
    """Debian's chromium and chromium-driver (``make system-deps``); asked for before the loop runs."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        unavailable(
            f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver (make system-deps)"
        )


@pytest.fixture
def browser(chromium):
    """A headless Chromium driven by Selenium, with the platform's chromedriver (no download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> None:
    """Save a screenshot of the page as it is now under test-artifacts/."""
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def login(driver, base: str, user: str, password: str) -> None:
    """Log in through the Airflow UI's login form (simple auth manager): the UI keeps its JWT in ``_token``."""

    driver.get(f"{base}/")
    wait = WebDriverWait(driver, 90)
    wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    shot(driver, "01-login")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda d: d.get_cookie("_token") is not None)


def open_models_view(driver) -> None:
    """Plugins -> ML platform -> Models in the Airflow UI's nav (an external view framing /mlplat/), then the model."""

    wait = WebDriverWait(driver, 90)

    def menu_item(text: str):
        return wait.until(
            ec.element_to_be_clickable((By.XPATH, f"//*[@role='menuitem'][normalize-space()='{text}']"))
        )

    wait.until(ec.element_to_be_clickable((By.XPATH, "//button[normalize-space()='Plugins']"))).click()
    menu_item("ML platform").click()
    menu_item("Models").click()
    frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "iframe[src$='/mlplat/']")))
    driver.switch_to.frame(frame)
    open_model(driver)


def open_model(driver) -> None:
    """In the view's frame: the model's page from the list of models."""
    wait = WebDriverWait(driver, 90)
    page = driver.find_element(By.TAG_NAME, "html")
    wait.until(ec.element_to_be_clickable((By.LINK_TEXT, MODEL))).click()
    wait.until(ec.staleness_of(page))
    wait.until(ec.presence_of_element_located((By.ID, "actions")))


def shown(driver) -> dict:
    """What the model page shows: versions with aliases, traffic and revision, the last drift check."""

    def text(css: str) -> str:
        return driver.find_element(By.CSS_SELECTOR, css).text.strip()

    versions = {
        row.get_attribute("data-version"): [
            a.text for a in row.find_elements(By.CSS_SELECTOR, "td.aliases .alias")
        ]
        for row in driver.find_elements(By.CSS_SELECTOR, "#versions tr[data-version]")
    }
    traffic = {
        row.get_attribute("data-version"): row.find_element(By.CSS_SELECTOR, "td.percent").text
        for row in driver.find_elements(By.CSS_SELECTOR, "#traffic tr[data-version]")
    }
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-error]")]
    assert errors == [], errors  # every part of the page was read
    return {
        "versions": versions,
        "traffic": traffic,
        "revision": text("#revision"),
        "drift": {
            "detected": text("#drift .detected"),
            "share": text("#drift .share"),
            "features": text("#drift .features"),
            "line": text("#drift p"),
        },
    }


def deployment(closed_loop) -> dict:
    """The model server's deployment of the model: stable, canary and its percent, revision."""
    response = httpx.get(f"{closed_loop.model_server_url}/mlplat/v1/deployments/{DEPLOYMENT}", timeout=30)
    response.raise_for_status()
    return response.json()


def traffic_of(state: dict) -> dict[str, str]:
    """Traffic per version as the view prints it, from the model server's deployment state."""
    traffic = {state["stable"]: f"{100 - state['canary_percent']}%"}
    if state["canary"]:
        traffic[state["canary"]] = f"{state['canary_percent']}%"
    return traffic


# the loop when this test is the first to ask for it (~8-15 min), then ~1-2 min of its own
@pytest.mark.timeout(1200)
def test_the_models_view_shows_what_mlflow_and_the_model_server_hold_and_rolls_back(
    chromium, closed_loop, browser
):
    import mlflow

    from airflow_provider_mlplat.hooks.mlflow import DRIFT_TAG

    driver, base = browser, closed_loop.base_url
    try:
        login(driver, base, "admin", closed_loop.platform.secrets()["airflow_admin_password"])
        open_models_view(driver)
        shot(driver, "02-model-after-the-loop")
        page = shown(driver)

        # what MLflow and the model server hold now
        client = mlflow.MlflowClient(closed_loop.mlflow_url)
        aliases = dict(client.get_registered_model(MODEL).aliases)
        registered = client.search_model_versions(f"name = '{MODEL}'")
        state = deployment(closed_loop)
        first, retrained = (
            closed_loop.report["versions"]["first"],
            closed_loop.report["versions"]["retrained"],
        )
        assert (aliases["champion"], aliases["previous-champion"]) == (retrained, first)
        assert page["versions"] == {
            str(v.version): sorted(f"@{a}" for a, n in aliases.items() if n == str(v.version))
            for v in registered
        }
        assert "@champion" in page["versions"][retrained]  # (@challenger too: the training set it)
        assert "@previous-champion" in page["versions"][first]
        assert list(page["versions"]) == sorted(page["versions"], key=int, reverse=True)
        # the canary finished: the retrained version takes all the traffic
        assert (state["stable"], state["canary"]) == (retrained, None)
        assert page["traffic"] == traffic_of(state) == {retrained: "100%"}
        assert page["revision"] == str(state["revision"])
        # the last drift check is the drifted traffic's, on the first version (it served that traffic)
        checks = [
            json.loads(v.tags[DRIFT_TAG]) | {"version": v.version} for v in registered if DRIFT_TAG in v.tags
        ]
        last = max(checks, key=lambda c: c["window_end"])
        drifted = closed_loop.report["drift"][1]
        assert (last["version"], last["detected"]) == (first, True)
        assert last["drift_share"] == pytest.approx(drifted["drift_share"])
        assert page["drift"]["detected"] == "detected"
        assert page["drift"]["share"] == f"{last['drift_share']:.3f}"
        assert page["drift"]["features"] == ", ".join(last["drifted_features"])
        assert set(last["drifted_features"]) == set(drifted["drifted_features"])
        assert page["drift"]["line"].startswith(f"v{first}, window {last['window_start']}")

        run_id = roll_back(driver)
        shot(driver, "03-rollback-started")
        run = closed_loop.api.http.get(f"/dags/deployment_pipeline/dagRuns/{run_id}").json()
        assert run["run_type"] == "manual" and run["state"] in ("queued", "running", "success"), run
        assert run["conf"] == {"model_name": MODEL, "model_version": first, "strategy": "direct"}
        finished = closed_loop.api.wait_for_run("deployment_pipeline", run_id, timeout=240)
        assert finished["state"] == "success", {t["task_id"]: t["state"] for t in finished["tasks"]}

        state = deployment(closed_loop)
        assert (state["stable"], state["canary"], state["ready"]) == (first, None, True)
        page = driver.find_element(By.TAG_NAME, "html")
        driver.find_element(By.LINK_TEXT, "All models").click()  # and back: the page read afresh
        WebDriverWait(driver, 90).until(ec.staleness_of(page))
        open_model(driver)
        shot(driver, "04-after-the-rollback")
        page = shown(driver)
        assert page["traffic"] == traffic_of(state) == {first: "100%"}
        assert page["revision"] == str(state["revision"])
        assert "@champion" in page["versions"][retrained]  # a rollback moves traffic, not the alias
    except BaseException:
        shot(driver, "99-failure")
        raise


def roll_back(driver) -> str:
    """Click "Roll back to the previous champion"; the id of the run the view says it started."""
    driver.find_element(By.ID, "action-rollback").click()
    result = WebDriverWait(driver, 60).until(
        lambda d: (r := d.find_element(By.ID, "action-result")).get_attribute("data-status") and r
    )
    assert result.get_attribute("data-status") == "201", result.text
    link = result.find_element(By.ID, "started-run")
    assert link.text.startswith("deployment_pipeline run ") and link.text.endswith(" started")
    return unquote(link.get_attribute("href").rsplit("/runs/", 1)[1])
