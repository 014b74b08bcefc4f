"""The RBAC manifests of include/k8s/: valid rbac.authorization.k8s.io/v1, taken by the API server."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

RBAC = REPO / "include" / "k8s" / "rbac.yaml"
SCHEMA = REPO / "tests" / "schemas" / "rbac-v1.json"


def manifests() -> dict[str, dict]:
    """The documents of include/k8s/rbac.yaml by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(RBAC.read_text())}


def test_manifests_validate_against_the_rbac_schema_and_a_misspelling_does_not():
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    docs = manifests()
    # the one ClusterRole reads the InferenceService CRD (cluster-scoped), nothing else
    assert sorted(docs) == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"]
    assert docs["ClusterRole"]["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["inferenceservices.serving.kserve.io"],
            "verbs": ["get"],
        }
    ]
    for doc in docs.values():
        validator.validate(doc)
    misspelt = copy.deepcopy(docs["Role"])
    misspelt["rules"][0]["verb"] = misspelt["rules"][0].pop("verbs")
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(misspelt)
    binding, account = docs["RoleBinding"], docs["ServiceAccount"]
    assert docs["ClusterRoleBinding"]["roleRef"]["name"] == docs["ClusterRole"]["metadata"]["name"]
    assert docs["ClusterRoleBinding"]["subjects"] == binding["subjects"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": docs["Role"]["metadata"]["name"],
    }
    assert binding["metadata"]["namespace"] == docs["Role"]["metadata"]["namespace"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]


def test_the_emulated_api_server_takes_the_manifests(tmp_path):
    from kubernetes import config, utils

    from airflow_provider_mlplat.testing.kubernetes.emulator import K8sEmulator

    docs = manifests()
    with K8sEmulator() as emu:
        api = config.new_client_from_config(emu.kubeconfig(tmp_path / "admin", token="admin"))
        for doc in docs.values():
            utils.create_from_dict(api, doc)
        role = docs["Role"]["metadata"]
        stored = emu.get_object("rbac.authorization.k8s.io", "v1", role["namespace"], "roles", role["name"])
        assert stored["rules"] == docs["Role"]["rules"]
        binding = emu.get_object(
            "rbac.authorization.k8s.io", "v1", role["namespace"], "rolebindings", role["name"]
        )
        assert binding["subjects"] == docs["RoleBinding"]["subjects"]
        account = docs["ServiceAccount"]["metadata"]
        assert emu.get_object("", "v1", account["namespace"], "serviceaccounts", account["name"]) is not None
