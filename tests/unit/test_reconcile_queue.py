"""The watch handlers hand jobs to a deduplicating queue instead of awaiting their reconcile, and
the controller's own tasks run reconciles in a handler's context (kopf's event poster)."""

from __future__ import annotations

import asyncio
import contextvars

from lora_operator.config import OperatorConfig
from lora_operator.controller import Controller
from lora_operator.metrics import OperatorMetrics
from lora_operator.own_writes import OwnWrites

POSTER: contextvars.ContextVar[str] = contextvars.ContextVar("poster")
"""Stands in for kopf's event-queue context variables (set only inside kopf's per-object tasks)."""


class Kube:
    own_writes = OwnWrites()


def controller() -> Controller:
    return Controller(Kube(), OperatorConfig(), OperatorMetrics(), lambda *a: None)


def test_a_job_queued_again_while_waiting_is_reconciled_once_and_again_after_a_later_event():
    async def scenario() -> list[str]:
        c = controller()
        done: list[str] = []
        gate = asyncio.Event()

        async def reconcile(uid: str, *, progress: bool = False) -> None:
            done.append(uid)
            if uid == "a" and done.count("a") == 1:
                await gate.wait()  # "a" is being reconciled: a new event must queue it again

        c.reconcile = reconcile  # type: ignore[method-assign]
        for uid in ("a", "b", "b", "b", "c"):
            c.enqueue(uid)
        workers = asyncio.create_task(c.reconcile_workers(count=2))
        await asyncio.sleep(0.05)
        c.enqueue("a")
        c.enqueue("a")
        gate.set()
        await asyncio.sleep(0.05)
        workers.cancel()
        return done

    done = asyncio.run(scenario())
    assert sorted(done) == ["a", "a", "b", "c"], done


def test_a_failing_reconcile_does_not_stop_the_workers():
    async def scenario() -> list[str]:
        c = controller()
        done: list[str] = []

        async def reconcile(uid: str, *, progress: bool = False) -> None:
            done.append(uid)
            raise RuntimeError("API server down")

        c.reconcile = reconcile  # type: ignore[method-assign]
        workers = asyncio.create_task(c.reconcile_workers(count=1))
        for uid in ("a", "b"):
            c.enqueue(uid)
        await asyncio.sleep(0.05)
        workers.cancel()
        return done

    assert asyncio.run(scenario()) == ["a", "b"]


def test_work_on_threads_sees_the_handler_context_even_from_the_controllers_own_tasks():
    async def scenario() -> str:
        c = controller()

        async def handler() -> None:  # kopf's per-object task: the poster is set there
            POSTER.set("kopf's event queue")
            c.bind({}, {}, {})

        await asyncio.create_task(handler())
        return await asyncio.create_task(c._on_thread(POSTER.get))  # a task that never had it

    assert asyncio.run(scenario()) == "kopf's event queue"
