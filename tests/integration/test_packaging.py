"""What teams install: the wheels, resolved by plain pip and uv next to Airflow 3.3, installed and run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from airflow_provider_mlplat.testing.services import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
UV = str(Path(sys.executable).parent / "uv")
AIRFLOW = "apache-airflow==3.3.*"
PROVIDER = "airflow-provider-mlplat"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A command as a user would type it, from ``cwd`` (outside the project: no [tool.uv] settings apply)."""
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env or _user_env(), capture_output=True, text=True, timeout=900
    )


def _user_env() -> dict[str, str]:
    """This machine's environment without the test session's Airflow settings and virtualenv."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "VIRTUAL_ENV", "UV_PROJECT", "MLPLAT_TEST"))
    }


def venv(path: Path) -> Path:
    """A fresh virtualenv of this interpreter's Python; returns its ``bin`` folder."""
    made = run(UV, "venv", "--no-config", "--python", sys.executable, path, cwd=path.parent)
    assert made.returncode == 0, made.stderr
    return path / "bin"


def uv_pip(bin_dir: Path, *args: str | Path, wheels: Path) -> subprocess.CompletedProcess:
    """``uv pip`` into a venv, wheels of this repository found next to the package index."""
    return run(
        UV, "pip", *args, "--no-config", "--python", bin_dir / "python", "--find-links", wheels,
        cwd=bin_dir.parent.parent,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The three distributions built as a release would build them."""
    dist = tmp_path_factory.mktemp("dist")
    for target in (["--package", PROVIDER], ["--package", "mlplat"], [REPO / "model_server"]):
        built = run(UV, "build", "--wheel", "--out-dir", dist, *target, cwd=REPO)
        assert built.returncode == 0, built.stderr[-3000:]
    return dist


def metadata(wheel: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(name).decode())
    return {key: message.get_all(key) or [] for key in ("Requires-Dist", "Provides-Extra", "Requires-Python")}


def test_the_provider_requires_airflow_only_and_brings_each_sdk_with_an_extra(wheels):
    meta = metadata(next(wheels.glob("airflow_provider_mlplat-*.whl")))
    core = [r for r in meta["Requires-Dist"] if "extra ==" not in r]
    assert core == ["apache-airflow>=3.3"]
    assert set(meta["Provides-Extra"]) == {"mlflow", "feast", "gx", "ray", "kubernetes", "evidently", "openlineage", "s3",
                                           "all", "testing"}  # fmt: skip
    assert not [r for r in meta["Requires-Dist"] if "kserve" in r]  # the model server is in no extra
    assert meta["Requires-Python"] == [">=3.11"]
    with zipfile.ZipFile(next(wheels.glob("airflow_provider_mlplat-*.whl"))) as archive:
        files = set(archive.namelist())
        entry_points = archive.read(next(n for n in files if n.endswith("entry_points.txt"))).decode()
    crds = "airflow_provider_mlplat/testing/kubernetes/crds/"
    assert {
        f"{crds}serving.kserve.io_inferenceservices.yaml",
        f"{crds}ray.io_rayjobs.yaml",
        f"{crds}LICENSE",
    } <= files
    assert "[pytest11]\nmlplat = airflow_provider_mlplat.testing.plugin" in entry_points
    server = next(wheels.glob("mlplat_model_server-*.whl"))
    with zipfile.ZipFile(server) as archive:  # the inference log module is a file in it, not a link
        assert "def read_inference_log(" in archive.read("mlplat_model_server/inference_log.py").decode()
    with zipfile.ZipFile(next(wheels.glob("mlplat-*.whl"))) as archive:
        files = set(archive.namelist())
    assert {"mlplat/bundle/dags/training_pipeline.py", "mlplat/bundle/include/feature_repo/feature_store.yaml",
            "mlplat/bundle/include/prometheus/prometheus.yml"} <= files  # fmt: skip


def test_all_extras_resolve_next_to_airflow_with_uv_and_no_override(wheels, tmp_path):
    bin_dir = venv(tmp_path / "venv")
    # s3 is outside `all` (plain pip backtracks through boto3 releases for it); uv resolves both at once
    result = uv_pip(bin_dir, "install", "--dry-run", f"{PROVIDER}[all,s3]", AIRFLOW, wheels=wheels)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"+ {PROVIDER}==0.1.0" in result.stderr and "+ apache-airflow==3.3." in result.stderr
    assert "+ kserve" not in result.stderr and "+ psutil==5" not in result.stderr
    assert "+ s3fs==" in result.stderr and "+ apache-airflow-providers-amazon==" in result.stderr


@pytest.mark.timeout(600)  # pip resolves ~260 packages: 70 s on a quiet machine, 210 s on a loaded one
def test_all_extras_resolve_next_to_airflow_with_plain_pip(wheels, tmp_path):
    made = run(sys.executable, "-m", "venv", tmp_path / "venv", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    pip = tmp_path / "venv" / "bin" / "pip"
    result = run(
        pip, "install", "--dry-run", "--find-links", wheels, f"{PROVIDER}[all]", AIRFLOW, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    would = result.stdout.split("Would install", 1)[1].split()
    assert f"{PROVIDER}-0.1.0" in would and any(p.startswith("apache-airflow-3.3.") for p in would)
    assert not [p for p in would if p.startswith("kserve-")]


@pytest.mark.parametrize("python", ["3.12", "3.13"])
def test_all_extras_resolve_for_the_other_pythons_the_range_claims(wheels, tmp_path, python):
    (tmp_path / "requirements.in").write_text(f"{PROVIDER}[all]\n{AIRFLOW}\n")
    result = run(UV, "pip", "compile", "--no-config", "--no-python-downloads", "--python-version", python, "--find-links", wheels,
                 "requirements.in", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{PROVIDER}==0.1.0" in result.stdout and "apache-airflow==3.3." in result.stdout


def test_python_3_10_is_refused_as_the_range_says(wheels, tmp_path):
    (tmp_path / "requirements.in").write_text(f"{PROVIDER}[all]\n{AIRFLOW}\n")
    result = run(UV, "pip", "compile", "--no-config", "--no-python-downloads", "--python-version", "3.10", "--find-links", wheels,
                 "requirements.in", cwd=tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "Python >=3.11" in result.stderr and "unsatisfiable" in result.stderr


def test_an_unknown_extra_is_named_in_one_line(wheels, tmp_path):
    bin_dir = venv(tmp_path / "venv")
    result = uv_pip(bin_dir, "install", "--dry-run", f"{PROVIDER}[mlflwo]", AIRFLOW, wheels=wheels)
    lines = [line for line in result.stderr.splitlines() if "mlflwo" in line]
    assert lines == [f"warning: The package `{PROVIDER}==0.1.0` does not have an extra named `mlflwo`"]


TEAM_K8S_TEST = """
import httpx
import jsonschema
import pytest

from airflow_provider_mlplat.testing import wait_for
from airflow_provider_mlplat.testing.kubernetes.kserve_controller import FakeKServeController

ISVC = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "trips", "namespace": "default"},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "mlflow"}, "protocolVersion": "v2",
                                          "storageUri": "s3://models/trips"}}}}


