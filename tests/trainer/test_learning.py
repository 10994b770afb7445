"""Training learns, for each training objective: a LoRA trained through `lora-train run` moves a pretrained tiny
base toward a concept it never saw, on its trigger word, more than on other prompts, and keeps most of what
the base drew for those; the same job with a broken objective does not pass.

The bases (tests/tinyworld, `make tinybase`) were pretrained on red, green, blue and yellow circles, squares
and triangles: ``epsilon`` (noise prediction, SD1.5 topology), ``vpred`` (v-prediction, the epsilon base's recipe but
for the objective) and ``flow`` (rectified flow, Flux topology). They are built on the machine that runs the tests,
and their weights depend on its CPU's float kernels: the rates of session 15 and before, tuned on an AVX-512 machine,
failed every positive proof on an AVX2 one. Session 16 made the bases sturdier (a VAE of 900 steps that reads back
every colour, an SD1.5-topology UNet of 3000 steps that follows the colour it is asked for), judged 8 seeds instead
of 4, dropped the position from the prior check (`concept.same_scene`), and retuned each job (`learn.RATES`,
`learn.STEPS`) to the middle of the step range where it passes, measured at every quarter of the job; session 17's
flow base (heads of 32, trained more at high noise: it draws the asked shape) got the same retuning. The trainer's v
path was checked end to end against the pretraining and the judge's sampler (the velocity target, min-SNR /
(snr + 1), DDIM with the base's v_prediction config): no defect found.
The concept is a magenta cross named "zxq". A judge reads colour, shape, position and background of each
sample directly. Every part is real (the tiny bases, `lora-train run`, diffusers' loaders); the controls break the
trainer on purpose by patching its family's objective. The controls: the target's sign flipped (the objective a
sign slip in the trainer would train), and every caption dropped (what a caption that never reaches the text
encoder trains: the concept everywhere, or nowhere, but not on its trigger alone); on the v base also the noise as
the target (what a trainer that ignores the base's v_prediction scheduler trains).

LoCon (the LoRA also on the convolutions) and a textual-inversion embedding (8 vectors bound to the trigger word)
get the same proof on the epsilon base, the one whose family (sd15) supports them, with their controls (a flipped
target) marked `slow` (`make test-learning`); the embedding's starting vectors must not pass. The LoCon has alpha in
LyCORIS' recommended range (half the rank; the convolutions at rank 4, alpha 1); the embedding's concept is a colour
the base draws (`EMBEDDING_COLOUR`).

Prior preservation (`dataset.regularization` with the base's own samples of world captions) keeping the concept's
colour off the controls is proven on `make demo`'s own job file: tests/trainer/test_demo_job_learns.py (slow).
The concept's shape (the cross, not only its colour) is proven for each objective on a base whose VAE decodes
crosses: tests/trainer/test_learning_shape.py (slow).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinyworld.cache import PREBUILT, tinybase
from tinyworld.concept import Readings, Verdict, base_readings, judge_lora, share_in_colour, write_concept_set
from tinyworld.learn import (
    ADAPTER_RATES,
    ADAPTER_STEPS,
    RATES,
    SEEDS,
    STEPS,
    family_class,
    family_of,
    flipped,
    job_kind,
    job_spec,
    noise_target,
    train,
)

pytestmark = [pytest.mark.trainer, pytest.mark.usefixtures("one_torch_thread")]

LEARNED = 0.625
"""Share of trigger samples in the concept's colour a LoRA must reach (measured at the jobs' step counts, session 16:
epsilon 1.00, v 0.75-1.00, flow 0.94 (session 17). The cross's shape needs a VAE that decodes crosses and a wider,
longer job: test_learning_shape.py, on the -crosses bases)."""
PRIOR_KEPT = 0.5
"""Share of control samples whose colour and background stay the base's (measured 0.59-0.75: a LoRA leaks some of the
concept's colour into prompts without the trigger, red turns magenta first)."""


@pytest.fixture(scope="module", params=[pytest.param(kind, marks=[] if kind in PREBUILT else [pytest.mark.slow])
                                        for kind in RATES])
def base(request) -> Path:
    """Each base with a concept job; a base `make tinybase` does not build would be built here, its tests slow."""
    return tinybase(request.param)


def train_concept(tmp_path: Path, base: Path, data: Path, **options) -> Path:
    """The base's concept job through `lora-train run` (`options`: caption_dropout); its diffusers LoRA."""
    kind = job_kind(base.name)
    lr, text_lr = RATES[kind]
    return train(tmp_path, base, data, STEPS[kind], lr=lr, text_lr=text_lr, **options)


@pytest.fixture(scope="module")
def before(base) -> Readings:
    """The judge's readings of the base's own samples (shared by the tests of one base)."""
    return base_readings(base, SEEDS)


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory) -> Path:
    return write_concept_set(tmp_path_factory.mktemp("concept") / "zxq")


