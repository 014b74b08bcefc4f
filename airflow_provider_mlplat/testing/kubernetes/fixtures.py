"""The ``k8s`` emulator fixture and ``validate_manifest`` against the official CRD schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlplat.testing.airflow import set_connection

CRD_DIR = Path(__file__).parent / "crds"  # the official schemas, vendored (see its README)
#: who the ``kubernetes_default`` connection authenticates as: the service account of include/k8s/rbac.yaml
#: (the emulator takes the bearer token as the user name, and records it with each request)
AIRFLOW_USER = "system:serviceaccount:airflow:mlplat-airflow"


@pytest.fixture
def k8s(tmp_path):
    """
    A Kubernetes API emulator (:class:`~.emulator.K8sEmulator`: ``fail_next`` injects faults,
    ``requests`` records them) with the KubeRay and KServe CRDs registered, and an Airflow
    ``kubernetes_default`` connection pointing at it (namespace ``default``) that authenticates
    as Airflow's service account (:data:`AIRFLOW_USER`); ``audit`` lists what it asked, in RBAC terms.
    """
    from airflow_provider_mlplat.testing.kubernetes.emulator import K8sEmulator

    with K8sEmulator() as emulator:
        emulator.register("ray.io", "v1", "rayjobs", "RayJob")
        emulator.register("ray.io", "v1", "rayclusters", "RayCluster")
        emulator.register("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
        config = emulator.kubeconfig(tmp_path / "kubeconfig", token=AIRFLOW_USER)
        set_connection(
            "kubernetes_default",
            conn_type="kubernetes",
            extra={"kube_config_path": str(config), "namespace": "default"},
        )
        yield emulator


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    import yaml

    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # the C loader: these files are 86k lines
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


@pytest.fixture(scope="session")
def validate_manifest():
    """
    Validate a manifest against the official CRD schema of its apiVersion/kind (KServe's
    InferenceService and ServingRuntime, KubeRay's RayJob and RayCluster); raises
    ``jsonschema.ValidationError`` naming the bad field.
    """
    import jsonschema

    validators = {key: jsonschema.Draft7Validator(schema) for key, schema in _crd_schemas().items()}

    def validate(manifest: dict[str, Any]) -> None:
        key = (manifest.get("apiVersion"), manifest.get("kind"))
        assert key in validators, f"no CRD for {key}; known: {sorted(validators)}"
        validators[key].validate(manifest)

    return validate
