"""Every reference DAG loads without import errors and carries tags, an owner and a doc."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_loads(dag_bag):
    assert dag_bag.import_errors == {}
    files = {Path(p).name for p in (DAGS.glob("*.py"))}
    loaded = {Path(dag.fileloc).name for dag in dag_bag.dags.values()}
    assert files == loaded, f"files without a DAG: {sorted(files - loaded)}"


def test_every_dag_has_tags_owner_and_doc(dag_bag):
    assert dag_bag.dags
    for dag_id, dag in dag_bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert "mlplat" in dag.tags, f"{dag_id} is not tagged mlplat"
        assert dag.doc_md and len(dag.doc_md.strip()) > 40, f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
