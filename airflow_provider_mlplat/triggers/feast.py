"""Async trigger: wait until Feast has materialized a feature view up to a point in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_mlplat.hooks.feast import FeastHook


class FeastFeatureFreshnessTrigger(BaseTrigger):
    """
    Polls a feature view's materialization watermark (in a thread: Feast's registry client is
    blocking) until it reaches ``target_time``; fires ``success``, ``timeout`` (with the last
    watermark seen) or ``error``.

    :param feature_view: feature view name.
    :param target_time: ISO 8601 time the watermark must reach.
    :param deadline: epoch seconds after which the trigger gives up (None: never).
    :param poke_interval: seconds between polls.
    :param feast_conn_id: Airflow connection id of type ``feast``.
    """

    def __init__(
        self,
        feature_view: str,
        target_time: str,
        deadline: float | None,
        poke_interval: float = 60.0,
        feast_conn_id: str = FeastHook.default_conn_name,
    ) -> None:
        super().__init__()
        self.feature_view = feature_view
        self.target_time = target_time
        self.deadline = deadline
        self.poke_interval = poke_interval
        self.feast_conn_id = feast_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "feature_view": self.feature_view,
                "target_time": self.target_time,
                "deadline": self.deadline,
                "poke_interval": self.poke_interval,
                "feast_conn_id": self.feast_conn_id,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        target = datetime.fromisoformat(self.target_time)
        hook = FeastHook(self.feast_conn_id)
        watermark: datetime | None = None
        while True:
            try:
                watermark = await asyncio.to_thread(hook.watermark, self.feature_view)
            except Exception as err:
                yield TriggerEvent(self._event("error", watermark, f"{type(err).__name__}: {err}"))
                return
            if watermark is not None and watermark >= target:
                yield TriggerEvent(self._event("success", watermark))
                return
            if self.deadline is not None and time.time() >= self.deadline:
                yield TriggerEvent(self._event("timeout", watermark))
                return
            self.log.info("%s materialized up to %s; waiting for %s", self.feature_view, watermark, target)
            await asyncio.sleep(self.poke_interval)

    def _event(self, status: str, watermark: datetime | None, message: str = "") -> dict[str, Any]:
        return {
            "status": status,
            "feature_view": self.feature_view,
            "target_time": self.target_time,
            "watermark": watermark.isoformat() if watermark else None,
            "message": message,
        }
