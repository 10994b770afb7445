"""The reservations overlay: a pod the admitter just created holds its node until the watch shows that pod."""

from __future__ import annotations

import time

from lora_operator.reservations import Reservations


def admitter_with(node: str, namespace: str, pod: str, expires_in: float = 60.0) -> Reservations:
    admitter = Reservations()
    admitter.recent[node] = ((namespace, pod), "uid-a", time.monotonic() + expires_in)
    return admitter


def test_a_created_pod_the_watch_does_not_show_yet_holds_its_node():
    admitter = admitter_with("gpu-1", "team-a", "job-a-attempt-1")
    held = admitter.held()
    assert [(p.node, p.active, p.job_uid, p.namespace) for p in held] == [("gpu-1", True, "uid-a", "team-a")]


def test_any_event_of_the_pod_releases_its_entry_without_a_pass_seeing_the_pod():
    # The pod ran, ended and was deleted while a pass ran: no pass's snapshot ever held it.
    admitter = admitter_with("gpu-1", "team-a", "job-a-attempt-1")
    admitter.pod_seen("team-a", "job-a-attempt-1")
    assert admitter.held() == []
    assert admitter.recent == {}


def test_a_same_named_pod_in_another_namespace_does_not_release_the_entry():
    admitter = admitter_with("gpu-1", "team-a", "job-a-attempt-1")
    admitter.pod_seen("team-b", "job-a-attempt-1")
    assert [p.node for p in admitter.held()] == ["gpu-1"]


def test_an_entry_expires():
    admitter = admitter_with("gpu-1", "team-a", "job-a-attempt-1", expires_in=-1.0)
    assert admitter.held() == []
