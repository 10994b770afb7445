"""What the platform lets a job choose: its trainer image (the operator's, or one on
LORA_TRAINER_ALLOWED_IMAGES, from the job or its template) and where its file:// URIs may point
(nowhere by default, under LORA_FILE_URI_ROOT when the platform sets one)."""

from __future__ import annotations

import pytest

from lora_operator.api import Reason, resolve_spec
from lora_operator.config import ConfigError, OperatorConfig
from lora_operator.policy import first_refused_field, image_allowed, refusal

MINIMAL = {"baseModel": {"family": "sd15", "uri": "s3://models/sd15"}, "dataset": {"uri": "s3://datasets/x/"},
           "output": {"uri": "s3://loras/"}}
TRAINER = "ghcr.io/lora-operator/lora-trainer:0.1.0"


def config(**env: str) -> OperatorConfig:
    return OperatorConfig.from_env({"LORA_TRAINER_IMAGE": TRAINER, **env})


def spec(template: dict | None = None, **fields):
    return resolve_spec({**MINIMAL, **fields}, template)


def test_the_default_trainer_image_is_always_allowed():
    assert image_allowed(TRAINER, config())
    assert refusal(spec(placement={"image": TRAINER}), config()) is None


def test_an_image_off_the_list_is_refused_naming_the_field():
    refused = refusal(spec(placement={"image": "docker.io/evil/miner:latest"}), config())
    assert refused is not None
    reason, message = refused
    assert reason is Reason.NOT_ALLOWED
    assert message.startswith("spec.placement.image: 'docker.io/evil/miner:latest' is not an allowed trainer image")
    assert "LORA_TRAINER_ALLOWED_IMAGES" in message and "trainer.allowedImages" in message


@pytest.mark.parametrize(("image", "allowed"), [
    ("registry.example.com/lora/trainer:1.2", True),
    ("registry.example.com/lora/sub/trainer@sha256:abc", True),
    ("registry.example.com/lora-evil/trainer:1", False),
    ("registry.example.com/other:1", False),
    ("ghcr.io/team/exact:2", True),
    ("ghcr.io/team/exact:3", False),
    ("ghcr.io/team/exact:2-rc", False),
])
def test_list_entries_are_exact_names_or_prefixes_ending_in_a_star(image, allowed):
    cfg = config(LORA_TRAINER_ALLOWED_IMAGES='["registry.example.com/lora/*", "ghcr.io/team/exact:2"]')
    assert image_allowed(image, cfg) is allowed
    assert (refusal(spec(placement={"image": image}), cfg) is None) is allowed


def test_a_template_image_is_checked_like_the_jobs_own():
    cfg = config(LORA_TRAINER_ALLOWED_IMAGES='["registry.example.com/lora/*"]')
    platform = {"placement": {"image": "registry.example.com/lora/flux:1"}}
    assert refusal(spec(platform), cfg) is None
    tenant = {"placement": {"image": "docker.io/evil/miner:1"}}
    assert first_refused_field(spec(tenant), cfg).field == "placement.image"


def test_without_a_root_every_file_uri_is_refused_naming_its_field():
    for fields, field in [({"dataset": {"uri": "file:///etc"}}, "dataset.uri"),
                          ({"baseModel": {"family": "sd15", "uri": "file:///models/sd15"}}, "baseModel.uri"),
                          ({"output": {"uri": "file:///tmp/out/"}}, "output.uri"),
                          ({"dataset": {"uri": "s3://d/x/", "regularization": {"uri": "file:///reg"}}},
                           "dataset.regularization.uri"),
                          ({"dataset": {"uri": "s3://d/x/", "autoCaption": {"model": "file:///tagger"}}},
                           "dataset.autoCaption.model"),
                          ({"baseModel": {"family": "sd15", "uri": "s3://m/x.safetensors", "config": "file:///etc"}},
                           "baseModel.config"),
                          ({"baseModel": {"family": "flux", "uri": "s3://m/f.safetensors",
                                          "components": "file:///etc"}}, "baseModel.components")]:
        refused = first_refused_field(spec(**fields), config())
        assert refused is not None and refused.field == field
        assert "file:// URIs are for local runs" in str(refused) and "LORA_FILE_URI_ROOT" in str(refused)


@pytest.mark.parametrize(("uri", "allowed"), [
    ("file:///cache/models/sd15", True),
    ("file:///cache/models", True),
    ("file:///cache/models-other/x", False),
    ("file:///cache/models/%2e%2e/%2e%2e/etc", False),
    ("file:///etc", False),
])
def test_with_a_root_file_uris_are_confined_under_it(uri, allowed):
    cfg = config(LORA_FILE_URI_ROOT="/cache/models")
    refused = first_refused_field(spec(baseModel={"family": "sd15", "uri": uri}), cfg)
    assert (refused is None) is allowed
    if not allowed:
        assert refused.field == "baseModel.uri" and "must lie under /cache/models" in str(refused)


def test_s3_and_hf_uris_need_no_root():
    assert refusal(spec(baseModel={"family": "sd15", "uri": "hf://org/name"}), config()) is None


@pytest.mark.parametrize(("env", "why"), [
    ({"LORA_TRAINER_ALLOWED_IMAGES": "registry/lora/*"}, "not a JSON list"),
    ({"LORA_TRAINER_ALLOWED_IMAGES": '[""]'}, "at least 1 character"),
    ({"LORA_FILE_URI_ROOT": "cache"}, "should match pattern"),
    ({"LORA_FILE_URI_ROOT": "/"}, "should match pattern"),
])
def test_bad_policy_settings_stop_the_operator_naming_the_variable(env, why):
    with pytest.raises(ConfigError, match=f"^{next(iter(env))}: .*{why}"):
        config(**env)
