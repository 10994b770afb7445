"""Resume state: adapter weights, optimizer, lr schedule, EMA (training.ema) and position.

Saved at epoch ends and every ``checkpoints.stateEverySteps`` optimizer steps in between
(by the main process only), so a retried pod repeats at most that many steps.

Written locally, then uploaded to ``state/``; ``state/meta.json`` goes last, so a state
without it is incomplete and ignored. The position is the global optimizer step: data order and
every random draw derive from (seed, step, workers), so nothing else is needed to continue exactly
on the same number of workers.
RNG states are saved too, for code that draws from the global generators.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from lora_operator.api import spec_hash
from lora_operator.api.contract import MANIFEST_KEY, STATE_PREFIX

from . import timings

if TYPE_CHECKING:
    from .loop import LoraRecipe

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
TRAINING_FILE = "training.pt"
META_FILE = "meta.json"


def save(recipe: LoraRecipe, step: int) -> None:
    """Write the resume state after optimizer step `step` and upload it to state/.

    Its duration goes into the next progress.json (``stateSaveSeconds``): the operator sets the
    grace period of the job's later pods over it, the time a save on SIGTERM needs.
    """
    started = time.monotonic()
    with timings.phase("state"):
        _write(recipe, step)
    seconds = round(time.monotonic() - started, 3)
    recipe.progress.report.state_save_seconds = seconds
    log.info("resume state after step %d saved in %.2fs", step, seconds)


def _write(recipe: LoraRecipe, step: int) -> None:
    out = recipe.outputs
    save_file({k: v.contiguous() for k, v in recipe.adapter.state_dict().items()},
              str(out.local(STATE_PREFIX + ADAPTER_FILE)))
    torch.save(
        {
            "optimizer": recipe.optimizer.state_dict(),
            "lr_scheduler": recipe.lr_scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "ema": recipe.ema.state_dict() if recipe.ema is not None else None,
        },
        out.local(STATE_PREFIX + TRAINING_FILE),
    )
    meta = {"step": step, "epoch": recipe.plan.epoch_of(step), "total_steps": recipe.plan.total_steps,
            "workers": recipe.world, "spec_hash": spec_hash(recipe.spec), "job_uid": recipe.outputs.job_uid}
    out.publish(STATE_PREFIX + ADAPTER_FILE)
    out.publish(STATE_PREFIX + TRAINING_FILE)
    out.publish_bytes(STATE_PREFIX + META_FILE, json.dumps(meta).encode())


def restore(recipe: LoraRecipe) -> int:
    """Load the state from state/ into the recipe; returns the step to continue after (0: none)."""
    local = recipe.outputs.workdir / f"restore-{recipe.rank}"  # ranks may share a work folder
    shutil.rmtree(local, ignore_errors=True)
    recipe.outputs.fetch_prefix(STATE_PREFIX, local)
    meta_path = Path(local, META_FILE)
    if not meta_path.is_file():
        log.info("no saved state: starting from step 0")
        return 0
    meta = json.loads(meta_path.read_text())
    if meta.get("job_uid") != recipe.outputs.job_uid:
        # Defense in depth: the prefix holds the job's UID, so only a misplaced prefix gets here.
        log.warning("saved state belongs to job %s, not %s: starting from step 0", meta.get("job_uid"),
                    recipe.outputs.job_uid)
        return 0
    if meta.get("spec_hash") != spec_hash(recipe.spec):
        log.warning("saved state belongs to another spec: starting from step 0")
        return 0
    if meta.get("workers", 1) != recipe.world:
        # Steps are global: the position in the data and an auto step count depend on the workers.
        log.warning("saved state comes from %s worker(s), this run has %d: step %d continues with "
                    "%d total steps, not %s", meta.get("workers", 1), recipe.world, meta["step"],
                    recipe.plan.total_steps, meta.get("total_steps"))
    recipe.adapter.load_state_dict(load_file(str(local / ADAPTER_FILE)))
    training = torch.load(local / TRAINING_FILE, weights_only=False)
    recipe.optimizer.load_state_dict(training["optimizer"])
    recipe.lr_scheduler.load_state_dict(training["lr_scheduler"])
    if recipe.ema is not None and training.get("ema") is not None:
        recipe.ema.load_state_dict(training["ema"])
    torch.set_rng_state(training["torch_rng"])
    random.setstate(training["python_rng"])
    manifest = recipe.outputs.store.get_bytes(MANIFEST_KEY)
    if manifest:
        from lora_operator.api import Manifest

        saved = Manifest.model_validate_json(manifest)
        if saved.job_uid == recipe.outputs.job_uid:
            recipe.manifest.manifest = saved
            recipe.manifest.manifest.finished = False
    log.info("resuming after step %d (epoch %d)", meta["step"], meta["epoch"])
    return int(meta["step"])
