"""Extra link from a drift check task to its Evidently HTML report, served by the UI plugin."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow_provider_mlplat.links.base import XComStoredLink

#: where the UI plugin serves reports from artifact storage (``airflow_provider_mlplat.ui.app``)
REPORTS_PATH = "/mlplat/reports"


def served_report_url(uri: str) -> str:
    """
    The URL a browser opens a report at: the plugin serves it from artifact storage (a ``file://``
    or ``s3://`` URI itself does not open in a browser).

    :param uri: the report's URI in artifact storage.
    """
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return f"{base}{REPORTS_PATH}?uri={quote(uri, safe='')}"


class EvidentlyReportLink(XComStoredLink):
    """Link to the Evidently data drift report (HTML) of a drift check."""

    name = "Drift report"

    @classmethod
    def persist(cls, context: Any, url: str) -> None:
        """
        Store the link to a report.

        :param context: the task's Airflow context.
        :param url: the report's URI in artifact storage.
        """
        super().persist(context, served_report_url(url))
