"""Feast feature store hook."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.base import MLPlatHook

if TYPE_CHECKING:
    from feast import FeatureStore

#: connection extras that replace a top-level key of feature_store.yaml
_OVERRIDES = ("online_store", "offline_store", "batch_engine")


class FeastHook(MLPlatHook):
    """
    Opens a Feast feature repo, with the online store, offline store, batch engine and registry
    optionally replaced by the connection (e.g. SQLite on a laptop, Redis in production) without
    editing the repo.

    :param feast_conn_id: Airflow connection id of type ``feast``.
    """

    conn_name_attr = "feast_conn_id"
    conn_type = "feast"
    default_conn_name = "feast_default"
    hook_name = "Feast"

    def __init__(self, feast_conn_id: str = default_conn_name) -> None:
        super().__init__(conn_id=feast_conn_id)

    @property
    def repo_path(self) -> Path:
        """The feature repo folder; it must hold a feature_store.yaml."""
        value = self.extra("repo_path")
        if not value:
            raise MLPlatConfigError(
                f"connection {self.conn_id!r} has no repo_path extra: set the feature repo folder"
            )
        path = Path(os.path.expandvars(value)).expanduser()
        if not (path / "feature_store.yaml").is_file():
            raise MLPlatConfigError(
                f"connection {self.conn_id!r}: repo_path {str(path)!r} holds no feature_store.yaml"
            )
        return path

    def repo_config_dict(self) -> dict[str, Any]:
        """The repo's feature_store.yaml as a dict, with the connection's overrides applied."""
        import yaml

        raw = yaml.safe_load(os.path.expandvars((self.repo_path / "feature_store.yaml").read_text()))
        for key in _OVERRIDES:
            override = self.json_extra(key)
            if override is not None:
                raw[key] = override
        if self.extra("registry"):
            raw["registry"] = self.extra("registry")
        return raw

    @cached_property
    def store(self) -> FeatureStore:
        """The :class:`feast.FeatureStore` (cached)."""
        from feast import FeatureStore
        from feast.repo_config import RepoConfig

        repo_path = self.repo_path
        config = RepoConfig(**self.repo_config_dict())
        config.repo_path = repo_path
        return FeatureStore(repo_path=str(repo_path), config=config)

    def get_conn(self) -> FeatureStore:
        """Return the cached :class:`feast.FeatureStore`."""
        return self.store

    def probe(self) -> str:
        """Load the registry and count what it defines."""
        views = self.store.list_feature_views()
        return f"Feast project {self.store.project!r} at {self.repo_path}: {len(views)} feature view(s)"
