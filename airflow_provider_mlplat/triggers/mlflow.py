"""MLflow registry triggers: wait for a ready model version; fire when an alias moves."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from airflow_provider_mlplat.hooks.mlflow import MLflowHook


def _serialize(trigger: BaseTrigger) -> tuple[str, dict[str, Any]]:
    """A trigger's class path and its constructor arguments (each kept as an attribute of that name)."""
    names = [p for p in inspect.signature(type(trigger)).parameters]
    return f"{__name__}.{type(trigger).__name__}", {name: getattr(trigger, name) for name in names}


class MLflowModelVersionTrigger(BaseTrigger):
    """
    Poll the registry until a version (number or alias) is READY and, optionally, newer than a given
    one. Yields ``{"status": "success", "model_name", "version", "run_id", "model_uri"}`` or
    ``{"status": "error", "message"}`` when the registration failed or the registry errs.

    :param model_name: registered model name.
    :param version: version number or alias.
    :param newer_than: only a version number greater than this one counts.
    :param poll_interval: seconds between polls.
    :param mlflow_conn_id: Airflow connection of type ``mlflow``.
    """

    def __init__(
        self,
        model_name: str,
        version: str,
        newer_than: int | None = None,
        poll_interval: float = 30.0,
        mlflow_conn_id: str = MLflowHook.default_conn_name,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.version = version
        self.newer_than = newer_than
        self.poll_interval = poll_interval
        self.mlflow_conn_id = mlflow_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return _serialize(self)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            hook = await MLflowHook.for_trigger(self.mlflow_conn_id)
            while True:
                # the MLflow client is synchronous: a thread keeps the triggerer's loop free
                found = await asyncio.to_thread(
                    hook.version_ready, self.model_name, self.version, self.newer_than
                )
                if found:
                    yield TriggerEvent({"status": "success", **found})
                    return
                await asyncio.sleep(self.poll_interval)
        except Exception as err:  # the task reports it: execute_complete raises with the message
            yield TriggerEvent({"status": "error", "message": f"{type(err).__name__}: {err}"})


class MLflowAliasChangedTrigger(BaseEventTrigger):
    """
    Fire once each time an alias of a registered model moves to another version, whoever moved it
    (a promotion task, or a person in the MLflow UI). For an ``AssetWatcher``, e.g. schedule a
    deployment on "champion changed".

    The first poll only notes where the alias points; each later move to a version not seen last
    yields ``{"model_name", "alias", "version", "previous_version", "run_id", "model_uri"}``. The
    last seen version is kept in the watched asset's state store when the triggerer provides one,
    so a triggerer restart neither repeats a move nor misses one made while it was down.

    :param model_name: registered model name.
    :param alias: alias to watch.
    :param poll_interval: seconds between polls.
    :param mlflow_conn_id: Airflow connection of type ``mlflow``.
    """

    def __init__(
        self,
        model_name: str,
        alias: str = "champion",
        poll_interval: float = 30.0,
        mlflow_conn_id: str = MLflowHook.default_conn_name,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.alias = alias
        self.poll_interval = poll_interval
        self.mlflow_conn_id = mlflow_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return _serialize(self)

    @property
    def _state_key(self) -> str:
        return f"mlflow_alias:{self.model_name}@{self.alias}"

    async def _load(self) -> str | None:
        """The last version seen (``""``: alias unset), from the asset state store when there is one."""
        if self.asset_state_store is None:
            return None
        try:
            return await self.asset_state_store.aget(self._state_key)
        except ValueError:  # watches several assets: no single state to keep
            self.asset_state_store = None
            return None

    async def _save(self, version: str) -> None:
        if self.asset_state_store is not None:
            await self.asset_state_store.aset(self._state_key, version)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = await MLflowHook.for_trigger(self.mlflow_conn_id)
        seen = await self._load()
        while True:
            try:
                current = await asyncio.to_thread(hook.alias_version, self.model_name, self.alias) or ""
            except Exception as err:  # a registry hiccup must not end the watch
                self.log.warning("reading %s@%s failed: %s", self.model_name, self.alias, err)
                await asyncio.sleep(self.poll_interval)
                continue
            if seen is None:
                self.log.info("watching %s@%s (now %s)", self.model_name, self.alias, current or "unset")
                seen = current
                await self._save(seen)
            elif current != seen:
                previous, seen = seen, current
                if current:  # a deleted alias is noted, not announced
                    version = await asyncio.to_thread(hook.version_ready, self.model_name, current)
                    yield TriggerEvent(
                        {
                            "model_name": self.model_name,
                            "alias": self.alias,
                            "version": current,
                            "previous_version": previous or None,
                            "run_id": (version or {}).get("run_id"),
                            "model_uri": f"models:/{self.model_name}/{current}",
                        }
                    )
                # saved after the event: a crash in between repeats a move rather than losing it
                await self._save(seen)
            await asyncio.sleep(self.poll_interval)
