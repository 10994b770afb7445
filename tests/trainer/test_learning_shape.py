"""Training learns the concept's shape: a LoRA draws the magenta cross, not only its colour, on the trigger word.

The colour proofs (test_learning.py) pass with LoRAs that paint the base's blob magenta: the concept is a magenta
*cross*, and on the prebuilt bases no LoRA draws the cross, because their VAEs never saw one (a cross comes back
through them as a blob: bench/RESULTS.md, session 17). A real VAE decodes any shape; the ``flow-crosses`` base is
the flow base (Flux topology, rectified flow) whose VAE also trained on crosses while its transformer, as before,
never saw one (`tinyworld.cache.RECIPES`). On it the shape job (`tinyworld.learn.SHAPE_JOB`) trains a rank-64 LoRA
on 20 concept images with a prior set (16 of the base's own samples, as the demo's), its sigmas drawn where the base
itself trained (``training.flow.logitMean: 1``: at high noise, where the caption decides the shape), and the judge
reads the magenta cross on most trigger samples, none on the base or on the control prompts, which keep their
colours. A flipped target (the sign slip the colour proofs also catch) must draw no magenta cross: noise on this
base reads as a cross now and then (session 12), so the check asks for the colour and the shape together.
The one patch is that control's: the family's objective, broken on purpose as in test_learning.py; the base, the
trainer (`lora-train run`), diffusers' loaders and the judge are the real ones.

Slow (`make test-learning`, which builds the base first: about 15 minutes of one core), each job about 7 minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyworld.cache import tinybase
from tinyworld.concept import Readings, Verdict, base_readings, judge_lora, write_concept_set, write_prior_set
from tinyworld.learn import SEEDS, SHAPE_JOB, epoch_folder, family_class, family_of, flipped, train

pytestmark = [pytest.mark.trainer, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.timeout(1200)]  # a job of about 7 minutes on one core; the suite's 600 s is for one step

DRAWN = 0.5
"""Share of trigger samples the judge must read as a magenta cross: more than half, "most seeds" as the issue asks.
Measured at the best epoch over four training seeds: 0.63-0.81 (this test's seed 7: 0.72 at epoch 3, 0.31 and 0.47 at
epochs 1 and 2; bench/RESULTS.md, session 19)."""


@pytest.fixture(scope="module")
def base() -> Path:
    return tinybase("flow-crosses")


@pytest.fixture(scope="module")
def before(base) -> Readings:
    return base_readings(base, SEEDS)


def shape_job(tmp_path: Path, base: Path, before: Readings) -> Verdict:
    """Train `SHAPE_JOB` on the concept set (and the base's own samples as its prior set); the verdict of the epoch
    whose trigger samples the judge reads as the concept most often (what a person picks from the job's previews)."""
    job = dict(SHAPE_JOB)
    prior = write_prior_set(base, tmp_path / "prior", job.pop("prior"))
    train(tmp_path, base, write_concept_set(tmp_path / "data", job.pop("images")), prior=prior, **job)
    verdicts = [judge_lora(base, epoch_folder(tmp_path, e), SEEDS, before) for e in range(1, job["epochs"] + 1)]
    print(*verdicts, sep="\n")
    return max(verdicts, key=lambda v: v.learned)


def test_a_lora_learns_the_concepts_cross_on_its_trigger_and_nowhere_else(tmp_path, base, before):
    verdict = shape_job(tmp_path, base, before)
    assert verdict.base_concept == 0  # the base draws no magenta cross for the trigger
    assert verdict.learned > DRAWN, verdict
    assert verdict.control_concept == 0 and verdict.control_colour == 0, verdict
    assert verdict.prior_kept >= 0.75, verdict


def test_a_flipped_target_sign_draws_no_cross(tmp_path, base, before, monkeypatch):
    family = family_class(family_of(base))
    monkeypatch.setattr(family, "noisy_and_target", flipped(family.noisy_and_target))
    verdict = shape_job(tmp_path, base, before)
    assert verdict.learned < 0.25, verdict
