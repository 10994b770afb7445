"""The API models: documented, strict, and refusing what the CRD's CEL rules refuse."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel, ValidationError

from lora_operator.api import (
    GROUP,
    KINDS,
    ClusterLoraTrainingTemplate,
    Crop,
    JobSpec,
    LoraTrainingJob,
    LoraTrainingTemplate,
    Previews,
    RetryPolicy,
    SpecError,
    Training,
    resolve_spec,
)
from lora_operator.api.base import ApiModel


def reachable_models(roots) -> set[type[BaseModel]]:
    """Every model the kinds contain, at any depth: the ones the CRD schema is made of."""
    seen: set[type[BaseModel]] = set()
    todo = [*roots]
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp in seen:
                continue
            seen.add(tp)
            todo += [f.annotation for f in tp.model_fields.values()]
        todo += typing.get_args(tp)
    return seen


MODELS = sorted((m for m in reachable_models(KINDS) if issubclass(m, ApiModel)), key=lambda m: m.__name__)
ENVELOPE = {"api_version", "kind", "metadata"}
MINIMAL = {"baseModel": {"family": "sd15", "uri": "s3://m/sd15"}, "dataset": {"uri": "s3://d/x/"},
           "output": {"uri": "s3://loras/"}}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_model_and_field_has_a_docstring(model: type[BaseModel]):
    assert (model.__doc__ or "").strip(), f"{model.__name__} has no docstring"
    undocumented = [n for n, f in model.model_fields.items() if n not in ENVELOPE and not (f.description or "").strip()]
    assert not undocumented, f"{model.__name__}: fields without a docstring: {undocumented}"


def test_resource_kinds_declare_their_names():
    assert [(k.KIND, k.PLURAL, k.SCOPE, k.SHORT_NAMES) for k in KINDS] == [
        ("LoraTrainingJob", "loratrainingjobs", "Namespaced", ("ltj", "lora")),
        ("LoraTrainingTemplate", "loratrainingtemplates", "Namespaced", ("ltt",)),
        ("ClusterLoraTrainingTemplate", "clusterloratrainingtemplates", "Cluster", ("cltt",)),
    ]
    assert GROUP == "lora-operator.io"


def test_unknown_fields_are_refused_so_typos_are_errors():
    with pytest.raises(ValidationError, match="unitLearningRate"):
        Training.model_validate({"unitLearningRate": 1e-4})


def test_camel_case_in_the_resource_snake_case_in_python():
    spec = {**MINIMAL, "retryPolicy": {"maxRetries": 1}}
    job = LoraTrainingJob.model_validate({"metadata": {"name": "a"}, "spec": spec})
    assert job.spec.retry_policy.max_retries == 1
    assert job.to_resource()["spec"]["retryPolicy"]["maxRetries"] == 1


@pytest.mark.parametrize("steps", ["auto", 1, 5000])
def test_steps_accepts_auto_or_a_positive_count(steps):
    assert Training(steps=steps).steps == steps


@pytest.mark.parametrize("steps", [0, -5, "many"])
def test_steps_refuses_zero_negative_and_other_words(steps):
    with pytest.raises(ValidationError):
        Training(steps=steps)


def test_bucket_min_side_above_max_side_is_refused_even_against_the_default_max():
    with pytest.raises(ValidationError, match="bucketMinSide must not exceed bucketMaxSide"):
        Crop(bucket_min_side=2048)
    assert Crop(bucket_min_side=2048, bucket_max_side=4096).bucket_min_side == 2048


def test_backoff_above_max_backoff_is_refused():
    with pytest.raises(ValidationError, match="backoffSeconds must not exceed maxBackoffSeconds"):
        RetryPolicy(backoff_seconds=60, max_backoff_seconds=30)


def test_more_than_64_preview_images_per_epoch_are_refused():
    with pytest.raises(ValidationError, match="must not exceed 64"):
        Previews(prompts=["p"] * 5, images_per_prompt=16)
    assert Previews(prompts=["p"] * 4, images_per_prompt=16).images_per_prompt == 16


def test_conv_dim_with_a_plain_lora_is_refused_naming_the_field():
    with pytest.raises(SpecError, match=r"spec\.network\.convDim: .*locon"):
        resolve_spec({**MINIMAL, "network": {"convDim": 8}})
    assert resolve_spec({**MINIMAL, "type": "locon", "network": {"convDim": 8}}).network.conv_dim == 8


def test_conv_dim_is_allowed_when_the_template_makes_the_job_a_locon():
    spec = resolve_spec({**MINIMAL, "template": "t", "network": {"convDim": 8}}, {"type": "locon"})
    assert spec.type == "locon"


def test_embedding_is_required_with_type_embedding_and_refused_otherwise():
    with pytest.raises(SpecError, match=r"spec\.embedding"):
        resolve_spec({**MINIMAL, "type": "embedding"})
    with pytest.raises(SpecError, match=r"spec\.embedding"):
        resolve_spec({**MINIMAL, "embedding": {"initialPhrase": "dog"}})


def test_embedding_initial_phrase_is_at_most_8_characters():
    with pytest.raises(SpecError, match="initialPhrase|initial_phrase"):
        resolve_spec({**MINIMAL, "type": "embedding", "embedding": {"initialPhrase": "a long phrase"}})


def test_template_kinds_share_the_template_spec():
    for kind in (LoraTrainingTemplate, ClusterLoraTrainingTemplate):
        tmpl = kind.model_validate({"metadata": {"name": "t"}, "spec": {"description": "d", "network": {"dim": 8}}})
        assert tmpl.spec.network.dim == 8
    with pytest.raises(ValidationError):
        LoraTrainingTemplate.model_validate({"metadata": {"name": "t"}, "spec": {"priority": 3}})


def test_job_spec_defaults_for_the_apiserver_defaulted_fields():
    spec = JobSpec.model_validate(MINIMAL)
    assert (spec.priority, spec.suspend) == (0, False)
