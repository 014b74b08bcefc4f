"""Kubernetes API refusals and outages in words: the verb, the resource, the namespace, who was refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatError, MLPlatServiceUnavailable


@contextmanager
def kubernetes_call(verb: str, resource: str, namespace: str, account: str) -> Iterator[None]:
    """
    Around a Kubernetes API call (sync or awaited): a 401/403 or a 5xx (after the client's retries)
    becomes one line naming the call, instead of the client's dump of headers and body. Other
    statuses (404, 409, 429) pass through for the caller to handle.

    :param verb: the API verb, e.g. ``create``, ``get``, ``patch``, ``delete``, ``list``.
    :param resource: ``<plural>.<group>``, e.g. ``rayjobs.ray.io``.
    :param namespace: the namespace of the call.
    :param account: who calls when the API does not say (e.g. ``kubernetes connection 'k8s'``).
    """
    try:
        yield
    except Exception as err:
        status = getattr(err, "status", None)
        # the sync and the asyncio client each have their ApiException (and subclasses per status)
        if not any(c.__name__ == "ApiException" for c in type(err).__mro__) or not isinstance(status, int):
            raise
        if status in (401, 403) or status >= 500:
            raise api_error(err, verb, resource, namespace, account) from None
        raise


def api_error(err: Exception, verb: str, resource: str, namespace: str, account: str) -> MLPlatError:
    """
    The error to raise for a refused or failed Kubernetes API call.

    :param err: the client's ``ApiException`` (``status``, ``reason``, ``body``).
    :param verb: the API verb.
    :param resource: ``<plural>.<group>``.
    :param namespace: the namespace of the call.
    :param account: who calls when the API's answer does not say.
    """
    status, reason = err.status, (getattr(err, "reason", None) or "").strip()
    try:
        message = json.loads(getattr(err, "body", None) or "{}").get("message") or ""
    except (ValueError, AttributeError):
        message = ""
    if status in (401, 403):
        user = re.search(r'User "([^"]+)"', message)
        who = f"service account {user.group(1)}" if user else account
        return MLPlatConfigError(
            f"the Kubernetes API refused to {verb} {resource} in namespace {namespace!r} for {who} "
            f"({status} {reason}): grant it '{verb}' on '{resource}' in that namespace"
        )
    detail = f": {message}" if message else ""
    return MLPlatServiceUnavailable(
        f"the Kubernetes API answered {status} {reason} to {verb} {resource} in namespace {namespace!r}{detail}"
    )
