"""MLflow sensor: wait for a model version to be READY, or for an alias to reach a newer version."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatValidationFailed
from airflow_provider_mlplat.hooks.mlflow import MLflowHook
from airflow_provider_mlplat.links.mlflow import MLflowModelVersionLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class MLflowModelVersionSensor(BaseSensorOperator):
    """
    Wait until the version behind ``version`` (a number or an alias) is READY and, when
    ``newer_than`` is set, its number is greater (e.g. "``challenger`` points at a version newer
    than the one deployed"). Deferrable by default: the wait runs in the triggerer. Returns
    ``{"model_name", "version", "run_id", "model_uri"}``.

    :param model_name: registered model name.
    :param version: version number or alias.
    :param newer_than: only a version number greater than this one counts.
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param mlflow_conn_id: Airflow connection of type ``mlflow``.
    """

    template_fields: Sequence[str] = ("model_name", "version", "newer_than")
    operator_extra_links = (MLflowModelVersionLink(),)

    def __init__(
        self,
        *,
        model_name: str,
        version: str | int = "challenger",
        newer_than: int | str | None = None,
        deferrable: bool = True,
        mlflow_conn_id: str = MLflowHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version = version
        self.newer_than = newer_than
        self.deferrable = deferrable
        self.mlflow_conn_id = mlflow_conn_id

    def _newer_than(self) -> int | None:
        if self.newer_than in (None, ""):
            return None
        try:
            return int(self.newer_than)
        except (TypeError, ValueError):
            raise MLPlatConfigError(f"newer_than must be a version number, got {self.newer_than!r}") from None

    def poke(self, context: Context) -> PokeReturnValue:
        found = MLflowHook(self.mlflow_conn_id).version_ready(
            self.model_name, str(self.version), self._newer_than()
        )
        return PokeReturnValue(is_done=found is not None, xcom_value=found and self._done(context, found))

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        from airflow_provider_mlplat.triggers.mlflow import MLflowModelVersionTrigger

        newer_than = self._newer_than()
        found = MLflowHook(self.mlflow_conn_id).version_ready(self.model_name, str(self.version), newer_than)
        if found:
            return self._done(context, found)
        self.defer(
            trigger=MLflowModelVersionTrigger(
                model_name=self.model_name,
                version=str(self.version),
                newer_than=newer_than,
                poll_interval=self.poke_interval,
                mlflow_conn_id=self.mlflow_conn_id,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """
        Resume after the trigger fired: the version, or an error naming what failed.

        :param context: the task's Airflow context.
        :param event: the trigger's event payload.
        """
        if event.get("status") != "success":
            raise MLPlatValidationFailed(
                f"waiting for {self.model_name} {self.version}: {event.get('message', event)}"
            )
        found = {k: v for k, v in event.items() if k != "status"}
        return self._done(context, found)

    def _done(self, context: Context, found: dict[str, Any]) -> dict[str, Any]:
        hook = MLflowHook(self.mlflow_conn_id)
        MLflowModelVersionLink.persist(context, hook.model_version_url(self.model_name, found["version"]))
        return found
