"""The family table: an unknown family is an error everywhere, and each row is the one source of its facts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lora_operator.api import SpecError, resolve_spec, scenario_steps
from lora_operator.api.families import (
    FAMILIES,
    FamilyRow,
    StepPreset,
    UnknownFamilyError,
    family_row,
    register,
    unregister,
)
from lora_trainer.data.buckets import target_size
from lora_trainer.families import get_family

MINIMAL = {"baseModel": {"family": "sd15", "uri": "s3://m/sd15"}, "dataset": {"uri": "s3://d/x/"},
           "output": {"uri": "s3://out/loras/"}}
JOB_CRD = Path(__file__).resolve().parents[2] / "crds/lora-operator.io_loratrainingjobs.yaml"
"""The generated job CRD as committed."""


def spec_for(family: str, **extra) -> dict:
    return {**MINIMAL, "baseModel": {"family": family, "uri": "s3://m/x"}, **extra}


def test_an_unknown_family_gets_no_other_familys_preset():
    with pytest.raises(UnknownFamilyError, match="unknown family 'sd3'; known: sd15, sdxl, flux"):
        scenario_steps("sd3", 10)


def test_an_unknown_family_is_refused_by_the_api_the_buckets_and_the_trainer_registry():
    with pytest.raises(SpecError, match=r"spec\.baseModel\.family: .*unknown family 'sd3'"):
        resolve_spec(spec_for("sd3"))
    from lora_operator.api import Crop

    with pytest.raises(UnknownFamilyError, match="sd3"):
        target_size(100, 100, Crop(), "sd3")
    with pytest.raises(UnknownFamilyError, match="sd3"):
        get_family("sd3")


def test_step_presets_come_from_the_rows():
    assert [scenario_steps("sd15", 10), scenario_steps("sdxl", 40), scenario_steps("flux", 10)] == [
        1750, 350 * 30 + 75 * 10, 500 + 50 * 10]
    assert StepPreset(per_image=2, base=1, up_to=3, beyond=1).steps(5) == 1 + 6 + 2


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_row_is_in_the_crd_enum_and_the_explain_text(name):
    from lora_operator.api import JobSpec

    doc = yaml.safe_load(JOB_CRD.read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert name in schema["baseModel"]["properties"]["family"]["enum"]
    assert name in schema["baseModel"]["properties"]["family"]["description"]
    assert name in JobSpec.model_json_schema()["$defs"]["BaseModelSpec"]["properties"]["family"]["enum"]


def test_a_registered_row_is_known_to_the_api_and_the_schema_until_it_is_taken_out():
    row = FamilyRow(name="toy", text_encoders=("clip-l",), latent_channels=4, latent_dims=2, resolution=64,
                    sizes=((64, 64),), steps=StepPreset(per_image=3), adapters=("lora",), formats=("kohya",),
                    pipeline="StableDiffusionPipeline", prediction="epsilon", trainer="x:Y")
    register(row)
    try:
        assert resolve_spec(spec_for("toy", checkpoints={"formats": ["kohya"]})).base_model.family == "toy"
        assert scenario_steps("toy", 4) == 12
        with pytest.raises(SpecError, match=r"spec\.checkpoints\.formats: diffusers is not written for family toy"):
            resolve_spec(spec_for("toy"))  # the default formats include diffusers, which the row lacks
        with pytest.raises(SpecError, match=r"spec\.type: embedding is not available for family toy"):
            resolve_spec(spec_for("toy", type="embedding", embedding={"initialPhrase": "cat"},
                                  checkpoints={"formats": ["kohya"]}))
        with pytest.raises(ValueError, match="already exists"):
            register(row)
    finally:
        unregister("toy")
    with pytest.raises(SpecError, match="unknown family 'toy'"):
        resolve_spec(spec_for("toy"))


def test_an_adapter_type_the_familys_row_lacks_is_refused_naming_the_field():
    with pytest.raises(SpecError,
                       match=r"spec\.type: locon is not available for family flux .*lora, loha, embedding") as err:
        resolve_spec(spec_for("flux", type="locon", network={"convDim": 2}))
    rules = yaml.safe_load(JOB_CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"]["x-kubernetes-validations"]
    crd_message = next(r["message"] for r in rules if r.get("fieldPath") == ".type" and "locon" in r["message"])
    # The apiserver and the operator say the same: the CRD rule names every family without locon.
    head, _, families = crd_message.partition(" for family ")
    assert str(err.value).startswith(f"{head} for family flux ") and "flux" in families.split(" or ")
    assert "locon" in family_row("sd15").adapters
    assert resolve_spec(spec_for("sd15", type="locon", network={"convDim": 2})).network.conv_dim == 2


def test_typed_field_messages_are_the_crd_rules_messages():
    from lora_operator.api.adapters import TYPED_FIELDS

    doc = yaml.safe_load(JOB_CRD.read_text())
    rules = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    messages = {r["message"] for r in rules}
    breaking = {  # a spec that sets each field for a type it is not allowed with
        "embedding": spec_for("sd15", type="lora", embedding={"initialPhrase": "cat"}, network={"convDim": 2}),
        "network.convDim": spec_for("sd15", type="lora", network={"convDim": 2}),
        "network.dora": spec_for("sd15", type="loha", network={"dora": True}),
    }
    assert set(breaking) == {field.path for field in TYPED_FIELDS}
    for field in TYPED_FIELDS:
        assert field.forbidden in messages and (field.missing is None or field.missing in messages)
        with pytest.raises(SpecError) as err:
            resolve_spec(breaking[field.path])
        assert err.value.field == field.path and field.forbidden in str(err.value)


def test_every_adapter_type_has_a_trainer_adapter_and_every_row_names_known_types():
    from lora_operator.api import AdapterType
    from lora_trainer.adapters import ADAPTERS

    assert set(ADAPTERS) == set(AdapterType)
    assert all(set(row.adapters) <= set(AdapterType) for row in FAMILIES.values())


def test_the_printed_step_formula_is_the_presets_own_count():
    from lora_operator.api import scenario_formula, scenario_steps

    assert scenario_formula("sd15", 6) == "175 x 6 images" and scenario_steps("sd15", 6) == 175 * 6
    assert scenario_formula("sdxl", 40) == "350 x 30 + 75 x 10 images" and scenario_steps("sdxl", 40) == 350 * 30 + 750
    assert scenario_formula("flux", 6) == "500 + 50 x 6 images" and scenario_steps("flux", 6) == 500 + 300