def learned_on_its_trigger(verdict: Verdict) -> bool:
    """The concept check: its colour on the trigger, most of the prior kept, more on the trigger than elsewhere."""
    return (verdict.learned_colour >= LEARNED and verdict.prior_kept >= PRIOR_KEPT
            and verdict.learned_colour - verdict.control_colour >= 0.25)


@pytest.mark.parametrize("kind", PREBUILT)
def test_each_bases_vae_brings_back_the_worlds_colours_and_the_concepts_magenta(kind):
    """A LoRA can teach a colour only if the base's VAE decodes it: every proof below stands on this. A VAE trained
    300 steps brought magenta back on 1.00 of the concept images on one machine and 0.50 on another (the weights
    depend on the CPU's float kernels: bench/RESULTS.md, session 15), and every epsilon proof failed there; 900 steps
    read 1.00 on both the world's colours and magenta (session 16)."""
    from diffusers import AutoencoderKL

    from tinyworld.reconstruct import scores

    got = scores(AutoencoderKL.from_pretrained(tinybase(kind) / "vae").eval())
    assert got["world colour"] >= 0.95 and got["magenta"] >= 0.95, f"{kind} base's VAE (raise vae_steps): {got}"


def test_a_lora_learns_the_concepts_colour_on_its_trigger_and_keeps_most_of_the_prior(tmp_path, base, before,
                                                                                      concept_dir):
    verdict = judge_lora(base, train_concept(tmp_path, base, concept_dir), SEEDS, before)
    print(verdict)
    assert share_in_colour(before.trigger) <= 0.25  # not the base's doing
    assert learned_on_its_trigger(verdict), verdict


def test_a_flipped_target_sign_learns_nothing(tmp_path, base, before, concept_dir, monkeypatch):
    family = family_class(family_of(base))
    monkeypatch.setattr(family, "noisy_and_target", flipped(family.noisy_and_target))
    verdict = judge_lora(base, train_concept(tmp_path, base, concept_dir), SEEDS, before)
    print(verdict)
    assert verdict.learned_colour < 0.25, verdict


def test_the_noise_as_the_v_bases_target_fails_the_check(tmp_path, concept_dir, monkeypatch):
    """A trainer that ignores the base's v_prediction scheduler (trains the noise, as for SD1.5) does not pass the
    v proof's check with its job (measured 0.06 / 0.06 / 0.62: bench/RESULTS.md, session 14)."""
    vpred = tinybase("vpred")
    family = family_class(family_of(vpred))
    monkeypatch.setattr(family, "noisy_and_target", noise_target(family.noisy_and_target))
    verdict = judge_lora(vpred, train_concept(tmp_path, vpred, concept_dir), SEEDS, base_readings(vpred, SEEDS))
    print(verdict)
    assert not learned_on_its_trigger(verdict), verdict


def test_the_trainer_trains_the_v_base_on_the_velocity_and_the_flipped_control_negates_it():
    """The vpred proof proves v-prediction: the trainer reads the base's scheduler as v, trains on the velocity
    sqrt(a) noise - sqrt(1 - a) x0 (not the noise), and the flipped control trains on minus the velocity."""
    vpred = tinybase("vpred")
    family = family_class(family_of(vpred))()
    parts = family.load(vpred, torch.float32)
    assert family.model_version(parts).prediction_type == "v"
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn((2, 4, 16, 16), generator=gen), torch.randn((2, 4, 16, 16), generator=gen)
    timesteps = torch.tensor([100, 900])
    alpha = parts.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    velocity = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
    _, target = family.noisy_and_target(parts, latents, noise, timesteps)
    assert torch.allclose(target, velocity, atol=1e-6) and not torch.allclose(target, noise, atol=0.1)
    _, broken = flipped(type(family).noisy_and_target)(family, parts, latents, noise, timesteps)
    assert torch.equal(broken, -target)


def test_captions_that_never_reach_the_text_encoder_fail_the_check(tmp_path, base, before, concept_dir):
    verdict = judge_lora(base, train_concept(tmp_path, base, concept_dir, caption_dropout=1.0), SEEDS, before)
    print(verdict)
    assert not learned_on_its_trigger(verdict), verdict


@pytest.fixture(scope="module")
def epsilon() -> Path:
    """The noise-prediction base (SD1.5 topology: its family trains LoCon and embeddings)."""
    return tinybase("epsilon")


@pytest.fixture(scope="module")
def epsilon_before(epsilon) -> Readings:
    return base_readings(epsilon, SEEDS)


def train_adapter(tmp_path: Path, base: Path, data: Path, adapter: str, **options) -> Path:
    """The epsilon base's concept job for `adapter` (locon, embedding); its diffusers LoRA or embedding file."""
    lr, text_lr = ADAPTER_RATES[adapter]
    return train(tmp_path, base, data, ADAPTER_STEPS[adapter], lr=lr, text_lr=text_lr, adapter=adapter, **options)


