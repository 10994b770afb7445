"""checkpoints.everySteps / previews.everySteps: checkpoints (with their validation loss) and previews
between epoch ends, under step-NNNNNNNN names that sort with the epoch ones and can be selected."""

from __future__ import annotations

import pytest

from lora_operator.api import CheckpointRecord, resolve_spec
from lora_operator.selection import checkpoint_names, choose

pytestmark = pytest.mark.trainer


def test_checkpoints_previews_and_validation_every_n_steps(train, tmp_path):
    recipe = train(training={"steps": 6, "epochs": 2}, dataset={"validationSplit": 0.34},
                   checkpoints={"everySteps": 2, "formats": ["kohya"]},
                   previews={"everyEpochs": 1, "everySteps": 4, "steps": 1})
    manifest = recipe.manifest.manifest
    records = [CheckpointRecord(name=c.name, epoch=c.epoch, step=c.step, uri=c.path, format=c.format,
                                validation_loss=c.validation_loss) for c in manifest.checkpoints]
    assert checkpoint_names(records) == ["step-00000002", "epoch-0001", "step-00000004", "epoch-0002"]
    assert [(r.step, r.epoch) for r in records if r.name.startswith("step-")] == [(2, 1), (4, 2)]
    assert all(r.validation_loss is not None for r in records)
    assert len({r.validation_loss for r in records}) == 4  # evaluated at each save, not copied
    out = recipe.outputs.workdir
    assert (out / "checkpoints/step-00000002").is_dir() and (out / "checkpoints/step-00000004").is_dir()
    steps = [p for p in manifest.previews if p.step is not None]
    assert [p.step for p in steps] == [4] and steps[0].grid == "previews/step-00000004/grid.png"
    assert sorted({p.epoch for p in manifest.previews if p.step is None}) == [1, 2]
    assert choose("step-00000004", records).name == "step-00000004"


def test_without_every_steps_only_epoch_ends_save(train):
    recipe = train(training={"steps": 6, "epochs": 2}, checkpoints={"formats": ["kohya"]})
    assert {c.name for c in recipe.manifest.manifest.checkpoints} == {"epoch-0001", "epoch-0002"}


def test_a_step_checkpoint_can_be_selected_by_name():
    spec = {"baseModel": {"family": "sd15", "uri": "hf://org/model"}, "dataset": {"uri": "s3://b/data"},
            "output": {"uri": "s3://b/out"}, "selectedCheckpoint": "step-00000150"}
    assert resolve_spec(spec).selected_checkpoint == "step-00000150"
    with pytest.raises(ValueError, match="selectedCheckpoint"):
        resolve_spec({**spec, "selectedCheckpoint": "step-150"})
