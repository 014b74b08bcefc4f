"""Deferrable wait for a Ray job, on a Ray cluster or as a KubeRay RayJob."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_mlplat.hooks.ray import RayHook, RayJobState
from airflow_provider_mlplat.hooks.ray_target import aray_job_hook

#: consecutive failed status reads (API down, 5xx, timeouts) after which the wait gives up
MAX_READ_ERRORS = 5


def _event(kind: str, job_id: str, state: RayJobState | None = None, message: str = "") -> dict[str, Any]:
    return {"event": kind, "job_id": job_id, "state": state.to_dict() if state else None, "message": message}


async def wait_for_job(
    hook: RayHook,
    job_id: str,
    poll_interval: float,
    startup_timeout: float,
    on_state: Callable[[RayJobState], None] | None = None,
) -> dict[str, Any]:
    """
    Poll a job until it ends, stays pending past the startup timeout, or disappears; return the
    event payload (``event``: ``finished``, ``startup_timeout``, ``missing`` or ``error``).

    :param hook: the target's hook (:class:`RayHook` or ``KubeRayHook``).
    :param job_id: submission id / RayJob name.
    :param poll_interval: seconds between status reads.
    :param startup_timeout: seconds after submission a job may stay pending (e.g. Initializing).
    :param on_state: called with every state read.
    """
    errors = 0
    async with hook.job_reader() as read:
        while True:
            try:
                state = await read(job_id)
                errors = 0
            except Exception as err:  # a transient API failure must not end a long wait at once
                errors += 1
                hook.log.warning("reading Ray job %s failed (%d in a row): %s", job_id, errors, err)
                if errors >= MAX_READ_ERRORS:
                    return _event("error", job_id, message=f"{type(err).__name__}: {err}")
                await asyncio.sleep(poll_interval)
                continue
            if state is None:
                return _event("missing", job_id, message=f"{hook.target} has no job {job_id!r} (deleted?)")
            if on_state is not None:
                on_state(state)
            if state.terminal:
                return _event("finished", job_id, state)
            waited = time.time() - state.created_at
            if state.status == "PENDING" and waited > startup_timeout:
                return _event(
                    "startup_timeout",
                    job_id,
                    state,
                    f"still pending {waited:.0f} s after submission (startup_timeout={startup_timeout:g} s)",
                )
            # +-25% jitter: triggers started together (a triggerer restart) must not poll in lockstep
            await asyncio.sleep(poll_interval * random.uniform(0.75, 1.25))


class RayJobTrigger(BaseTrigger):
    """
    Waits for a Ray job without blocking the triggerer: async HTTP to the Ray dashboard, or the async
    Kubernetes client reading a RayJob's ``status`` (``jobDeploymentStatus``, ``jobStatus``,
    ``reason``, ``message``). Fires once: the job ended, stayed pending past ``startup_timeout``,
    vanished, or could not be read. Never deletes anything when it is cleaned up; :meth:`on_kill`
    (a user marked the deferred task failed or cleared it) stops the job.

    :param job_id: submission id (the RayJob name on KubeRay).
    :param ray_conn_id: the ``ray`` connection the job was submitted through.
    :param poll_interval: seconds between status reads.
    :param startup_timeout: seconds after submission a job may stay pending.
    """

    def __init__(
        self,
        job_id: str,
        ray_conn_id: str = RayHook.default_conn_name,
        poll_interval: float = 5.0,
        startup_timeout: float = 900.0,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.startup_timeout = startup_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and arguments to rebuild the trigger (e.g. after a triggerer restart)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "ray_conn_id": self.ray_conn_id,
                "poll_interval": self.poll_interval,
                "startup_timeout": self.startup_timeout,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll the job's status until there is something to report."""
        # spread the start of triggers that a (re)started triggerer launches all at once
        await asyncio.sleep(random.uniform(0, min(self.poll_interval, 1.0)))
        hook = await aray_job_hook(self.ray_conn_id)
        yield TriggerEvent(await wait_for_job(hook, self.job_id, self.poll_interval, self.startup_timeout))

    async def on_kill(self) -> None:
        """The user acted on the deferred task: stop the Ray job / delete the RayJob."""
        hook = await aray_job_hook(self.ray_conn_id)
        self.log.info("stopping %s job %s", hook.target, self.job_id)
        await hook.astop_job(self.job_id)
