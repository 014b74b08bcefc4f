"""Health checks of the containers, standard library only (and celery for a Celery worker)."""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
from pathlib import Path


def http(url: str, token_env: str = "", component: str = "") -> None:
    """
    The URL answers 200; with ``component``, its JSON health report calls that component healthy.

    :param url: what to ask.
    :param token_env: environment variable holding a bearer token to send (Ray's dashboard).
    :param component: key of Airflow's health report that must be ``healthy``.
    """
    request = urllib.request.Request(url)
    if token_env:
        request.add_header("Authorization", f"Bearer {os.environ[token_env]}")
    with urllib.request.urlopen(request, timeout=8) as response:
        body = response.read()
    if component and json.loads(body)[component]["status"] != "healthy":
        sys.exit(f"{component} is not healthy")


def process(name: str) -> None:
    """
    A process with this name runs in the container (a Ray worker node's raylet).

    :param name: process name, as in ``/proc/<pid>/comm``.
    """
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                return
        except OSError:
            continue
    sys.exit(f"no {name} process")


def celery_worker() -> None:
    """This container's Celery worker answers a ping through the broker."""
    from celery import Celery

    app = Celery(broker=os.environ["AIRFLOW__CELERY__BROKER_URL"])
    me = f"celery@{socket.gethostname()}"
    if not app.control.ping(destination=[me], timeout=5):
        sys.exit(f"{me} did not answer")


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    {"http": http, "process": process, "celery": celery_worker}[kind](*args)
