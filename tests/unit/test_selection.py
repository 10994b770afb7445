"""selectedCheckpoint (a name or auto) and deleteUnselected: what the operator keeps, and when a
finished job still needs it done. The storage side runs on the real ground
(tests/cluster/test_checkpoint_selection.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lora_operator.api import JobSpec
from lora_operator.api.status import CheckpointRecord
from lora_operator.controller import needs_following
from lora_operator.selection import choose, selection_pending, unselected

SPEC = {"baseModel": {"family": "sd15", "uri": "s3://m/"}, "dataset": {"uri": "s3://d/"},
        "output": {"uri": "s3://o/"}}


def ck(epoch: int, loss: float | None, fmt: str = "kohya") -> CheckpointRecord:
    name = f"epoch-{epoch:04d}"
    return CheckpointRecord(name=name, epoch=epoch, step=epoch, uri=f"s3://o/{name}", format=fmt, validation_loss=loss)


def test_final_can_never_be_selected_and_auto_can():
    with pytest.raises(ValidationError, match="selected_checkpoint|selectedCheckpoint"):
        JobSpec.model_validate({**SPEC, "selectedCheckpoint": "final"})
    spec = JobSpec.model_validate({**SPEC, "selectedCheckpoint": "auto", "deleteUnselected": True})
    assert spec.selected_checkpoint == "auto" and spec.delete_unselected is True


def test_auto_picks_the_lowest_validation_loss_and_says_so():
    records = [ck(1, 0.30), ck(1, None, "diffusers"), ck(2, 0.08), ck(3, 0.12)]
    choice = choose("auto", records)
    assert choice.name == "epoch-0002"
    assert choice.why == "auto: epoch-0002 has the lowest validation loss (0.0800)"


def test_auto_without_losses_takes_the_last_and_says_why():
    choice = choose("auto", [ck(2, None), ck(1, None)])
    assert choice.name == "epoch-0002" and "no validation loss was recorded" in choice.why
    with pytest.raises(ValueError, match="spec.selectedCheckpoint: auto: the job has no checkpoints"):
        choose("auto", [])


def test_a_named_checkpoint_is_taken_as_named():
    assert choose("epoch-0001", [ck(1, 0.5), ck(2, 0.1)]).name == "epoch-0001"
    assert choose("epoch-0007", []).name == "epoch-0007"  # nothing listed: storage decides
    with pytest.raises(ValueError, match=r"no checkpoint epoch-0007 \(checkpoints: epoch-0001, epoch-0002\)"):
        choose("epoch-0007", [ck(1, 0.5), ck(2, 0.1)])
    assert unselected([ck(1, 0.5), ck(1, None, "diffusers"), ck(2, 0.1), ck(3, None)], "epoch-0002") == [
        "epoch-0001", "epoch-0003"]


@pytest.mark.parametrize(("spec", "status", "pending"), [
    ({}, {}, False),
    ({"selectedCheckpoint": "epoch-0001"}, {}, True),
    ({"selectedCheckpoint": "epoch-0001"}, {"output": {"checkpoint": "epoch-0001"}}, False),
    ({"selectedCheckpoint": "epoch-0002"}, {"output": {"checkpoint": "epoch-0001"}}, True),
    ({"selectedCheckpoint": "auto"}, {"output": {"checkpoint": "epoch-0001", "selection": "epoch-0001: named"}}, True),
    ({"selectedCheckpoint": "auto"}, {"output": {"checkpoint": "epoch-0001", "selection": "auto: epoch-0001 ..."}},
     False),
    # deleteUnselected set after the selection was carried out: pending until only the kept one is listed
    ({"selectedCheckpoint": "epoch-0001", "deleteUnselected": True},
     {"output": {"checkpoint": "epoch-0001"}, "checkpoints": [{"name": "epoch-0001"}, {"name": "epoch-0002"}]}, True),
    ({"selectedCheckpoint": "epoch-0001", "deleteUnselected": True},
     {"output": {"checkpoint": "epoch-0001"}, "checkpoints": [{"name": "epoch-0001"}]}, False),
])
def test_a_selection_is_pending_until_carried_out(spec, status, pending):
    assert selection_pending(spec, status) is pending
    assert needs_following({"phase": "Succeeded", **status}, spec) is pending
    assert needs_following({"phase": "Cancelled", **status}, spec) is pending
    assert needs_following({"phase": "Failed", **status}, spec) is False  # a failed job has nothing to select
