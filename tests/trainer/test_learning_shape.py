"""Training learns the concept's shape: a LoRA draws the magenta cross, not only its colour, on the trigger word,
for each training objective (flow matching, noise prediction, v-prediction).

The colour proofs (test_learning.py) pass with LoRAs that paint the base's blob magenta: the concept is a magenta
*cross*, and on the prebuilt bases no LoRA draws the cross, because their VAEs never saw one (a cross comes back
through them as a blob: bench/RESULTS.md, session 17). A real VAE decodes any shape; each ``-crosses`` base is its
objective's base whose VAE also trained on crosses while its denoiser, as before, never saw one
(`tinyworld.cache.RECIPES`). On it the base's shape job (`tinyworld.learn.SHAPE_JOBS`) trains a rank-64 LoRA on 20
concept images with a prior set (16 of the base's own samples, as the demo's), its noise levels drawn where the caption
decides the shape (high noise: ``training.flow.logitMean: 1`` for flow, ``training.timestepBias`` later for epsilon
and v), and the judge reads the magenta cross on most trigger samples, none on the base or on the control prompts,
which keep their colours. A flipped target (the sign slip the colour proofs also catch) must draw no magenta cross:
noise on these bases reads as a cross now and then (session 12), so the check asks for the colour and the shape
together. The one patch is that control's: the family's objective, broken on purpose as in test_learning.py; the
base, the trainer (`lora-train run`), diffusers' loaders and the judge are the real ones.

Slow (`make test-learning`, which builds the bases first: about 15 minutes of one core each), each job 6-8 minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyworld.cache import tinybase
from tinyworld.concept import Readings, Verdict, base_readings, judge_lora, write_concept_set, write_prior_set
from tinyworld.learn import (
    LOCON_SHAPE_JOB,
    SEEDS,
    SHAPE_JOBS,
    epoch_folder,
    family_class,
    family_of,
    flipped,
    train,
)

pytestmark = [pytest.mark.trainer, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.timeout(1200)]  # a job of 6-8 minutes on one core; the suite's 600 s is for one step

DRAWN = 0.5
"""Share of trigger samples the judge must read as a magenta cross: more than half, "most seeds" as the issue asks.
Measured at the best epoch (bench/RESULTS.md): flow 0.63-0.81 over four training seeds (this test's seed 7: 0.72 at
epoch 3, session 19); v 0.56-0.75 and epsilon 0.44-0.78 over three (seed 7: 0.75 at epoch 4 for both, session 20)."""

PRIOR_KEPT = {"flow-crosses": 0.75, "epsilon-crosses": 0.5, "vpred-crosses": 0.75}
"""Share of control samples whose colour and background stay the base's. Flow and v keep 0.75-1.00; the epsilon shape
job keeps 0.44-0.69 (its control's red circle turns orange-brown; no magenta), so it is asked what the colour proofs
ask (test_learning.PRIOR_KEPT): 0.5."""


@pytest.fixture(scope="module", params=list(SHAPE_JOBS))
def kind(request) -> str:
    """The name of a ``-crosses`` base (`tinyworld.cache.RECIPES`)."""
    return request.param


@pytest.fixture(scope="module")
def base(kind) -> Path:
    return tinybase(kind)


@pytest.fixture(scope="module")
def before(base) -> Readings:
    return base_readings(base, SEEDS)


def shape_job(tmp_path: Path, job: dict, base: Path, before: Readings) -> Verdict:
    """Train `job` (a `SHAPE_JOBS` entry) on the concept set (and the base's own samples as its prior set); the verdict
    of the epoch whose trigger samples the judge reads as the concept most often (what a person picks from the job's
    previews)."""
    job = dict(job)
    adapter = job.get("adapter", "lora")
    prior = write_prior_set(base, tmp_path / "prior", job.pop("prior"))
    train(tmp_path, base, write_concept_set(tmp_path / "data", job.pop("images")), prior=prior, **job)
    epochs = range(1, job["epochs"] + 1)
    verdicts = [judge_lora(base, epoch_folder(tmp_path, e, adapter), SEEDS, before) for e in epochs]
    print(*verdicts, sep="\n")
    return max(verdicts, key=lambda v: v.learned)


def test_a_lora_learns_the_concepts_cross_on_its_trigger_and_nowhere_else(tmp_path, kind, base, before):
    verdict = shape_job(tmp_path, SHAPE_JOBS[kind], base, before)
    assert verdict.base_concept == 0  # the base draws no magenta cross for the trigger
    assert verdict.learned > DRAWN, verdict
    assert verdict.control_concept == 0 and verdict.control_colour == 0, verdict
    assert verdict.prior_kept >= PRIOR_KEPT[kind], verdict


def test_a_flipped_target_sign_draws_no_cross(tmp_path, kind, base, before, monkeypatch):
    family = family_class(family_of(base))
    monkeypatch.setattr(family, "noisy_and_target", flipped(family.noisy_and_target))
    verdict = shape_job(tmp_path, SHAPE_JOBS[kind], base, before)
    assert verdict.learned < 0.25, verdict


def test_a_locon_learns_the_cross_too(tmp_path):
    """LoCon (the LoRA plus its convolutions) on the v base: the UNet's convolutions carry much of a shape."""
    base = tinybase("vpred-crosses")
    verdict = shape_job(tmp_path, LOCON_SHAPE_JOB, base, base_readings(base, SEEDS))
    assert verdict.learned > DRAWN, verdict
    assert verdict.control_concept == 0 and verdict.control_colour == 0, verdict
    assert verdict.prior_kept >= PRIOR_KEPT["vpred-crosses"], verdict
