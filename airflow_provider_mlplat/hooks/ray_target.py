"""Which Ray hook a ``ray`` connection names: the Job Submission API, or KubeRay RayJobs."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from airflow_provider_mlplat.hooks.kuberay import KubeRayHook
from airflow_provider_mlplat.hooks.ray import RayHook


def _hook_class(extra: dict[str, Any]) -> type[RayHook]:
    return KubeRayHook if extra.get("kubernetes_conn_id") else RayHook


def ray_job_hook(ray_conn_id: str) -> RayHook:
    """
    The hook for the target a ``ray`` connection names: :class:`RayHook` (Job Submission API) or,
    with a ``kubernetes_conn_id`` extra, :class:`~airflow_provider_mlplat.hooks.kuberay.KubeRayHook`.

    :param ray_conn_id: Airflow connection id of type ``ray``.
    """
    connection = RayHook.get_connection(ray_conn_id)
    hook = _hook_class(connection.extra_dejson)(ray_conn_id)
    hook.__dict__["connection"] = hook.checked(connection)
    return hook


async def aray_job_hook(ray_conn_id: str) -> RayHook:
    """
    :func:`ray_job_hook` for the event loop: reads the connection and imports the async client
    (the first time: ~0.5 s for the Kubernetes one) without blocking it.

    :param ray_conn_id: Airflow connection id of type ``ray``.
    """
    connection = await RayHook.aget_connection(ray_conn_id)
    cls = _hook_class(connection.extra_dejson)
    for module in cls.async_client_modules:
        await asyncio.to_thread(importlib.import_module, module)
    hook = cls(ray_conn_id)
    hook.__dict__["connection"] = hook.checked(connection)
    return hook


class RayConnectionHook(RayHook):
    """
    The hook of the ``ray`` connection type (connection form and test): tests the target the
    connection names, the Ray dashboard or KubeRay.

    :param ray_conn_id: Airflow connection id of type ``ray``.
    """

    def probe(self) -> str:
        """Probe the Job Submission API or, for a KubeRay connection, the RayJobs of its namespace."""
        return ray_job_hook(self.conn_id).probe()
