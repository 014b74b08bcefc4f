"""The ``feast_repo`` fixture: a team's feature repo with its registry and online store in a temporary folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_mlplat.testing.airflow import set_connection


@dataclass(frozen=True)
class FeastRepo:
    """A feature repo the tests run against: its ``feast`` connection and where its stores live."""

    conn_id: str
    path: Path
    registry: Path
    online_store: Path

    def online_features(self, features: list[str], entity_rows: list[dict[str, Any]]) -> dict[str, list]:
        """
        Read features from the online store, as a serving application would.

        :param features: feature references, ``view:feature``.
        :param entity_rows: one dict of join keys per entity.
        :return: column name -> values, one per entity row.
        """
        from airflow_provider_mlplat.hooks.feast import FeastHook

        return FeastHook(self.conn_id).store.get_online_features(features, entity_rows).to_dict()


@pytest.fixture
def feast_repo(tmp_path):
    """
    Point a ``feast`` connection at a feature repo folder (its ``feature_store.yaml`` and its data
    are read in place), with a fresh registry and SQLite online store under the test's temporary
    folder. Called as ``feast_repo(folder, conn_id="feast_default", **extra)``; ``extra`` adds
    connection extras (e.g. ``data_dir``). Returns a :class:`FeastRepo`.
    """

    def make(folder: str | Path, conn_id: str = "feast_default", **extra: Any) -> FeastRepo:
        path = Path(folder).resolve()
        if not (path / "feature_store.yaml").is_file():
            raise ValueError(f"{path} is not a Feast feature repo: it has no feature_store.yaml")
        state = tmp_path / f"feast-{conn_id}"
        state.mkdir()
        repo = FeastRepo(conn_id, path, state / "registry.db", state / "online.db")
        fields = {"repo_path": str(path), "registry": str(repo.registry)}
        fields["online_store"] = {"type": "sqlite", "path": str(repo.online_store)}
        set_connection(conn_id, conn_type="feast", extra={**fields, **extra})
        return repo

    return make
