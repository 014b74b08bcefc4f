"""Great Expectations 1.x: expectation suites from files, validation in an ephemeral context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.extras import require_extra

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations import ExpectationSuite
    from great_expectations.core import ExpectationSuiteValidationResult

#: unexpected values quoted per failed expectation in summaries and messages
_EXAMPLES = 5


class GXHook(BaseHook):
    """
    Validates DataFrames with Great Expectations in an ephemeral context (no GX project on disk, no
    connection): suites are JSON files in GX's own format (``ExpectationSuite.to_json_dict()``).
    """

    hook_name = "Great Expectations"

    def __init__(self) -> None:
        super().__init__()
        require_extra("gx", type(self).__name__)

    def load_suite(self, path: str | Path) -> ExpectationSuite:
        """
        Read an expectation suite file; every expectation in it must be valid (GX would skip a bad one).

        :param path: JSON file with ``name`` and ``expectations`` (each ``{"type", "kwargs"}``).
        """
        import great_expectations as gx
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MLPlatConfigError(f"cannot read expectation suite {str(path)!r}: {err}") from None
        if (
            not isinstance(data, dict)
            or not data.get("name")
            or not isinstance(data.get("expectations"), list)
        ):
            raise MLPlatConfigError(
                f"expectation suite {str(path)!r} must be a JSON object with 'name' and a list of 'expectations'"
            )
        expectations = []
        for index, item in enumerate(data["expectations"]):
            try:
                expectations.append(ExpectationConfiguration(**item).to_domain_obj())
            except Exception as err:
                raise MLPlatConfigError(
                    f"expectation suite {str(path)!r}: expectation #{index} {item!r} is invalid: {err}"
                ) from None
        return gx.ExpectationSuite(name=data["name"], expectations=expectations, meta=data.get("meta"))

    def validate(self, frame: pd.DataFrame, suite: ExpectationSuite) -> ExpectationSuiteValidationResult:
        """
        Validate a DataFrame against a suite.

        :param frame: the data.
        :param suite: the expectations.
        """
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch = (
            context.data_sources.add_pandas(name="mlplat")
            .add_dataframe_asset(name="data")
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        return batch.validate(suite, result_format={"result_format": "SUMMARY"})

    @staticmethod
    def failures(result: ExpectationSuiteValidationResult) -> list[dict[str, Any]]:
        """
        The failed expectations: type, column, arguments and what was observed.

        :param result: a suite validation result.
        """
        out = []
        for item in result.results:
            if item.success:
                continue
            config, observed = item.expectation_config, item.result or {}
            kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
            failure = {
                "expectation": config.type,
                "column": config.kwargs.get("column"),
                "kwargs": kwargs,
                "observed_value": observed.get("observed_value"),
                "unexpected_count": observed.get("unexpected_count"),
                "unexpected_percent": observed.get("unexpected_percent"),
                "unexpected_examples": (observed.get("partial_unexpected_list") or [])[:_EXAMPLES],
            }
            errors = _exception_messages(item.exception_info or {})
            if errors:
                failure["error"] = "; ".join(errors)
            out.append(json.loads(json.dumps(failure, default=str)))
        return sorted(out, key=lambda f: (f["expectation"], f["column"] or ""))

    @staticmethod
    def describe(failure: dict[str, Any]) -> str:
        """
        One failed expectation in one line, with the evidence.

        :param failure: an item of :meth:`failures`.
        """
        args = ", ".join(
            [
                *([failure["column"]] if failure["column"] else []),
                *(f"{k}={v!r}" for k, v in failure["kwargs"].items()),
            ]
        )
        parts = []
        if failure.get("error"):
            parts.append(f"error: {failure['error']}")
        if failure["observed_value"] is not None:
            parts.append(f"observed {failure['observed_value']!r}")
        if failure["unexpected_count"]:
            parts.append(
                f"{failure['unexpected_count']} unexpected ({failure['unexpected_percent']:.2f}%), "
                f"e.g. {failure['unexpected_examples']}"
            )
        return f"{failure['expectation']}({args}): {'; '.join(parts) or 'failed'}"


def _exception_messages(info: dict[str, Any]) -> list[str]:
    """Messages of the exceptions GX caught: ``exception_info`` is flat or keyed by metric."""
    if "raised_exception" in info:
        return [info["exception_message"]] if info["raised_exception"] else []
    return sorted({m for sub in info.values() if isinstance(sub, dict) for m in _exception_messages(sub)})
