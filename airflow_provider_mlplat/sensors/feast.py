"""Sensor: wait until the online store holds a feature view's data up to a point in time."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable
from airflow_provider_mlplat.hooks.feast import FeastHook
from airflow_provider_mlplat.times import as_utc
from airflow_provider_mlplat.triggers.feast import FeastFeatureFreshnessTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class FeastFeatureFreshnessSensor(BaseSensorOperator):
    """
    Wait until a feature view has been materialized up to ``target_time`` (Feast's materialization
    record, which FeastMaterializeOperator writes only after reading the rows back from the online
    store). Deferrable by default: the wait costs no worker slot. On timeout it fails naming the
    last time the view was materialized up to. Returns ``{"feature_view", "watermark"}``.

    :param feature_view: feature view name (templated).
    :param target_time: the time the data must reach (templated; default: the data interval end).
    :param deferrable: wait in the triggerer instead of a worker.
    :param feast_conn_id: Airflow connection id of type ``feast``.
    """

    template_fields: Sequence[str] = ("feature_view", "target_time")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        feature_view: str,
        target_time: Any = "{{ data_interval_end }}",
        deferrable: bool = True,
        feast_conn_id: str = FeastHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.feature_view = feature_view
        self.target_time = target_time
        self.deferrable = deferrable
        self.feast_conn_id = feast_conn_id

    def poke(self, context: Context) -> PokeReturnValue:
        target = as_utc("target_time", self.target_time)
        watermark = FeastHook(self.feast_conn_id).watermark(self.feature_view)
        self.log.info("%s materialized up to %s; target %s", self.feature_view, watermark, target)
        return PokeReturnValue(
            is_done=watermark is not None and watermark >= target,
            xcom_value={
                "feature_view": self.feature_view,
                "watermark": watermark.isoformat() if watermark else None,
            },
        )

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        self.defer(
            trigger=FeastFeatureFreshnessTrigger(
                feature_view=self.feature_view,
                target_time=as_utc("target_time", self.target_time).isoformat(),
                deadline=time.time() + self.timeout,
                poke_interval=self.poke_interval,
                feast_conn_id=self.feast_conn_id,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """
        Resume after the trigger fired: return on success, fail on timeout or error.

        :param context: the task's Airflow context.
        :param event: the trigger's event.
        """
        if event["status"] == "success":
            return {"feature_view": event["feature_view"], "watermark": event["watermark"]}
        if event["status"] == "timeout":
            raise AirflowSensorTimeout(
                f"{event['feature_view']} is not materialized up to {event['target_time']} after "
                f"{self.timeout:.0f} s; last materialized up to {event['watermark'] or 'never'}"
            )
        raise MLPlatServiceUnavailable(f"checking {event['feature_view']} failed: {event['message']}")
