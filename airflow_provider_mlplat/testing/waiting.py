"""Wait until something holds, with a deadline: tests look when it happened, not after a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 20.0,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.25,
) -> T:
    """
    Call ``predicate`` until it returns a truthy value, and return that value; fail the test when
    ``timeout`` seconds pass first, naming ``what`` (a callable: called then, to say what is missing).
    In a coroutine: ``await asyncio.to_thread(wait_for, ...)``.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, (
            f"timed out after {timeout:g} s waiting for {what if isinstance(what, str) else what()}"
        )
        time.sleep(interval)
    return value
