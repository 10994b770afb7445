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


def test_a_writer_slimming_its_body_does_not_hold_up_readers_of_other_writes():
    """The lock covers the bookkeeping only: a reader of a job written before is answered while
    another write's body is still being copied (slow under load: the copying thread can lose the GIL)."""
    import threading

    own = OwnWrites()
    own.wrote("1", body("2", "Pending", uid="u1"))
    copying, release = threading.Event(), threading.Event()

    class SlowStatus(dict):
        def get(self, key, default=None):  # slim_job reads the status: block there until the reader is done
            copying.set()
            release.wait(30)  # set by the test once the reader is done
            return super().get(key, default)

    slow = body("1", "Queued", uid="u2")
    slow["status"] = SlowStatus(slow["status"])
    writer = threading.Thread(target=own.wrote, args=("1", slow))
    writer.start()
    try:
        assert copying.wait(5)
        answered: list = []
        reader = threading.Thread(target=lambda: answered.append(own.latest("u1", body("1", "Queued"))))
        reader.start()
        reader.join(5)
        assert answered and answered[0]["status"]["phase"] == "Pending", "the reader waited for the writer's copy"
    finally:
        release.set()
        writer.join(5)
    assert own.latest("u2", body("1", "Queued", uid="u2"))["status"]["phase"] == "Queued"


def test_the_watchs_echo_of_a_write_shares_the_slim_copy_made_at_the_write():
    own = OwnWrites()
    own.wrote("1", body("2", "Pending"))
    kept = own.latest("u1", body("1", "Queued"))
    echo = body("2", "Pending")
    assert own.slimmed(echo) is kept  # not slimmed (its resolved spec re-encoded) a second time
    newer = own.slimmed(body("3", "Running"))  # another writer's version: slimmed as usual
    assert newer is not kept and newer["status"]["phase"] == "Running" and "managedFields" not in newer["metadata"]
    assert own.slimmed(body("1", "Queued", uid="u2"))["metadata"]["uid"] == "u2"
