"""An isolated Airflow for the test session: its home, a migrated metadata DB, connections, ``run_dag``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest


def configure_airflow(dags_folder: Path, plugins_folder: Path | None = None) -> Path:
    """
    Point this process (and its children) at a fresh Airflow home; call it before airflow is imported.

    :param dags_folder: the DAGs folder ``run_dag`` runs from.
    :param plugins_folder: Airflow plugins folder (default: none).
    :return: the home, ``$MLPLAT_TEST_AIRFLOW_HOME`` when set, else a new temporary folder.
    """
    home = Path(os.environ.get("MLPLAT_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="mlplat-airflow-"))
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder or home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__API_AUTH__JWT_SECRET": "mlplat-tests-" + "x" * 64,
            "AIRFLOW__MLPLAT__ARTIFACT_ROOT": str(home / "artifacts"),
        }
    )
    return home


def set_connection(conn_id: str, **fields: Any) -> None:
    """
    Define an Airflow connection for this test session through the environment.

    :param conn_id: connection id.
    :param fields: the connection's fields (``conn_type``, ``host``, ``extra``...).
    """
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(fields)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB (SQLite) for this session; returns AIRFLOW_HOME."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Path(os.environ["AIRFLOW_HOME"])


@dataclass
class DagRunResult:
    """What a DAG run left: its state, each task instance's state, and return values."""

    state: str
    run_id: str
    run_after: datetime | None = None
    states: dict[str, str] = field(default_factory=dict)
    xcoms: dict[str, Any] = field(default_factory=dict)


def _run_conf(dag, conf: dict[str, Any] | None, params: dict[str, Any] | None) -> dict[str, Any]:
    """The run's conf: ``conf`` with ``params`` over it, each param one the DAG declares."""
    unknown = sorted(set(params or {}) - set(dag.params))
    if unknown:
        raise ValueError(
            f"DAG {dag.dag_id!r} has no param(s) {unknown}; valid: {sorted(dag.params) or 'none'}"
        )
    return {**(conf or {}), **(params or {})}


@pytest.fixture
def run_dag(airflow_db):
    """
    Run a DAG of the session's DAGs folder to completion the Airflow 3.3 way (``dag.test()``,
    which serializes the DAG bundle first) and return a :class:`DagRunResult`. Mapped tasks
    appear as ``task_id[map_index]``. Called as ``run_dag(dag_id, conf=..., params=...,
    logical_date=...)``; an unknown param fails naming the valid ones.
    """

    def run(
        dag_id: str,
        conf: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        logical_date: datetime | None = None,
    ) -> DagRunResult:
        from airflow.dag_processing.dagbag import DagBag
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        folder = os.environ["AIRFLOW__CORE__DAGS_FOLDER"]
        bag = DagBag(dag_folder=folder)
        assert not bag.import_errors, bag.import_errors
        dag = bag.get_dag(dag_id)
        assert dag is not None, f"no DAG {dag_id!r} in {folder}: {sorted(bag.dag_ids)}"
        kwargs: dict[str, Any] = {}
        if run_conf := _run_conf(dag, conf, params):
            kwargs["run_conf"] = run_conf
        if logical_date is not None:
            kwargs["logical_date"] = logical_date
        dag_run = dag.test(**kwargs)

        def key(ti) -> str:
            return ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"

        with create_session() as session:
            tis = dag_run.get_task_instances(session=session)
            states = {key(ti): str(ti.state) for ti in tis}
            rows = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == dag_id,
                    XComModel.run_id == dag_run.run_id,
                    XComModel.key == "return_value",
                )
            ).all()
            xcoms = {key(row): XComModel.deserialize_value(row) for row in rows}
        return DagRunResult(
            state=str(dag_run.state),
            run_id=dag_run.run_id,
            run_after=dag_run.run_after,
            states=states,
            xcoms=xcoms,
        )

    return run
