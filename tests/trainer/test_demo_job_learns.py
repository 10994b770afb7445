"""`make demo`'s job file learns its concept, and its prior set is what keeps the concept off other prompts.

The demo trains examples/demo-concept-job.yaml through the operator and ends with the contact sheet the README shows.
Nothing checked that the file's settings still teach the concept when the bases change: session 16 rebuilt them and
the demo's job, untouched, learned 0.22 of the colour. Here the file itself, only its storage URIs pointed at local
folders, trains through ``lora-train run`` (the trainer the operator's pod runs) on the flow base, and the judge reads
its last epoch as the learning proofs do (`tinyworld.learn.SEEDS`). The same file without its
``dataset.regularization`` (16 of the base's own samples of world captions: DreamBooth's prior preservation) must
paint the concept's colour on prompts without the trigger, so the prior set is shown to do its job.
Slow (two of the demo's jobs): ``make test-learning``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tinyworld.cache import tinybase
from tinyworld.concept import (
    Readings,
    Verdict,
    base_readings,
    judge_lora,
    share_in_colour,
    write_concept_set,
    write_prior_set,
)
from tinyworld.learn import SEEDS, epoch_folder, run_job

pytestmark = [pytest.mark.trainer, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

DEMO_JOB = Path(__file__).resolve().parents[2] / "examples/demo-concept-job.yaml"


def local_spec(spec: dict, base: Path, data: Path, prior: Path | None, out: Path) -> dict:
    """The demo's spec with its storage URIs on local folders (`prior` None: without its regularization set);
    nothing that trains changed."""
    spec["baseModel"]["uri"] = base.as_uri()
    spec["dataset"]["uri"] = data.as_uri()
    if prior is None:
        del spec["dataset"]["regularization"]
    else:
        spec["dataset"]["regularization"]["uri"] = prior.as_uri()
    spec["output"]["uri"] = out.as_uri()
    return spec


@pytest.fixture(scope="module")
def flow() -> Path:
    return tinybase("flow")


@pytest.fixture(scope="module")
def before(flow) -> Readings:
    """The judge's readings of the flow base's own samples (shared by both jobs' verdicts)."""
    return base_readings(flow, SEEDS)


def demo_verdict(tmp_path: Path, flow: Path, before: Readings, with_prior: bool) -> Verdict:
    """Train the demo's job file (with or without its prior set) and judge its last epoch."""
    spec = yaml.safe_load(DEMO_JOB.read_text())["spec"]
    assert spec["baseModel"]["family"] == "flux"
    prior = write_prior_set(flow, tmp_path / "prior") if with_prior else None
    run_job(tmp_path, local_spec(spec, flow, write_concept_set(tmp_path / "data"), prior, tmp_path / "storage"))
    verdict = judge_lora(flow, epoch_folder(tmp_path, spec["training"]["epochs"]), SEEDS, before)
    print(verdict)
    return verdict


def test_the_demo_job_teaches_its_concept_and_keeps_it_off_the_controls(tmp_path, flow, before):
    verdict = demo_verdict(tmp_path, flow, before, with_prior=True)
    assert verdict.learned_colour >= 0.75, verdict
    assert verdict.control_colour <= share_in_colour(before.control), verdict
    assert verdict.prior_kept >= 0.75, verdict


def test_without_its_prior_set_the_demo_job_paints_the_concept_on_the_controls(tmp_path, flow, before):
    verdict = demo_verdict(tmp_path, flow, before, with_prior=False)
    assert verdict.control_colour >= 0.25, verdict
