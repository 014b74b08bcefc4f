"""Great Expectations quality gate on a data file, as an operator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_mlplat.artifacts import read_dataframe, task_artifact_dir, write_json
from airflow_provider_mlplat.exceptions import MLPlatValidationFailed
from airflow_provider_mlplat.hooks.gx import GXHook

if TYPE_CHECKING:
    from airflow.sdk import Context


class GXValidateOperator(BaseOperator):
    """
    Validate a parquet file or folder, or a CSV file, against an expectation suite file (Great
    Expectations 1.x, ephemeral context). The full result goes to artifact storage; XCom gets
    ``{"suite", "data_path", "success", "rows", "evaluated", "failed": [...], "result_uri"}``.
    A failure raises :class:`~airflow_provider_mlplat.exceptions.MLPlatValidationFailed` naming the
    failed expectations with the observed values, unless ``warn_only``.

    :param data_path: the data (templated): local path or URI, e.g. a training set's ``uri``.
    :param suite_path: the expectation suite JSON file (templated).
    :param warn_only: log failed expectations as a warning instead of failing the task.
    """

    template_fields: Sequence[str] = ("data_path", "suite_path")
    ui_color = "#fdf3e8"

    def __init__(self, *, data_path: str, suite_path: str, warn_only: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_path = data_path
        self.suite_path = suite_path
        self.warn_only = warn_only

    def execute(self, context: Context) -> dict[str, Any]:
        hook = GXHook()
        suite = hook.load_suite(self.suite_path)
        frame = read_dataframe(self.data_path)
        self.log.info("Validating %d row(s) of %s against suite %r", len(frame), self.data_path, suite.name)
        result = hook.validate(frame, suite)
        result_uri = write_json(task_artifact_dir(context) / "validation_result.json", result.to_json_dict())
        failed = hook.failures(result)
        summary = {
            "suite": suite.name,
            "data_path": str(self.data_path),
            "success": bool(result.success),
            "rows": len(frame),
            "evaluated": len(result.results),
            "failed": failed,
            "result_uri": result_uri,
        }
        if result.success:
            self.log.info("All %d expectation(s) of %r passed", len(result.results), suite.name)
            return summary
        message = (
            f"{len(failed)} of {len(result.results)} expectation(s) of suite {suite.name!r} failed on "
            f"{self.data_path}: "
            + "; ".join(hook.describe(f) for f in failed)
            + f" (full result: {result_uri})"
        )
        if not self.warn_only:
            raise MLPlatValidationFailed(message)
        self.log.warning("warn_only: %s", message)
        return summary