def test_our_manifest_is_valid_and_survives_an_api_outage(k8s, validate_manifest):
    validate_manifest(ISVC)
    with pytest.raises(jsonschema.ValidationError, match="'ten' is not of type 'integer'"):
        validate_manifest({**ISVC, "spec": {"predictor": {**ISVC["spec"]["predictor"], "canaryTrafficPercent": "ten"}}})
    url = f"{k8s.url}/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"
    k8s.fail_next("POST", "inferenceservices", status=503)
    assert httpx.post(url, json=ISVC).status_code == 503
    assert httpx.post(url, json=ISVC).status_code == 201
    with FakeKServeController(k8s):
        status = wait_for(lambda: httpx.get(f"{url}/trips").json().get("status"), timeout=30, what="a status")
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
"""


@pytest.mark.timeout(900)  # 50-170 s measured on a quiet machine; 540 s (with the team test) on a loaded one
def test_installed_with_the_mlflow_and_testing_extras_it_promotes_a_model_and_tests_a_team_dag(
    wheels, tmp_path, mlflow_server
):
    from airflow_provider_mlplat.hooks.mlflow import MLflowHook
    from tests.integration.test_mlflow_dag import register, trips

    bin_dir = venv(tmp_path / "venv")
    installed = uv_pip(bin_dir, "install", f"{PROVIDER}[mlflow,testing]", AIRFLOW, wheels=wheels)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert "+ feast" not in installed.stderr and "+ ray" not in installed.stderr
    assert "+ kubernetes" not in installed.stderr  # the plugin's emulator needs no Kubernetes client

    team = tmp_path / "team"  # the plugin from the installed wheel: Kubernetes emulator, faults, CRD schemas
    team.mkdir()
    (team / "test_serving.py").write_text(TEAM_K8S_TEST)
    tested = run(bin_dir / "python", "-m", "pytest", "-p", "no:cacheprovider", "-q", cwd=team)
    assert tested.returncode == 0 and "1 passed" in tested.stdout, (
        tested.stdout[-3000:] + tested.stderr[-3000:]
    )

    name = f"team_model_{uuid.uuid4().hex[:8]}"
    assert register(name) == "1"  # through the test session's MLflow client, into the real server
    holdout = tmp_path / "holdout.parquet"
    trips(200, seed=2).to_parquet(holdout)
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "model_promotion.py").write_text((REPO / "dags" / "model_promotion.py").read_text())
    home = tmp_path / "airflow"
    env = {
        **_user_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
        "AIRFLOW__MLPLAT__ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "mlflow", "host": mlflow_server}),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    migrated = run(bin_dir / "airflow", "db", "migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    conf = {"model_name": name, "holdout_uri": str(holdout), "thresholds": {"roc_auc": 0.7}}
    tested = run(bin_dir / "airflow", "dags", "test", "model_promotion", "-c", json.dumps(conf),
                 cwd=tmp_path, env=env)  # fmt: skip
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    assert MLflowHook().client.get_registered_model(name).aliases == {"challenger": "1", "champion": "1"}

    feast_task = (
        "from airflow_provider_mlplat.operators.feast import FeastApplyOperator\n"
        "FeastApplyOperator(task_id='apply').execute({})\n"
    )
    failed = run(bin_dir / "python", "-c", feast_task, cwd=tmp_path, env=env)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        "airflow_provider_mlplat.exceptions.MLPlatMissingExtra: FeastHook needs feast, which this "
        f"environment lacks: pip install '{PROVIDER}[feast]'"
    )


@pytest.mark.timeout(600)  # 60-200 s measured
def test_the_local_platform_runs_from_its_installed_package(wheels, tmp_path):
    bin_dir = venv(tmp_path / "venv")
    installed = uv_pip(bin_dir, "install", "mlplat", wheels=wheels)
    assert installed.returncode == 0, installed.stderr[-3000:]
    bundle = run(bin_dir / "python", "-c", "from mlplat.platform import BUNDLE; print(BUNDLE)", cwd=tmp_path)
    assert bundle.stdout.strip().startswith(str(tmp_path / "venv" / "lib")), bundle.stdout + bundle.stderr
    home = tmp_path / "home"
    ports = ["--mlflow-port", str(free_port()), "--prometheus-port", str(free_port()),
             "--pushgateway-port", str(free_port())]  # fmt: skip
    up = run(bin_dir / "mlplat", "up", "--home", home, "--services", "mlflow,prometheus,pushgateway", *ports,
             cwd=tmp_path)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        status = run(bin_dir / "mlplat", "status", "--home", home, "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert {name for name, s in json.loads(status.stdout).items() if s["ok"]} == {
            "mlflow", "prometheus", "pushgateway"}  # fmt: skip
        config = (home / "prometheus" / "prometheus.yml").read_text()  # rendered from the packaged template
        assert f"127.0.0.1:{ports[3]}" in config and "${" not in config
    finally:
        down = run(bin_dir / "mlplat", "down", "--home", home, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
