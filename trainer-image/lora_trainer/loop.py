"""The training recipe: one class, read top to bottom (setup / train / save_checkpoint / cleanup).

`LoraRecipe` runs the steps and decides what is due after each; its parts sit in modules named for
what they do: `run_setup` (data, model, adapter, optimizer), `step` (one optimizer step and its
loss) and `save_points` (validation, checkpoints, previews, resume states).

Every model family and adapter type runs through this one loop; what differs sits
behind `families.Family` and `adapters.Adapter`. Randomness of micro-batch *n*
(timesteps, noise, flips, caption shuffles, LoRA dropout) is drawn from generators
seeded with (seed, n), so a resumed run continues exactly where the interrupted one
would have gone, and on CPU the same seed and data give byte-identical adapters.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import torch

from lora_operator.api import JobSpec, Manifest

from . import state as resume_state
from . import timings
from .adapters import make_adapter
from .earlystop import EarlyStopper
from .errors import ConfigError, NanLossError
from .families import get_family
from .outputs import Outputs
from .run_setup import CAPTIONS_FILE, RunInputs, RunSetup  # noqa: F401  (re-exported)
from .save_points import SavePoints
from .step import OptimizerStep, draw_seed, micro_batch_index  # noqa: F401  (re-exported)
from .stop import Stopped, on_sigterm

log = logging.getLogger(__name__)

LOSS_READ_EVERY = 10
"""Steps between reads of the loss to the host (progress line, NaN check): no sync in between."""


class LoraRecipe(RunSetup, OptimizerStep, SavePoints):
    """Trains one adapter as a job spec describes.

    Args:
        spec: The resolved job spec.
        inputs: Local folders of the model and the data.
        outputs: The job's output prefix.
        attempt: The attempt number (1-based), for progress.json.
        resume: Continue from the state under ``state/`` when there is one.
        progress_interval: Seconds between progress.json writes.
    """

    def __init__(self, spec: JobSpec, inputs: RunInputs, outputs: Outputs, *, attempt: int = 1,
                 resume: bool = False, progress_interval: float = 5.0):
        self.spec = spec
        self.training = spec.training
        self.inputs = inputs
        self.outputs = outputs
        self.attempt = attempt
        self.resume = resume
        self.progress_interval = progress_interval
        self.family = get_family(spec.base_model.family)
        self.adapter = make_adapter(spec.type)
        self.start_step = 0
        self.started_at = time.monotonic()
        self.last_loss: float | None = None
        """The last training loss read back from the device (every LOSS_READ_EVERY steps)."""

    # ------------------------------------------------------------------ train
    def train(self) -> Manifest:
        """Run the optimizer steps; checkpoints and previews at epoch ends, resume state also every N steps.

        Returns:
            The final manifest.

        Raises:
            NanLossError: The loss became NaN or infinite.
            Stopped: SIGTERM arrived; the resume state after the step in flight was saved first.
        """
        with on_sigterm() as self.stop:
            self.stop.deferring = True
            return self._train()

    def _train(self) -> Manifest:
        self.progress.report.step = self.start_step
        self.progress.report.epoch = self.plan.epoch_of(self.start_step) if self.start_step else 0
        self.progress.phase("training")
        self.stopper = EarlyStopper(self.training.early_stop, bool(self.data.validation))
        pending: list[tuple[int, torch.Tensor]] = []
        for step in range(self.start_step + 1, self.plan.total_steps + 1):
            # the first step compiles (torch.compile is lazy): its time is the compilation plus one step
            with timings.phase("first_step") if step == self.start_step + 1 else contextlib.nullcontext():
                pending.append((step, self.train_step(step)))
            epoch = self.plan.epoch_of(step)
            epoch_end = step == self.plan.epoch_end(epoch)
            saves = (False, False) if epoch_end else self._step_saves(step)
            state_due = not epoch_end and self._state_due(step)
            if epoch_end or state_due or any(saves) or step % LOSS_READ_EVERY == 0:
                self._read_losses(pending)
                pending = []
            self.progress.step(step, epoch, self.last_loss)
            if epoch_end:
                self._end_epoch(epoch, step)
            elif any(saves):
                self._save_point(epoch, step, *saves, between=True, resume=True)
            elif state_due:
                resume_state.save(self, step)
            if self.manifest.manifest.stopped_early:
                break
            if self.stop.requested and step < self.plan.total_steps:
                self._stop(step, pending, saved=epoch_end or state_due or any(saves))
        self.progress.phase("done")
        self.manifest.write(finished=True)
        return self.manifest.manifest

    def _stop(self, step: int, pending: list[tuple[int, torch.Tensor]], *, saved: bool) -> None:
        """SIGTERM: save the resume state after `step` (unless this step just saved it) and stop."""
        if pending:
            self._read_losses(pending)  # no NaN goes into a resume state
        if self.main and not saved:
            resume_state.save(self, step)
        self.progress.write()
        raise Stopped(step)

    def _step_saves(self, step: int) -> tuple[bool, bool]:
        """(checkpoint, previews) due at a step between epoch ends (checkpoints / previews.everySteps)."""
        if step >= self.plan.total_steps:
            return False, False
        every = (self.spec.checkpoints.every_steps, self.spec.previews.every_steps)
        return bool(every[0] and step % every[0] == 0), bool(every[1] and step % every[1] == 0)

    def _state_due(self, step: int) -> bool:
        """A mid-epoch resume state is due (checkpoints.stateEverySteps; epoch ends save their own)."""
        every = self.spec.checkpoints.state_every_steps
        return self.main and every > 0 and step % every == 0 and step < self.plan.total_steps

    def _read_losses(self, pending: list[tuple[int, torch.Tensor]]) -> None:
        """Reads the losses of the steps since the last read in one device sync; stops on NaN/inf.

        A step's loss stays on the device until here, so steps run without host syncs (progress
        counts every step; its loss is the last one read); a NaN is caught at the latest
        LOSS_READ_EVERY steps later, and always before a checkpoint or a resume state is written.
        """
        values = torch.stack([loss.detach().float().cpu() for _, loss in pending]).tolist()
        for (step, _), value in zip(pending, values, strict=True):
            if not math.isfinite(value):
                raise NanLossError(
                    f"training: the loss became {value} at step {step} "
                    f"(lower training.unetLearningRate, now {self.training.unet_learning_rate})"
                )
            self.last_loss = value

    def cleanup(self) -> None:
        """Release the models and end the distributed group."""
        self.accelerator.end_training()
        self.parts = self.train_parts = None


def run_recipe(spec: JobSpec, inputs: RunInputs, outputs: Outputs, **kwargs) -> Manifest:
    """setup + train + cleanup; what the CLI calls."""
    if spec.type is None:
        raise ConfigError("type: missing (resolve the spec first)")
    with timings.phase("load"):  # the family's modules are imported here
        recipe = LoraRecipe(spec, inputs, outputs, **kwargs)
    try:
        with timings.phase("load"):  # caching inside it is a phase of its own
            recipe.setup()
        with timings.phase("training"):
            return recipe.train()
    finally:
        if hasattr(recipe, "accelerator"):
            recipe.cleanup()
