"""Extra link from a drift check task to the Evidently HTML report it saved to artifact storage."""

from __future__ import annotations

from airflow_provider_mlplat.links.base import XComStoredLink


class EvidentlyReportLink(XComStoredLink):
    """Link to the Evidently data drift report (HTML) of a drift check."""

    name = "Drift report"
