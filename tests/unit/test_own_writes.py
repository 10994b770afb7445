"""Read-your-own-writes: the body a status write returned stands in for the index's older one
until the watch brings that version (or a newer one written by someone else)."""

from __future__ import annotations

from lora_operator.own_writes import OwnWrites


def body(rv: str, phase: str, uid: str = "u1") -> dict:
    return {"metadata": {"uid": uid, "name": "job", "namespace": "ns", "resourceVersion": rv,
                         "managedFields": [{"manager": "x"}]},
            "spec": {}, "status": {"phase": phase}}


def test_the_written_body_stands_in_while_the_index_still_shows_the_version_it_replaced():
    own = OwnWrites()
    own.wrote("1", body("2", "Pending"))
    latest = own.latest("u1", body("1", "Queued"))
    assert latest["status"]["phase"] == "Pending"
    assert "managedFields" not in latest["metadata"]  # kept slim, like the index


def test_a_chain_of_writes_ahead_of_the_watch_answers_with_the_last_one():
    own = OwnWrites()
    own.wrote("1", body("2", "Pending"))
    own.wrote("2", body("3", "Running"))
    assert own.latest("u1", body("1", "Queued"))["status"]["phase"] == "Running"
    assert own.latest("u1", body("2", "Pending"))["status"]["phase"] == "Running"


def test_the_index_wins_once_it_shows_that_version_or_another_writers_newer_one():
    own = OwnWrites()
    own.wrote("1", body("2", "Pending"))
    assert own.latest("u1", body("2", "Pending"))["metadata"]["resourceVersion"] == "2"
    assert len(own) == 0
    own.wrote("2", body("3", "Running"))
    someone_else = body("7", "Suspended")
    assert own.latest("u1", someone_else) is someone_else
    assert own.latest("u1", body("2", "Pending"))["metadata"]["resourceVersion"] == "2"  # forgotten


def test_a_deleted_job_is_not_brought_back():
    own = OwnWrites()
    own.wrote("1", body("2", "Pending"))
    assert own.latest("u1", None) is None
    assert len(own) == 0


def test_other_jobs_are_untouched():
    own = OwnWrites()
    own.wrote("1", body("2", "Pending", uid="u1"))
    other = body("1", "Queued", uid="u2")
    assert own.latest("u2", other) is other
