"""training.earlyStop ends training when the validation loss stops improving, keeps a checkpoint per
evaluation, and says why in the manifest (the operator's StoppedEarly reason)."""

from __future__ import annotations

import pytest

from lora_operator.api import CheckpointRecord, EarlyStop
from lora_operator.selection import choose
from lora_trainer.earlystop import EarlyStopper
from lora_trainer.errors import ConfigError

pytestmark = pytest.mark.trainer

RUN = {"training": {"steps": 8, "epochs": 4}, "dataset": {"validationSplit": 0.34},
       "checkpoints": {"everyEpochs": 2, "formats": ["kohya"]}}


def test_training_stops_when_the_validation_loss_stops_improving(train):
    # minDelta 100: no later loss counts as better than the first, so patience 2 ends at the third evaluation.
    stop = {"earlyStop": {"patience": 2, "minDelta": 100.0}}
    recipe = train(**{**RUN, "training": {**RUN["training"], **stop}})
    manifest = recipe.manifest.manifest
    assert recipe.progress.report.step == 6
    assert manifest.finished and manifest.stopped_early.startswith("stopped early: no better validation loss in 2")
    assert "at epoch-0001" in manifest.stopped_early
    # everyEpochs 2 would skip epochs 1 and 3: each evaluation keeps its checkpoint when stopping early
    assert [c.name for c in manifest.checkpoints] == ["epoch-0001", "epoch-0002", "epoch-0003"]
    records = [CheckpointRecord(name=c.name, epoch=c.epoch, step=c.step, uri=c.path, format=c.format,
                                validation_loss=c.validation_loss) for c in manifest.checkpoints]
    best = min(records, key=lambda r: r.validation_loss).name
    assert choose("auto", records).name == best


def test_without_early_stop_the_run_goes_to_its_last_step(train):
    recipe = train(**RUN)
    manifest = recipe.manifest.manifest
    assert recipe.progress.report.step == 8 and manifest.stopped_early is None
    assert [c.name for c in manifest.checkpoints] == ["epoch-0002", "epoch-0004"]


def test_the_stopper_counts_evaluations_since_the_best():
    stopper = EarlyStopper(EarlyStop(patience=2, min_delta=0.01), has_validation=True)
    assert stopper.update(1.0, "epoch-0001") is None
    assert stopper.update(0.995, "epoch-0002") is None  # within minDelta: not better
    assert stopper.update(0.5, "step-00000300") is None  # better: the count starts again
    assert stopper.update(0.6, "epoch-0003") is None
    assert "best 0.5000 at step-00000300" in stopper.update(0.7, "epoch-0004")
    assert EarlyStopper(EarlyStop(), has_validation=True).update(9.0, "epoch-0001") is None


def test_early_stop_needs_validation_images():
    with pytest.raises(ConfigError, match=r"training\.earlyStop\.patience: needs validation images"):
        EarlyStopper(EarlyStop(patience=1), has_validation=False)
    EarlyStopper(EarlyStop(), has_validation=False)
