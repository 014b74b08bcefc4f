"""The ``k8s`` emulator fixture and ``validate_manifest`` against the official CRD schemas."""

from __future__ import annotations

import functools
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

    schemas = crd_schemas()
    with K8sEmulator() as emulator:
        for group_version, kind, plural in (
            ("ray.io/v1", "RayJob", "rayjobs"),
            ("ray.io/v1", "RayCluster", "rayclusters"),
            ("serving.kserve.io/v1beta1", "InferenceService", "inferenceservices"),
        ):
            schema = schemas[(group_version, kind)]
            emulator.register(*group_version.split("/"), plural, kind, schema=schema)
        config = emulator.kubeconfig(tmp_path / "kubeconfig", token=AIRFLOW_USER)
        set_connection(
            "kubernetes_default",
            conn_type="kubernetes",
            extra={"kube_config_path": str(config), "namespace": "default"},
        )
        yield emulator
        emulator.check()


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """The ``openAPIV3Schema`` of each (apiVersion, kind) in the vendored CRDs (read once per process)."""
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

    validators = {key: jsonschema.Draft7Validator(schema) for key, schema in crd_schemas().items()}

    def validate(manifest: dict[str, Any]) -> None:
        key = (manifest.get("apiVersion"), manifest.get("kind"))
        assert key in validators, f"no CRD for {key}; known: {sorted(validators)}"
        validators[key].validate(manifest)

    return validate
