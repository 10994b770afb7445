"""Training learns: a LoRA trained through `lora-train run` moves the pretrained tiny base toward a concept it
never saw, on its trigger word; the same job with the target's sign flipped does not.

The base (tests/tinyworld, `make tinybase`) was pretrained on red, green, blue and yellow shapes; the
concept is a magenta cross named "zxq". The judge reads the colour of each sample directly. What this
checks today is the concept's *colour* on the trigger prompts: the base is still too weak for the full
check (cross shape, prior kept; `python -m tinyworld.learn`, bench/RESULTS.md) to pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lora_operator.api import ExitCode
from lora_trainer.cli import main
from lora_trainer.families.sd15 import SD15Family
from tinyworld.cache import tinybase
from tinyworld.concept import Readings, base_readings, judge_lora, write_concept_set
from tinyworld.learn import flipped, job_spec

pytestmark = pytest.mark.trainer

SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a CPU shared with other work, two threads spin and run 5-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base() -> Path:
    return tinybase("epsilon")


@pytest.fixture(scope="module")
def before(base) -> Readings:
    """The judge's readings of the base's own samples (shared by the tests)."""
    return base_readings(base, SEEDS)


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory) -> Path:
    return write_concept_set(tmp_path_factory.mktemp("concept") / "zxq")


def train_concept(tmp_path: Path, base: Path, data: Path) -> Path:
    """Train a LoRA (UNet and text encoder) on the concept through the CLI; returns its diffusers folder."""
    spec = job_spec(base, data, tmp_path / "storage", steps=200, lr=5e-3, text_lr=5e-3, caption_dropout=0.0)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
                                   "metadata": {"name": "concept", "namespace": "learn"}, "spec": spec}))
    assert main(["run", str(job)]) == ExitCode.SUCCESS
    return tmp_path / "storage/learn/concept/local/checkpoints/epoch-0001/diffusers"


def test_a_lora_draws_the_concepts_colour_on_its_trigger(tmp_path, base, before, concept_dir):
    verdict = judge_lora(base, train_concept(tmp_path, base, concept_dir), SEEDS, before)
    print(verdict)
    assert verdict.learned_colour >= 0.5, verdict
    assert sum(r.colour == "magenta" for r in before.trigger) / len(before.trigger) <= 0.25  # not the base's doing


def test_a_flipped_target_sign_learns_nothing(tmp_path, base, before, concept_dir, monkeypatch):
    monkeypatch.setattr(SD15Family, "noisy_and_target", flipped(SD15Family.noisy_and_target))
    verdict = judge_lora(base, train_concept(tmp_path, base, concept_dir), SEEDS, before)
    print(verdict)
    assert verdict.learned_colour < 0.25, verdict
