"""Ray cluster hook (Job Submission API)."""

from __future__ import annotations

import asyncio
import os
import shlex
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.base import MLPlatHook

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

#: Ray job statuses after which nothing changes any more.
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

#: Reads the state of a job by id (None: no such job); see :meth:`RayHook.job_reader`.
JobReader = Callable[[str], Awaitable["RayJobState | None"]]


@dataclass(frozen=True)
class RayJobState:
    """
    Where a Ray job stands, in the same terms for both targets (JSON-able for trigger events).

    :param job_id: submission id (the RayJob name on KubeRay).
    :param status: Ray job status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED.
    :param created_at: when this run of the job started, seconds since the epoch (KubeRay: the
        attempt's ``status.startTime``); a saved result is only returned for the same run.
    :param message: Ray's (or KubeRay's) message about the job.
    :param reason: why it failed: Ray's error type, or KubeRay's ``status.reason``.
    :param phase: KubeRay's ``status.jobDeploymentStatus`` (empty for the Ray target).
    :param dashboard_url: the Ray dashboard that holds the job (empty until known).
    """

    job_id: str
    status: str
    created_at: float
    message: str = ""
    reason: str = ""
    phase: str = ""
    dashboard_url: str = ""

    @property
    def terminal(self) -> bool:
        """Whether the job has finished (succeeded, failed or was stopped)."""
        return self.status in TERMINAL_STATUSES

    def describe(self, full_message: bool = True) -> str:
        """
        One line (or the full message) saying where the job is and why.

        :param full_message: keep the whole message; else only its first line.
        """
        where = f"{self.status} ({self.phase})" if self.phase else self.status
        message = self.message if full_message else self.message.strip().split("\n", 1)[0]
        detail = ": ".join(part for part in (self.reason, message.strip()) if part)
        return f"{where}: {detail}" if detail else where

    def to_dict(self) -> dict[str, Any]:
        """The state as a dict (for trigger events and XCom)."""
        return asdict(self)


@dataclass
class _SharedClient:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    client: Any = None
    users: int = 0
    exits: AsyncExitStack = field(default_factory=AsyncExitStack)


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, _SharedClient]] = (
    weakref.WeakKeyDictionary()
)


@asynccontextmanager
async def shared_client(key: Hashable, open_client: Callable[[], AbstractAsyncContextManager[Any]]):
    """
    One client per key and event loop, shared by everything waiting in that loop (the triggers of a
    triggerer), closed when the last user leaves. Each HTTP client builds an SSL context: ~50 ms of
    blocked event loop and over a megabyte, too much to pay per trigger.

    :param key: what the client talks to (and as whom).
    :param open_client: opens a new client (an async context manager).
    """
    shared = _shared.setdefault(asyncio.get_running_loop(), {}).setdefault(key, _SharedClient())
    async with shared.lock:
        if shared.client is None:
            shared.client = await shared.exits.enter_async_context(open_client())
        shared.users += 1
    try:
        yield shared.client
    finally:
        shared.users -= 1
        if shared.users == 0:
            exits, shared.client, shared.exits = shared.exits, None, AsyncExitStack()
            await exits.aclose()


