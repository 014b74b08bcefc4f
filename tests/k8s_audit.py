"""What the provider asked the Kubernetes emulator during the session (as Airflow's service account),
for the RBAC audit in tests/unit/test_rbac.py; setup done as an administrator is not recorded."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from airflow_provider_mlplat.testing.kubernetes.fixtures import AIRFLOW_USER

if TYPE_CHECKING:  # the emulator (kmock, aiohttp) is imported by the tests that use it, not by conftest
    from airflow_provider_mlplat.testing.kubernetes.emulator import Access, K8sEmulator

#: set: every recorded request is also appended to this file, as JSON lines (for a pytest subprocess)
LOG_ENV = "MLPLAT_K8S_AUDIT_LOG"
#: (test node id, request) of this session
RECORDED: list[tuple[str, Access]] = []


def record(nodeid: str, emulator: K8sEmulator) -> None:
    """Keep the requests a test made as Airflow's service account."""
    mine = [(nodeid, access) for access in emulator.audit if access.user == AIRFLOW_USER]
    RECORDED.extend(mine)
    if os.environ.get(LOG_ENV):
        with open(os.environ[LOG_ENV], "a") as log:
            log.writelines(json.dumps([test, list(access)]) + "\n" for test, access in mine)


def read_log(path: str) -> list[tuple[str, Access]]:
    """The requests a subprocess recorded with :data:`LOG_ENV`."""
    from airflow_provider_mlplat.testing.kubernetes.emulator import Access

    with open(path) as log:
        return [(test, Access(*access)) for test, access in map(json.loads, log)]


def audit_last(items: list) -> None:
    """Move the tests marked ``rbac_audit`` to the end of the session (in place)."""
    items.sort(key=lambda item: item.get_closest_marker("rbac_audit") is not None)
