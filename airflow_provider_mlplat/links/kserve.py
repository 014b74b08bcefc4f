"""Extra link from a rollout to the endpoint of the deployment it rolled out."""

from __future__ import annotations

from airflow_provider_mlplat.links.base import XComStoredLink


class KServeEndpointLink(XComStoredLink):
    """Link to the KServe endpoint (the InferenceService URL, or the local model server's) a rollout served."""

    name = "KServe endpoint"
