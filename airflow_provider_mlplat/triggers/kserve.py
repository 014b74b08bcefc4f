"""Deferrable wait for a KServe deployment step: ready, then optionally held ready for an analysis window."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class KServeInferenceServiceReadyTrigger(BaseTrigger):
    """
    Polls a rollout target until the state a step expects is ready, then keeps polling for
    ``hold_seconds`` (the analysis window) and fires once. Fires ``failed`` when the target reports
    a terminal failure or the deployment stops being ready during the hold, and ``timeout`` when it
    is not ready within ``timeout`` seconds. Waiting changes nothing on the target; nor does
    ``cleanup()`` (it runs on every triggerer restart). Only when a person kills the deferred task
    (mark failed, clear or mark success in Airflow 3.3 call :meth:`on_kill`) does it roll the
    rollout in ``carry`` back, as the operator would.

    :param target: rollout target settings (:meth:`KServeHook.target_config`, as a dict).
    :param name: deployment / InferenceService name.
    :param expect: what the step expects (an :class:`~airflow_provider_mlplat.hooks.kserve_target.Expectation`
        as a dict, from the target's ``stage``/``shift``/``promote``).
    :param timeout: seconds to wait for readiness.
    :param poll_interval: seconds between polls.
    :param hold_seconds: seconds the deployment must stay ready after it became ready.
    :param carry: state of the waiting task, returned unchanged in the event (``dag.test()`` resumes a
        task with the event alone, without the ``kwargs`` it deferred with).
    """

    def __init__(
        self,
        target: dict[str, Any],
        name: str,
        expect: dict[str, Any],
        timeout: float = 600,
        poll_interval: float = 5,
        hold_seconds: float = 0,
        carry: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.carry = carry or {}
        self.target, self.name, self.expect = target, name, expect
        self.timeout, self.poll_interval, self.hold_seconds = timeout, poll_interval, hold_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Classpath and keyword arguments."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "target": self.target,
                "name": self.name,
                "expect": self.expect,
                "timeout": self.timeout,
                "poll_interval": self.poll_interval,
                "hold_seconds": self.hold_seconds,
                "carry": self.carry,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll without blocking the event loop; yield one event."""
        from airflow_provider_mlplat.hooks.kserve import make_target
        from airflow_provider_mlplat.hooks.kserve_target import Expectation

        target, expect = make_target(self.target), Expectation.from_dict(self.expect)
        started = time.monotonic()
        ready_since: float | None = None
        ready_at = 0.0  # wall clock, for the analysis window's queries
        while True:
            state, detail = await target.readiness(self.name, expect)
            now = time.monotonic()
            event = {
                "name": self.name,
                "expect": self.expect,
                "detail": detail,
                "carry": self.carry,
                "waited": round(now - started, 1),
            }
            if state == "failed":
                yield TriggerEvent({**event, "status": "failed"})
                return
            if state == "ready":
                if ready_since is None:
                    ready_since, ready_at = now, time.time()
                if now - ready_since >= self.hold_seconds:
                    held = round(now - ready_since, 1)
                    yield TriggerEvent({**event, "status": "ready", "ready_at": ready_at, "held": held})
                    return
                wait = min(self.poll_interval, self.hold_seconds - (now - ready_since))
            elif ready_since is not None:
                yield TriggerEvent({**event, "status": "failed", "detail": f"stopped being ready: {detail}"})
                return
            elif now - started >= self.timeout:
                yield TriggerEvent(
                    {
                        **event,
                        "status": "timeout",
                        "detail": f"not ready after {self.timeout:.0f} s: {detail}",
                    }
                )
                return
            else:
                wait = min(self.poll_interval, self.timeout - (now - started))
            self.log.info("%s: %s (%s)", self.name, state, detail)
            await asyncio.sleep(max(wait, 0.05))

    async def on_kill(self) -> None:
        """The task was killed while waiting here: roll the rollout back (traffic, alias, record) once."""
        from airflow_provider_mlplat.hooks.kserve_target import RolloutPlan
        from airflow_provider_mlplat.rollback import roll_back

        if not self.carry.get("plan"):
            return
        plan = RolloutPlan.from_dict(self.carry["plan"])
        reason = f"the task was killed while the rollout waited in phase {self.carry.get('phase')!r}"
        message, _ = await asyncio.to_thread(roll_back, plan, reason)  # sync clients: off the event loop
        self.log.warning(message)
