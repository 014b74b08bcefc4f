"""Ray cluster hook (Job Submission API)."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from airflow_provider_mlplat.hooks.base import MLPlatHook

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient


class RayHook(MLPlatHook):
    """
    Talks to a Ray cluster through its dashboard's Job Submission API.

    The connection's host is the dashboard address; its password, when set, is the Ray auth token
    (sent as a bearer token; Ray 2.60 turns token auth on by default).

    :param ray_conn_id: Airflow connection id of type ``ray``.
    """

    conn_name_attr = "ray_conn_id"
    conn_type = "ray"
    default_conn_name = "ray_default"
    hook_name = "Ray"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__(conn_id=ray_conn_id)

    @property
    def address(self) -> str:
        """The dashboard address, with a scheme."""
        host = (self.connection.host or "").rstrip("/")
        if not host:
            raise ValueError(
                f"connection {self.conn_id!r} has no host: set the Ray dashboard address, e.g. http://127.0.0.1:8265"
            )
        if "://" not in host:
            host = f"http://{host}:{self.connection.port or 8265}"
        return host

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers for the dashboard: the auth token, when the connection has one."""
        token = self.connection.password
        return {"Authorization": f"Bearer {token}"} if token else {}

    @cached_property
    def client(self) -> JobSubmissionClient:
        """The Job Submission client (cached; creating it checks the cluster answers)."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.headers)

    def get_conn(self) -> JobSubmissionClient:
        """Return the cached :class:`ray.job_submission.JobSubmissionClient`."""
        return self.client

    def probe(self) -> str:
        """List the cluster's jobs (needs the token when auth is on) and read its Ray version."""
        import httpx

        jobs = self.client.list_jobs()
        version = httpx.get(f"{self.address}/api/version", headers=self.headers, timeout=10).json()
        return f"Ray {version.get('ray_version')} at {self.address}: {len(jobs)} job(s)"