class RayHook(MLPlatHook):
    """
    Talks to a Ray cluster through its dashboard's Job Submission API.

    The connection's host is the dashboard address; its password, when set, is the Ray auth token
    (sent as a bearer token; Ray 2.60 turns token auth on by default). A connection with a
    ``kubernetes_conn_id`` extra targets KubeRay instead: see
    :class:`~airflow_provider_mlplat.hooks.kuberay.KubeRayHook` and
    :func:`~airflow_provider_mlplat.hooks.ray_target.ray_job_hook`.

    :param ray_conn_id: Airflow connection id of type ``ray``.
    """

    conn_name_attr = "ray_conn_id"
    conn_type = "ray"
    default_conn_name = "ray_default"
    hook_name = "Ray"
    required_extras = ("ray",)
    target = "ray"
    #: what the async methods import (in a thread, before a trigger runs: see ``ray_target.aray_job_hook``)
    async_client_modules: tuple[str, ...] = ("httpx",)

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__(conn_id=ray_conn_id)

    @property
    def on_kubernetes(self) -> bool:
        """Whether the connection targets KubeRay (it names a Kubernetes connection)."""
        return bool(self.extra("kubernetes_conn_id"))

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

    # -- secrets ------------------------------------------------------------------------------

    def _secret_file(self, job_id: str) -> Path | None:
        """The job's secret file under a local artifact root (None: the root is object storage)."""
        from airflow_provider_mlplat.artifacts import artifact_root

        root = artifact_root()
        return (
            Path(root.path) / "ray" / "secrets" / f"{job_id}.env"
            if root.protocol in ("file", "local")
            else None
        )

    def prepare_secret_env(self, job_id: str, env: Mapping[str, str], entrypoint: str) -> str:
        """
        Hand secret environment variables to a job without showing them on the dashboard: write them
        to a 0600 file (in a 0700 folder) that the returned entrypoint sources before it runs.

        :param job_id: submission id.
        :param env: variable names and secret values.
        :param entrypoint: the job's shell command.
        """
        if not env:
            return entrypoint
        path = self._secret_file(job_id)
        if path is None:
            raise MLPlatConfigError(
                f"secrets of Ray job {job_id} ({', '.join(env)}) go into a 0600 file the job reads, which needs "
                "a local artifact_root shared with the Ray head: give the Ray cluster these variables in its "
                "own environment instead"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"{name}={shlex.quote(value)}\n" for name, value in env.items())
        return f"set -a && . {shlex.quote(str(path))} && set +a && {entrypoint}"

    def discard_secret_env(self, job_id: str) -> None:
        """
        Delete the secret file of a finished job (no-op when there is none).

        :param job_id: submission id.
        """
        path = self._secret_file(job_id)
        if path is not None:
            path.unlink(missing_ok=True)

    # -- jobs ---------------------------------------------------------------------------------

    def _state(self, job_id: str, info: dict[str, Any]) -> RayJobState:
        return RayJobState(
            job_id=job_id,
            status=info["status"],
            created_at=(info.get("start_time") or time.time() * 1000) / 1000,
            message=info.get("message") or "",
            reason=info.get("error_type") or "",
            dashboard_url=self.address,
        )

    def get_job(self, job_id: str) -> RayJobState | None:
        """
        The state of a job, or None when the cluster has no job with that submission id.

        :param job_id: submission id.
        """
        import httpx

        response = httpx.get(f"{self.address}/api/jobs/{job_id}", headers=self.headers, timeout=30)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return self._state(job_id, response.json())

    def submit_job(
        self,
        job_id: str,
        entrypoint: str,
        runtime_env: dict[str, Any],
        metadata: dict[str, str],
        entrypoint_num_cpus: float | None = None,
    ) -> tuple[RayJobState, bool]:
        """
        Submit a job under a fixed submission id, or attach to the job that already has it.

        Returns the job's state and whether this call submitted it.

        :param job_id: submission id.
        :param entrypoint: shell command the job runs.
        :param runtime_env: Ray runtime env (a local ``working_dir`` is uploaded by the client).
        :param metadata: job metadata.
        :param entrypoint_num_cpus: CPUs reserved for the entrypoint.
        """
        existing = self.get_job(job_id)
        if existing is not None:
            return existing, False
        import tenacity

        # a head that just started answers "No available agent to submit job, please try again later"
        agent_not_ready = tenacity.retry_if_exception_message(match=".*No available agent.*")
        submit = tenacity.retry(
            retry=agent_not_ready,
            wait=tenacity.wait_fixed(1),
            stop=tenacity.stop_after_delay(60),
            reraise=True,
        )(self.client.submit_job)
        try:
            submit(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata=metadata,
                entrypoint_num_cpus=entrypoint_num_cpus,
            )
        except RuntimeError:
            raced = self.get_job(job_id)  # another worker submitted the same id in between
            if raced is None:
                raise
            return raced, False
        return self.get_job(job_id) or RayJobState(job_id, "PENDING", time.time()), True

    def stop_job(self, job_id: str) -> None:
        """
        Ask Ray to stop a job (no-op when it has finished).

        :param job_id: submission id.
        """
        self.client.stop_job(job_id)

    def job_logs(self, state: RayJobState) -> str:
        """
        The whole log of a job (driver output), from the dashboard that holds it.

        :param state: the job's state (its ``dashboard_url`` says where to ask).
        """
        import httpx

        url = f"{state.dashboard_url}/api/jobs/{state.job_id}/logs"
        response = httpx.get(url, headers=self.headers, timeout=60)
        response.raise_for_status()
        return response.json().get("logs", "")

    async def tail_logs(self, state: RayJobState) -> AsyncIterator[str]:
        """
        Follow a job's log as it is written, line by line, until the job ends.

        :param state: the job's state (its ``dashboard_url`` says where to ask).
        """
        import asyncio

        from ray.job_submission import JobSubmissionClient

        client = await asyncio.to_thread(JobSubmissionClient, state.dashboard_url, headers=self.headers)
        async for chunk in client.tail_job_logs(state.job_id):
            for line in chunk.splitlines():
                yield line

    # -- async, for triggers ------------------------------------------------------------------

    def _async_http(self):
        """The dashboard's async HTTP client, shared in this event loop (see :func:`shared_client`)."""
        import httpx

        key = ("ray-dashboard", self.address, hash(self.connection.password))
        return shared_client(
            key, lambda: httpx.AsyncClient(base_url=self.address, headers=self.headers, timeout=30)
        )

    @asynccontextmanager
    async def job_reader(self) -> AsyncIterator[JobReader]:
        """An async function reading job states over one HTTP client, open for the block."""
        async with self._async_http() as http:

            async def read(job_id: str) -> RayJobState | None:
                response = await http.get(f"/api/jobs/{job_id}")
                if response.status_code == 404:
                    return None
                response.raise_for_status()
                return self._state(job_id, response.json())

            yield read

    async def astop_job(self, job_id: str) -> None:
        """
        Ask Ray to stop a job, without blocking the event loop.

        :param job_id: submission id.
        """
        async with self._async_http() as http:
            response = await http.post(f"/api/jobs/{job_id}/stop")
            if response.status_code != 404:
                response.raise_for_status()
