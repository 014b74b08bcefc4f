"""Least privilege, checked both ways: every Kubernetes request of the provider in this session is
granted by include/k8s/rbac.yaml, and every rule it grants was used."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.k8s_audit import AIRFLOW_USER, LOG_ENV, RECORDED, read_log
from tests.unit.test_rbac import manifests

pytestmark = pytest.mark.integration

#: the namespaced rules (the Role's); the ClusterRole's are for cluster-scoped resources
ROLE_RULES = manifests()["Role"]["rules"]
#: the test modules whose tests drive the hooks against the emulator (the `k8s` fixture)
KUBERNETES_TESTS = (
    "tests/integration/kserve/test_rollout_kubernetes.py",
    "tests/integration/test_kuberay.py",
    "tests/unit/test_hooks.py",
    "tests/unit/test_kserve_kubernetes.py",
    "tests/unit/test_kserve_standard.py",
)


def grants(rule: dict, access) -> bool:
    """Whether a rule allows a request (a Role's rules namespaced resources only, a ClusterRole's cluster-scoped ones)."""
    return (
        (access.namespace is not None) == (rule in ROLE_RULES)
        and access.group in rule.get("apiGroups", [])
        and access.resource in rule.get("resources", [])
        and access.verb in rule["verbs"]
        and (not rule.get("resourceNames") or access.name in rule["resourceNames"])
    )


def session_requests(request, tmp_path) -> list:
    """This session's recorded requests, plus those of the Kubernetes test modules it did not run."""
    ran = {
        item.path.relative_to(REPO).as_posix() for item in request.session.items if "k8s" in item.fixturenames
    }
    assert ran <= set(KUBERNETES_TESTS), f"add {sorted(ran - set(KUBERNETES_TESTS))} to KUBERNETES_TESTS"
    missing = [module for module in KUBERNETES_TESTS if module not in ran]
    if not missing:
        return list(RECORDED)
    log = tmp_path / "k8s-requests.jsonl"
    log.touch()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *missing],
        env={**os.environ, LOG_ENV: str(log)},
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return list(RECORDED) + read_log(str(log))


@pytest.mark.rbac_audit
@pytest.mark.timeout(1200)  # only when run without the Kubernetes tests: it runs them first
def test_the_role_grants_exactly_what_the_hooks_ask(request, tmp_path):
    docs = manifests()
    subject = docs["RoleBinding"]["subjects"][0]
    assert f"system:serviceaccount:{subject['namespace']}:{subject['name']}" == AIRFLOW_USER
    rules = ROLE_RULES + docs["ClusterRole"]["rules"]
    recorded = session_requests(request, tmp_path)
    asked = [(test, access) for test, access in recorded if not access.resource.startswith("/")]
    # discovery (/api, /apis, /version) is every authenticated user's (system:discovery)
    assert asked, "no Kubernetes request was recorded"
    refused = {
        f"{a.verb} {a.resource}.{a.group or 'core'} {a.name or ''} in {a.namespace} (by {test})"
        for test, a in asked
        if not any(grants(rule, a) for rule in rules)
    }
    unused = [
        f"{verb} {resource}.{group or 'core'} {rule.get('resourceNames', '')}"
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if not any(
            (a.group, a.resource, a.verb) == (group, resource, verb) and grants(rule, a) for _, a in asked
        )
    ]
    assert (sorted(refused), unused) == ([], []), (
        "the Role does not grant:\n"
        + "\n".join(sorted(refused))
        + "\nit grants what no hook used:\n"
        + "\n".join(unused)
    )