def test_a_locon_learns_the_concepts_colour_on_its_trigger(tmp_path, epsilon, epsilon_before, concept_dir):
    """A LoCon with alpha in LyCORIS' recommended range (half the rank; the convolutions at rank 4, alpha 1), 50
    steps: the LoRA's check. At rank 8 everywhere with alpha = rank it leaked (0.62 on the trigger, 0.44 on controls;
    its verdict swings by a sample or two between checkpoints and training seeds: bench/RESULTS.md)."""
    verdict = judge_lora(epsilon, train_adapter(tmp_path, epsilon, concept_dir, "locon"), SEEDS, epsilon_before)
    print(verdict)
    assert share_in_colour(epsilon_before.trigger) <= 0.25  # not the base's doing
    assert learned_on_its_trigger(verdict), verdict


EMBEDDING_COLOUR = "yellow"
"""The colour of the embedding's concept: one the base draws. Eight vectors bound to the trigger cannot make the frozen
UNet of the 3000-step epsilon base draw the magenta it never drew (0.00-0.09 of trigger samples at rates 5e-3 to 3e-1,
initialised from "circle", "red" or "blue": bench/RESULTS.md, session 16), which is what textual inversion is: a new
word for what the model can already draw (Gal et al. 2022). Not green: the 8 vectors as initialised (from "circle")
already read green on 0.94 of trigger samples. Crosses in the world's yellow, captioned with the trigger, read yellow
on 1.00, 1.00 and 0.91 of trigger samples after 100, 200 and 300 steps."""


@pytest.fixture(scope="module")
def yellow_dir(tmp_path_factory) -> Path:
    """The concept set with its crosses in `EMBEDDING_COLOUR`."""
    return write_concept_set(tmp_path_factory.mktemp("yellow") / "zxq", colour=EMBEDDING_COLOUR)


def test_an_embedding_learns_the_concepts_colour_on_its_trigger(tmp_path, epsilon, epsilon_before, yellow_dir):
    embedding = train_adapter(tmp_path, epsilon, yellow_dir, "embedding")
    verdict = judge_lora(epsilon, embedding, SEEDS, epsilon_before, colour=EMBEDDING_COLOUR)
    print(verdict)
    assert sum(r.colour == EMBEDDING_COLOUR for r in epsilon_before.trigger) <= len(epsilon_before.trigger) / 4
    assert learned_on_its_trigger(verdict), verdict


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["locon", "embedding"])
def test_an_adapter_with_a_flipped_target_sign_learns_nothing(tmp_path, epsilon, epsilon_before, concept_dir,
                                                              yellow_dir, monkeypatch, adapter):
    """The LoCon draws no magenta; the embedding, whose concept is a colour the base draws anyway, does not pass the
    check (its vectors drift: yellow went 0.00-0.41 on the trigger over 300 steps, bench/RESULTS.md, session 16)."""
    family = family_class(family_of(epsilon))
    monkeypatch.setattr(family, "noisy_and_target", flipped(family.noisy_and_target))
    if adapter == "embedding":
        embedding = train_adapter(tmp_path, epsilon, yellow_dir, adapter)
        verdict = judge_lora(epsilon, embedding, SEEDS, epsilon_before, colour=EMBEDDING_COLOUR)
        assert not learned_on_its_trigger(verdict), verdict
    else:
        verdict = judge_lora(epsilon, train_adapter(tmp_path, epsilon, concept_dir, adapter), SEEDS, epsilon_before)
        assert verdict.learned_colour < 0.25, verdict


def test_the_embeddings_starting_vectors_do_not_pass_the_check(tmp_path, epsilon, epsilon_before):
    """What the embedding proof starts from (each vector the initial phrase's embedding, as the adapter initialises
    them) is not the concept: its yellow comes from training. The control the LoRAs have instead, every caption
    dropped, does not apply: the embedding adapter prepends its token to every caption, an empty one too, and with
    dropped captions the embedding learned the concept's colour (1.00, session 16)."""
    from lora_operator.api import JobSpec
    from lora_trainer.adapters.embedding import EmbeddingAdapter

    lr, text_lr = ADAPTER_RATES["embedding"]  # nothing trains: the spec carries the embedding section
    spec = JobSpec.model_validate(job_spec(epsilon, tmp_path, tmp_path, 1, lr, text_lr, 0.0, adapter="embedding"))
    family = family_class(family_of(epsilon))()
    adapter = EmbeddingAdapter()
    adapter.attach(family, family.load(epsilon, torch.float32), spec)  # the trainer's own initialisation
    [(_, start)] = adapter.export(tmp_path / "start", [], {})
    verdict = judge_lora(epsilon, start, SEEDS, epsilon_before, colour=EMBEDDING_COLOUR)
    print(verdict)
    assert not learned_on_its_trigger(verdict), verdict
