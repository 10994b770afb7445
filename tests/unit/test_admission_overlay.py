"""The admitter's overlay: a pod it just created holds its node until the watch shows that pod."""

from __future__ import annotations

import time

from lora_operator.admission import Admitter
from lora_operator.scheduling import TrainerPod


def admitter_with(node: str, namespace: str, pod: str, expires_in: float = 60.0) -> Admitter:
    admitter = Admitter(kube=None, config=None, metrics=None, emit=None, lifecycle=None)  # overlay needs none
    admitter.recent[node] = ((namespace, pod), "uid-a", time.monotonic() + expires_in)
    return admitter


def test_a_created_pod_the_watch_does_not_show_yet_holds_its_node():
    admitter = admitter_with("gpu-1", "team-a", "job-a-attempt-1")
    pods = admitter.overlay([])
    assert [(p.node, p.active, p.job_uid) for p in pods] == [("gpu-1", True, "uid-a")]


def test_a_pod_that_already_ended_when_the_watch_first_shows_it_frees_its_node():
    # The pod ran and finished between two passes: the watch never showed it active.
    admitter = admitter_with("gpu-1", "team-a", "job-a-attempt-1")
    ended = TrainerPod(name="job-a-attempt-1", node="gpu-1", job_uid="uid-a", active=False, namespace="team-a")
    pods = admitter.overlay([ended])
    assert pods == [ended]
    assert admitter.recent == {}


def test_a_same_named_pod_in_another_namespace_does_not_release_the_entry():
    admitter = admitter_with("gpu-1", "team-a", "job-a-attempt-1")
    other = TrainerPod(name="job-a-attempt-1", node="gpu-2", job_uid="uid-b", active=False, namespace="team-b")
    pods = admitter.overlay([other])
    assert {(p.node, p.active) for p in pods} == {("gpu-2", False), ("gpu-1", True)}


def test_an_entry_expires():
    admitter = admitter_with("gpu-1", "team-a", "job-a-attempt-1", expires_in=-1.0)
    assert admitter.overlay([]) == []
