"""The watch handlers hand jobs to a deduplicating queue instead of awaiting their reconcile.
(Events need no handler's context: they go through the Kubernetes adapter, test_k8s_adapter.py.)"""

from __future__ import annotations

import asyncio

from lora_operator.config import OperatorConfig
from lora_operator.controller import Controller
from lora_operator.metrics import OperatorMetrics
from lora_operator.own_writes import OwnWrites


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

