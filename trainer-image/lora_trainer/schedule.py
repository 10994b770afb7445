"""How many steps a run takes, how they split into epochs, and which samples each micro-batch holds.

Epochs are equal slices of the optimizer steps (the last may be shorter): with
``steps: auto`` and the tensorart preset one epoch is exactly one pass over the
data; with an explicit or scenario step count an epoch may hold more or less than
one pass. Data passes run on independently of epochs, each shuffled from
``(seed, pass)``, so micro-batch *n* is the same in a fresh and a resumed run.

With N workers (GPUs) the run is data parallel: optimizer step *s* takes micro-batches
``((s-1) x accumulation + k) x N + rank``, so the workers together walk through the data
passes once, and an auto step count is divided by N (global batch = batch x accumulation x N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lora_operator.api import ModelFamily, Training, epoch_steps, scenario_formula, scenario_steps

from .data import Sample, epoch_order, make_batches


def total_steps(training: Training, family: ModelFamily, samples: list[Sample], world: int = 1,
                regularization: list[Sample] | None = None) -> int:
    """Optimizer steps of the run: `training.steps`, or the preset formula when it is auto.

    Args:
        training: The hyperparameters.
        family: The base model family (the scenario preset depends on it).
        samples: The training samples (not regularization, not validation).
        world: Workers training data-parallel (GPUs); auto steps are divided by it.
        regularization: Class images; the tensorart preset counts their draws (they share each pass).
    """
    return count_steps(training, family, samples, world, regularization)[0]


def count_steps(training: Training, family: ModelFamily, samples: list[Sample], world: int = 1,
                regularization: list[Sample] | None = None) -> tuple[int, str]:
    """`total_steps` and how they were counted, in words (the printed plan, progress.json).

    Returns:
        ``(steps, text)``, e.g. ``(30, "6 images x 10 repeats x 2 epochs / batch 4 = 30 steps")``.
    """
    images, draws = len(samples), sum(s.repeats for s in samples)
    repeats = {s.repeats for s in samples}
    pass_text = (f"{images} images x {repeats.pop()} repeats" if len(repeats) == 1
                 else f"{images} images ({draws} draws with repeats.json)")
    if regularization:  # class images are drawn in every pass too
        class_draws = sum(s.repeats for s in regularization)
        extra = f" ({class_draws} draws)" if class_draws != len(regularization) else ""
        draws += class_draws
        pass_text = f"({pass_text} + {len(regularization)} class images{extra})"
    divisor = [f"batch {training.batch_size}"]
    if training.gradient_accumulation > 1:
        divisor.append(f"accumulation {training.gradient_accumulation}")
    if world > 1:
        divisor.append(f"{world} GPUs")
    per_step = training.batch_size * training.gradient_accumulation * world
    if training.steps != "auto":
        steps = int(training.steps)
        return steps, (f"steps {steps} as set, {per_step} images each = {steps * per_step / max(draws, 1):.3g} "
                       f"passes over {pass_text} (repeats and epochs do not change the length)")
    if training.steps_preset == "tensorart":
        micro = epoch_steps(draws, 1, training.epochs, training.batch_size)
        steps = max(1, math.ceil(micro / (training.gradient_accumulation * world)))
        return steps, f"{pass_text} x {training.epochs} epochs / {' x '.join(divisor)} = {steps} steps"
    base = scenario_steps(family, images)
    steps = max(1, math.ceil(base / world))
    gpus = f" / {world} GPUs = {steps}" if world > 1 else ""
    return steps, (f"scenario preset ({family}): {scenario_formula(family, images)} = {base}{gpus} steps, "
                   f"{per_step} images each = {steps * per_step / max(draws, 1):.3g} passes over {pass_text} "
                   "(repeats and epochs do not change the length; stepsPreset tensorart counts "
                   "images x repeats x epochs / batch)")


@dataclass(frozen=True)
class Plan:
    """Steps and epochs of a run.

    Attributes:
        total_steps: Optimizer steps in all.
        epochs: Epochs (at most one per step).
        steps_per_epoch: Optimizer steps in each epoch but maybe the last.
    """

    total_steps: int
    epochs: int
    steps_per_epoch: int

    @classmethod
    def make(cls, steps: int, epochs: int) -> Plan:
        """Split `steps` into `epochs` equal slices (fewer epochs when there are fewer steps)."""
        epochs = max(1, min(epochs, steps))
        per_epoch = math.ceil(steps / epochs)
        return cls(total_steps=steps, epochs=math.ceil(steps / per_epoch), steps_per_epoch=per_epoch)

    def epoch_of(self, step: int) -> int:
        """The 1-based epoch that optimizer step `step` (1-based) belongs to."""
        return min(self.epochs, math.ceil(step / self.steps_per_epoch))

    def epoch_end(self, epoch: int) -> int:
        """The last optimizer step (1-based) of `epoch`."""
        return min(self.total_steps, epoch * self.steps_per_epoch)


class BatchStream:
    """Micro-batches of sample indices over endless seeded data passes.

    Args:
        samples: Training (and regularization) samples.
        batch_size: Samples per micro-batch (one target size each).
        seed: Seed of the shuffles.
    """

    def __init__(self, samples: list[Sample], batch_size: int, seed: int):
        self.samples = samples
        self.batch_size = batch_size
        self.seed = seed
        self._batches: list[list[int]] = []
        self._passes = 0

    def batch(self, index: int) -> list[int]:
        """Sample indices of micro-batch `index` (0-based, counted over the whole run)."""
        while index >= len(self._batches):
            order = epoch_order(self.samples, self._passes, self.seed)
            self._batches.extend(make_batches(self.samples, order, self.batch_size))
            self._passes += 1
        return self._batches[index]
