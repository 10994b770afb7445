"""Every example YAML parses with the API models and resolves (with its template)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lora_operator.api import KINDS, LoraTrainingJob, resolve_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KIND_MODELS = {k.KIND: k for k in KINDS}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


KUEUE = EXAMPLES / "kueue"  # Kueue's own kinds (queues for the Kueue example job): tests/unit/test_kueue_render.py
FILES = sorted(f for f in EXAMPLES.rglob("*.yaml") if not f.is_relative_to(KUEUE))
ALL_DOCS = [(f, d) for f in FILES for d in documents(f)]
TEMPLATES = {d["metadata"]["name"]: d for _, d in ALL_DOCS if d["kind"] != LoraTrainingJob.KIND}
JOBS = {f.name: d for f, d in ALL_DOCS if d["kind"] == LoraTrainingJob.KIND}


def resolved(job: dict):
    name = job["spec"].get("template")
    return resolve_spec(job["spec"], TEMPLATES[name]["spec"] if name else None)


@pytest.mark.parametrize(("path", "doc"), ALL_DOCS, ids=[f"{f.relative_to(EXAMPLES)}:{d['metadata']['name']}"
                                                            for f, d in ALL_DOCS])
def test_example_parses_with_the_models_of_its_kind(path, doc):
    assert doc["apiVersion"] == "lora-operator.io/v1alpha1"
    KIND_MODELS[doc["kind"]].model_validate(doc)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_example_job_resolves_with_its_template(name):
    job = JOBS[name]
    template = job["spec"].get("template")
    assert template is None or template in TEMPLATES, f"{name} names unknown template {template}"
    spec = resolved(job)
    assert spec.base_model is not None and spec.output is not None and spec.dataset.uri


def test_the_expected_examples_exist():
    assert {"demo-job.yaml", "sdxl-character-job.yaml", "flux-style-job.yaml", "embedding-job.yaml",
            "locon-job.yaml", "chroma-character-job.yaml", "flux-kontext-edit-job.yaml",
            "flux2-character-job.yaml", "flux2-klein-character-job.yaml", "flux2-klein-edit-job.yaml",
            "qwen-image-edit-job.yaml"} <= set(JOBS)


def test_demo_job_is_tiny():
    spec = resolved(JOBS["demo-job.yaml"])
    assert spec.base_model.uri == "s3://models/tiny-sd15" and spec.base_model.family == "sd15"
    assert spec.dataset.uri == "s3://datasets/demo/" and spec.output.uri == "s3://loras/"
    assert spec.dataset.crop.size == "32x32" and spec.training.epochs == 2
    assert isinstance(spec.training.steps, int) and spec.training.steps <= 20
    assert (len(spec.previews.prompts), spec.previews.images_per_prompt, spec.previews.steps) == (1, 1, 2)


def test_every_spec_line_of_the_sdxl_quickstart_is_explained():
    lines = (EXAMPLES / "sdxl-character-job.yaml").read_text().split("spec:\n", 1)[1].splitlines()
    bare = [line for line in lines if line.strip() and not line.lstrip().startswith(("#", "- ")) and "#" not in line
            and not line.rstrip().endswith(":")]
    assert not bare, f"lines without a comment: {bare}"


def test_sdxl_quickstart_sets_every_common_field():
    spec = JOBS["sdxl-character-job.yaml"]["spec"]
    for field in ("template", "type", "baseModel", "dataset", "network", "training", "checkpoints", "previews",
                  "output", "storage", "placement", "priority", "retryPolicy", "suspend"):
        assert field in spec, field


def test_embedding_and_locon_examples_train_what_their_names_say():
    assert resolved(JOBS["embedding-job.yaml"]).type == "embedding"
    locon = resolved(JOBS["locon-job.yaml"])
    assert locon.type == "locon" and locon.network.conv_dim > 0


SCENARIOS = ("character", "style", "realistic-person", "anime-realistic")
FAMILIES = ("sd15", "sdxl", "flux")
NEWER = {"chroma-character": "chroma", "flux-kontext-edit": "flux-kontext", "flux2-character": "flux2",
         "flux2-klein-character": "flux2-klein", "z-image-character": "z-image", "z-image-style": "z-image",
         "qwen-image-character": "qwen-image", "qwen-image-style": "qwen-image",
         "qwen-image-edit-edit": "qwen-image-edit"}
"""Templates of the 2025 families: one scenario each so far, name -> family."""


def test_a_cluster_template_for_every_scenario_and_family():
    assert set(TEMPLATES) == {f"{f}-{s}" for f in FAMILIES for s in SCENARIOS} | set(NEWER)
    for name, doc in TEMPLATES.items():
        assert doc["kind"] == "ClusterLoraTrainingTemplate"
        family = doc["spec"]["baseModel"]["family"]
        assert family == NEWER.get(name, name.split("-")[0])
        assert doc["metadata"]["labels"]["lora-operator.io/family"] == family
        assert len(doc["spec"]["description"]) > 20


def test_templates_differ_in_their_hyperparameters():
    def key(doc):
        s = doc["spec"]
        return (yaml.safe_dump(s["network"]), yaml.safe_dump(s["training"]), yaml.safe_dump(s["dataset"]))

    assert len({key(d) for d in TEMPLATES.values()}) == len(TEMPLATES)


def test_flux_templates_freeze_the_text_encoders_and_use_a_flux_learning_rate():
    for name, doc in TEMPLATES.items():
        if name.startswith(("flux-", "chroma-")):
            training = doc["spec"]["training"]
            assert training["textEncoderLearningRate"] == 0 and training["textEncoderRatio"] == 0
            assert 1e-4 <= training["unetLearningRate"] <= 4e-4
            assert doc["spec"]["previews"]["sampler"] == "flow_euler"


def test_realistic_person_templates_use_noise_offset_or_lower_rates_than_character():
    for family in FAMILIES:
        person = TEMPLATES[f"{family}-realistic-person"]["spec"]["training"]
        character = TEMPLATES[f"{family}-character"]["spec"]["training"]
        assert person["unetLearningRate"] <= character["unetLearningRate"]
        if family != "flux":
            assert person["noiseOffset"] == 0.05


def test_style_templates_shuffle_or_drop_captions_and_flip():
    for family in FAMILIES:
        spec = TEMPLATES[f"{family}-style"]["spec"]
        assert spec["dataset"]["flip"] is True
        assert spec["training"].get("shuffleTags") or spec["training"].get("captionDropout")
        assert spec["network"]["dim"] >= TEMPLATES[f"{family}-character"]["spec"]["network"]["dim"]


def test_resolved_templates_are_valid_jobs_once_a_dataset_and_output_are_given():
    for name, doc in TEMPLATES.items():
        spec = resolve_spec({"template": name, "dataset": {"uri": "s3://d/"}, "output": {"uri": "s3://o/"}},
                            doc["spec"])
        assert spec.base_model.family in set(FAMILIES) | set(NEWER.values())
        assert spec.dataset.pairs == (doc["metadata"]["labels"]["lora-operator.io/scenario"] == "edit")


def test_the_klein_edit_example_trains_flux2_klein_on_pairs():
    spec = resolved(JOBS["flux2-klein-edit-job.yaml"])
    assert spec.base_model.family == "flux2-klein" and spec.dataset.pairs and not spec.dataset.flip


def test_the_24gb_flux_job_quantizes_its_base_and_checkpoints():
    spec = resolved(JOBS["flux-24gb-job.yaml"])
    assert spec.base_model.family == "flux" and spec.training.batch_size == 1
    assert (spec.training.base_quantization, spec.training.gradient_checkpointing) == ("nf4", "on")


def test_the_80gb_flux2_job_offloads_an_fp8_base_with_checkpointing():
    spec = resolved(JOBS["flux2-dev-80gb-job.yaml"])
    assert spec.base_model.family == "flux2" and spec.training.batch_size == 1
    assert (spec.training.base_quantization, spec.training.offload, spec.training.gradient_checkpointing) == \
        ("fp8", "blocks", "on")
