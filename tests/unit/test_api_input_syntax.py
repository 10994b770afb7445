"""What the schema refuses before a job is queued: URIs that climb out of their prefix or name
an impossible bucket, image sizes no family trains at, template names that are no object name.

The same patterns are in the CRD, so the apiserver refuses these at `kubectl apply`
(tests/cluster/bad_inputs.py); here the pydantic side, which local runs and the operator use.
"""

from __future__ import annotations

import pytest

from lora_operator.api import SpecError, resolve_spec
from lora_operator.api.uris import MAX_IMAGE_SIDE

MINIMAL = {"baseModel": {"family": "sd15", "uri": "s3://models/sd15"}, "dataset": {"uri": "s3://datasets/x/"},
           "output": {"uri": "s3://loras/"}}


def with_(**spec) -> dict:
    return {**MINIMAL, **spec}


@pytest.mark.parametrize(("spec", "field"), [
    (with_(dataset={"uri": "s3://datasets/team-a/../team-b/"}), "dataset.uri"),
    (with_(dataset={"uri": "s3://datasets/.."}), "dataset.uri"),
    (with_(dataset={"uri": "s3://datasets/./x/"}), "dataset.uri"),
    (with_(dataset={"uri": "s3://datasets//x/"}), "dataset.uri"),
    (with_(dataset={"uri": "s3://Team_A/x/"}), "dataset.uri"),
    (with_(dataset={"uri": "s3://" + "b" * 64 + "/x/"}), "dataset.uri"),
    (with_(dataset={"uri": "file:///data/../etc"}), "dataset.uri"),
    (with_(baseModel={"family": "sd15", "uri": "s3://models/../secret-model"}), "baseModel.uri"),
    (with_(baseModel={"family": "sd15", "uri": "hf://../x"}), "baseModel.uri"),
    (with_(baseModel={"family": "sd15", "uri": "hf://org/name/../other/x.safetensors"}), "baseModel.uri"),
    (with_(baseModel={"family": "flux", "uri": "s3://m/x.safetensors", "components": "s3://m/../y/"}),
     "baseModel.components"),
    (with_(baseModel={"family": "sd15", "uri": "s3://m/x.safetensors", "config": "hf://org/name//x"}),
     "baseModel.config"),
    (with_(output={"uri": "s3://loras/../other-team/"}), "output.uri"),
    (with_(output={"uri": "hf://org/name"}), "output.uri"),
    (with_(dataset={"uri": "s3://datasets/x/", "regularization": {"uri": "s3://datasets/x/../y/"}}),
     "dataset.regularization.uri"),
    (with_(dataset={"uri": "s3://datasets/x/", "autoCaption": {"model": "s3://models/../t/"}}),
     "dataset.autoCaption.model"),
])
def test_a_uri_with_dot_segments_or_a_bad_bucket_is_refused_naming_the_field(spec, field):
    with pytest.raises(SpecError) as err:
        resolve_spec(spec)
    assert err.value.field == field and "should match pattern" in str(err.value)


@pytest.mark.parametrize("uri", [
    "s3://datasets/ünïcødé dir/with spaces/", "s3://d/x", "s3://datasets/a..b/.hidden/...x/", "file:///mnt/data/",
])
def test_odd_but_fine_uris_pass(uri):
    assert resolve_spec(with_(dataset={"uri": uri})).dataset.uri == uri


@pytest.mark.parametrize("model", ["hf://org/name", "hf://gpt2", "hf://org/name@refs/pr/1",
                                   "hf://org/name/x.safetensors", "hf://org/name/sub/x.safetensors@v1.0"])
def test_hf_model_ids_pass(model):
    assert resolve_spec(with_(baseModel={"family": "sd15", "uri": model})).base_model.uri == model


@pytest.mark.parametrize(("spec", "field"), [
    (with_(dataset={"uri": "s3://datasets/x/", "crop": {"size": "99999x99999"}}), "dataset.crop.size"),
    (with_(dataset={"uri": "s3://datasets/x/", "crop": {"size": f"{MAX_IMAGE_SIDE + 1}x512"}}), "dataset.crop.size"),
    (with_(previews={"size": f"512x{MAX_IMAGE_SIDE + 1}"}), "previews.size"),
])
def test_sizes_above_the_largest_side_are_refused(spec, field):
    with pytest.raises(SpecError) as err:
        resolve_spec(spec)
    assert err.value.field == field


def test_the_largest_side_itself_passes():
    size = f"{MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}"
    spec = resolve_spec(with_(dataset={"uri": "s3://datasets/x/", "crop": {"size": size}}, previews={"size": size}))
    assert spec.dataset.crop.size == spec.previews.size == size


@pytest.mark.parametrize("name", ["..", ".", "a/b", "Sd15-Character", "../sd15-character", "a..b", ""])
def test_a_template_name_that_is_no_object_name_is_refused(name):
    with pytest.raises(SpecError) as err:
        resolve_spec(with_(template=name))
    assert err.value.field == "template"
