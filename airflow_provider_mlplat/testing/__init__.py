"""The provider's pytest plugin: an isolated Airflow, real services on free ports, a Kubernetes emulator.

Install ``airflow-provider-mlplat[testing]``; pytest loads the plugin through its ``pytest11`` entry
point ``mlplat`` (``-p no:mlplat`` turns it off). The fixtures are documented in the modules that
define them: :mod:`.airflow`, :mod:`.platform`, :mod:`.stores`, :mod:`.feast`, :mod:`.kubernetes.fixtures`.
"""

from __future__ import annotations

from airflow_provider_mlplat.testing.airflow import DagRunResult, set_connection
from airflow_provider_mlplat.testing.ci import unavailable
from airflow_provider_mlplat.testing.waiting import wait_for

__all__ = ["DagRunResult", "set_connection", "unavailable", "wait_for"]
