"""`lora-operator run`: kopf's per-event success lines stay out of the log unless --verbose.

kopf.run is replaced: only the logging set-up before it is under test, and the real operator
process (with a real kopf.run) runs in tests/cluster."""

from __future__ import annotations

import logging

import kopf
import pytest

from lora_operator import cli


@pytest.mark.parametrize(("args", "level"), [((), logging.WARNING), (("--verbose",), logging.NOTSET)])
def test_kopfs_per_event_info_lines_are_quiet_unless_verbose(monkeypatch, args, level):
    monkeypatch.setattr(kopf, "run", lambda **kwargs: None)
    objects = logging.getLogger("kopf.objects")
    monkeypatch.setattr(objects, "level", logging.NOTSET)
    assert cli.main(["run", "--standalone", *args]) == 0
    assert objects.level == level
