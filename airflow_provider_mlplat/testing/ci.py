"""The CI rule: a missing service skips the test with the reason, except under ``CI=true`` where it fails."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """
    Skip a test whose service is missing, except under CI=true where that is a failure.

    :param reason: what is missing and how to get it.
    """
    if IN_CI:
        pytest.fail(f"required service unavailable under CI=true: {reason}")
    pytest.skip(reason)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, not marked expected_skip: {reason.removeprefix('Skipped: ')}"


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``expected_skip`` marker."""
    config.addinivalue_line(
        "markers", "expected_skip(reason): this test may skip on the machine that runs it, even under CI=true"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Under CI=true a skip fails the test unless it is marked ``@pytest.mark.expected_skip(reason)``."""
    report = yield
    if (
        IN_CI
        and report.skipped
        and not hasattr(report, "wasxfail")
        and not item.get_closest_marker("expected_skip")
    ):
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    """Under CI=true a module skipped as a whole fails too (a marker cannot excuse it)."""
    report = yield
    if IN_CI and report.skipped:
        _fail_skip(report)
    return report
