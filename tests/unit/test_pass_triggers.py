"""What asks for a scheduling pass: a pod's end frees its node once (not on each event that
follows it), and a job event only when a waiting job is new or its scheduling view changed;
and what a pass reads: the views the job events left, fresher ones where this process wrote; the
jobs-by-phase gauge reads the same views when scraped.

These are the controller's in-memory decisions: no API call is made, and the stand-in Kube only
lets the Controller be built. The same paths run against the real control plane in
tests/cluster/test_operator.py (pods end, nodes free, jobs queue and drain in order)."""

from __future__ import annotations

from test_admission_pass import FakeKube, job_body

from lora_operator.config import OperatorConfig
from lora_operator.controller import Controller
from lora_operator.metrics import OperatorMetrics


def controller(bodies: dict | None = None) -> Controller:
    c = Controller(FakeKube(bodies or {}), OperatorConfig(), OperatorMetrics(), lambda *a: None)
    c.bind({}, {}, {})
    return c


def pod(phase: str, deleting: bool = False) -> dict:
    meta = {"name": "a-a1", "namespace": "ns", "labels": {"lora-operator.io/job-uid": "uid-a"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:09Z"
    return {"metadata": meta, "spec": {"nodeName": "gpu-0"}, "status": {"phase": phase}}


def kicked(c: Controller) -> bool:
    was = c._kicked.is_set()
    c._kicked.clear()
    return was


def test_a_pods_end_asks_for_one_pass_and_the_events_after_it_for_none():
    c = controller()
    c.pod_changed(pod("Running"), deleted=False)
    assert not kicked(c)
    c.pod_changed(pod("Succeeded"), deleted=False)
    assert kicked(c)
    freed = c.admitter.claims.node_freed["gpu-0"]
    c.pod_changed(pod("Succeeded", deleting=True), deleted=False)  # the operator deleted it
    c.pod_changed(pod("Succeeded", deleting=True), deleted=True)
    assert not kicked(c)
    assert c.admitter.claims.node_freed["gpu-0"] == freed  # latency counts from the end, not the deletion


def test_a_pod_deleted_while_active_frees_its_node():
    c = controller()
    c.pod_changed(pod("Running", deleting=True), deleted=False)  # terminating: still holds its node
    assert not kicked(c)
    c.pod_changed(pod("Running", deleting=True), deleted=True)
    assert kicked(c)
    assert "gpu-0" in c.admitter.claims.node_freed


def test_every_pod_event_takes_the_pod_out_of_the_admitters_overlay():
    c = controller()
    c.admitter.reservations.recent["gpu-0"] = (("ns", "a-a1"), "uid-a", float("inf"))
    c.pod_changed(pod("Pending"), deleted=False)
    assert c.admitter.reservations.held() == []


def test_job_events_ask_for_a_pass_only_when_a_waiting_jobs_view_is_new_or_changed():
    body = job_body("a")
    bodies = {"uid-a": body}
    c = controller()
    c.bind(bodies, {}, {})

    def changes(rv: str, spec: dict | None = None, **status) -> bool:
        old = bodies["uid-a"]
        bodies["uid-a"] = {**old, "metadata": {**old["metadata"], "resourceVersion": rv},
                          "spec": spec or old["spec"], "status": {**old["status"], **status}}
        return c.job_event("uid-a")

    assert c.job_event("uid-a")  # a new waiting job
    assert not changes("2", queuePosition=3)  # only its position moved
    assert changes("3", spec={"priority": 10})  # it ranks differently now
    assert not changes("4", spec={"priority": 10, "suspend": True})  # it left the queue: no node frees
    del bodies["uid-a"]
    assert not c.job_event("uid-a")


def two_jobs() -> tuple[Controller, dict, dict]:
    """A controller over jobs a and b (both Queued); only a's event was handled yet."""
    a, b = job_body("a"), job_body("b")
    index = {"uid-a": a, "uid-b": b}
    c = controller()
    c.bind(index, {}, {})
    c.job_event("uid-a")
    return c, index, a


def test_a_pass_reads_the_views_job_events_left_and_this_processs_own_newer_writes():
    c, _, a = two_jobs()
    assert set(c.all_entries()) == {"uid-a"}  # b's event has not been handled yet
    c.job_event("uid-b")
    claimed = {**a, "metadata": {**a["metadata"], "resourceVersion": "2"},
               "status": {**a["status"], "phase": "Admitted", "conditions": [
                   {"type": "Admitted", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}]}}
    c.own_writes.wrote("1", claimed)  # a claim whose watch event is still on its way
    entries = c.all_entries()
    assert entries["uid-a"].queued is None and entries["uid-b"].queued is not None


def test_prune_drops_the_views_of_jobs_gone_from_the_index():
    index = {"uid-a": job_body("a")}
    c = controller()
    c.bind(index, {}, {})
    c.job_event("uid-a")
    del index["uid-a"]  # gone without a DELETED event reaching the handler
    assert set(c.all_entries()) == {"uid-a"}
    c.prune()
    assert c.all_entries() == {}


def test_the_jobs_by_phase_gauge_reads_the_views_at_scrape_time_not_at_each_pass():
    c, index, a = two_jobs()
    c.job_event("uid-b")
    scrape = c.metrics.registry.get_sample_value
    assert scrape("lora_operator_jobs", {"phase": "Queued"}) == 2
    index["uid-a"] = {**a, "metadata": {**a["metadata"], "resourceVersion": "2"},
                      "status": {**a["status"], "phase": "Running"}}
    c.job_event("uid-a")  # no pass ran in between
    assert scrape("lora_operator_jobs", {"phase": "Queued"}) == 1
    assert scrape("lora_operator_jobs", {"phase": "Running"}) == 1
    assert scrape("lora_operator_jobs", {"phase": "Succeeded"}) == 0


def test_a_kick_after_a_quiet_spell_passes_at_once_and_kicks_within_the_window_make_one_pass(monkeypatch):
    """The burst window is measured from the last pass: the first kick does not wait it out, the
    kicks right after a pass wait for its end and then make one pass together. (A wide window,
    2 s, so the order of events, not the machine's speed, decides the outcome.)

    The pass itself is replaced by a counter: what is tested is when the loop runs it. What a
    real pass does, on the real control plane, is in tests/cluster/test_operator.py, where pods
    end and the next jobs start on the freed nodes."""
    import asyncio
    from types import SimpleNamespace

    from lora_operator import controller as controller_module

    monkeypatch.setattr(controller_module, "BURST_SECONDS", 2.0)
    c = controller()
    passes = []
    c.run_pass = lambda: passes.append(1) or SimpleNamespace(next_wakeup=None)

    async def scenario():
        task = asyncio.create_task(c._schedule_forever())
        await asyncio.sleep(0.05)
        assert passes == []  # no kick yet (the idle pass is 5 s away)
        c.kick()
        await asyncio.sleep(0.5)
        first = len(passes)  # a pass that waited the 2 s window first would not have run yet
        for _ in range(3):
            c.kick()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        within_window = len(passes)
        while len(passes) < 2:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        task.cancel()
        return first, within_window, len(passes)

    assert asyncio.run(scenario()) == (1, 1, 2)


def test_burst_wait_is_the_rest_of_the_window():
    from lora_operator.controller import BURST_SECONDS, burst_wait

    assert burst_wait(10.0) == 0.0
    assert burst_wait(BURST_SECONDS) == 0.0
    assert burst_wait(0.0) == BURST_SECONDS
    assert 0 < burst_wait(BURST_SECONDS / 2) < BURST_SECONDS


def kwok_node(heartbeat: str, *, ready: str = "True", unschedulable: bool = False) -> dict:
    conditions = [{"type": t, "status": ready if t == "Ready" else "False", "lastHeartbeatTime": heartbeat,
                   "lastTransitionTime": "2026-01-01T00:00:00Z"} for t in ("Ready", "MemoryPressure", "DiskPressure")]
    return {"metadata": {"name": "gpu-0", "labels": {"gpu-type": "a100"}, "resourceVersion": heartbeat},
            "spec": {"unschedulable": unschedulable},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": conditions}}


def test_a_node_heartbeat_asks_for_no_pass_and_a_change_of_its_scheduling_view_does():
    """With 1000 kwok nodes the node watch carries about 24 status PATCHes a second (10000-job run,
    bench/RESULTS.md): a heartbeat moves only the conditions' timestamps and must not cost a pass."""
    from lora_operator.views import gpu_node

    c = controller()
    nodes: dict = {}
    c.bind({}, {}, nodes)

    def event(body: dict) -> bool:  # what kopf's node index and the node handler do per event
        nodes["gpu-0"] = [gpu_node(body, "nvidia.com/gpu")]
        return c.node_event("gpu-0")

    assert event(kwok_node("2026-01-01T00:00:10Z"))  # first seen
    assert not event(kwok_node("2026-01-01T00:00:20Z"))
    assert not event(kwok_node("2026-01-01T00:00:30Z"))
    assert event(kwok_node("2026-01-01T00:00:40Z", ready="False"))
    assert event(kwok_node("2026-01-01T00:00:50Z", ready="False", unschedulable=True))
    assert not event(kwok_node("2026-01-01T00:01:00Z", ready="False", unschedulable=True))
