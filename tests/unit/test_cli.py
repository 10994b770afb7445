"""`lora-operator run`: kopf's per-event success lines stay out of the log unless --verbose, and
the garbage collector is tuned before kopf starts.

kopf.run is replaced: only the set-up before it is under test, and the real operator
process (with a real kopf.run) runs in tests/cluster. A real process's logger levels and
collector thresholds cannot be read from outside it, hence `main` in this process."""

from __future__ import annotations

import gc
import logging

import kopf
import pytest

from lora_operator import cli, heap


@pytest.fixture(autouse=True)
def collector():
    """`main` tunes this process's collector: put it back for the tests that follow."""
    before = gc.get_threshold()
    yield before
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.parametrize(("args", "level"), [((), logging.WARNING), (("--verbose",), logging.NOTSET)])
def test_kopfs_per_event_info_lines_are_quiet_unless_verbose(monkeypatch, args, level):
    monkeypatch.setattr(kopf, "run", lambda **kwargs: None)
    objects = logging.getLogger("kopf.objects")
    monkeypatch.setattr(objects, "level", logging.NOTSET)
    assert cli.main(["run", "--standalone", *args]) == 0
    assert objects.level == level


def test_run_tunes_the_collector_before_kopf_starts(monkeypatch, collector):
    seen = {}

    def run(**kwargs):
        seen["thresholds"], seen["frozen"] = gc.get_threshold(), gc.get_freeze_count()

    monkeypatch.setattr(kopf, "run", run)
    assert cli.main(["run", "--standalone"]) == 0
    assert seen["thresholds"] == heap.GC_THRESHOLDS != collector
    assert seen["frozen"] > 10_000  # the modules and classes imported so far sit out every collection
