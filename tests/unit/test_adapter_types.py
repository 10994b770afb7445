"""LoHa, LoKr and DoRA in the API: which families and formats take them, and a refusal naming the field where not."""

from __future__ import annotations

import pytest

from lora_operator.api import SpecError, resolve_spec


def spec_for(family: str, **extra) -> dict:
    return {"baseModel": {"family": family, "uri": "s3://m/x"}, "dataset": {"uri": "s3://d/x/"},
            "output": {"uri": "s3://out/loras/"}, **extra}


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_loha_and_lokr_default_to_the_kohya_format_alone(kind):
    assert resolve_spec(spec_for("sd15", type=kind)).checkpoints.formats == ["kohya"]
    assert resolve_spec(spec_for("sd15", type=kind, checkpoints={"everyEpochs": 2})).checkpoints.formats == ["kohya"]
    assert resolve_spec(spec_for("sd15", type="lora")).checkpoints.formats == ["kohya", "diffusers"]


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_a_diffusers_format_asked_for_loha_or_lokr_is_refused_naming_the_field(kind):
    with pytest.raises(SpecError, match=rf"spec\.checkpoints\.formats: diffusers cannot hold a {kind} adapter "
                                        r".*written as: kohya"):
        resolve_spec(spec_for("sdxl", type=kind, checkpoints={"formats": ["kohya", "diffusers"]}))
    assert resolve_spec(spec_for("sdxl", type=kind, checkpoints={"formats": ["kohya"]})).type == kind


def test_lokr_is_refused_on_flux_and_loha_is_not():
    with pytest.raises(SpecError, match=r"spec\.type: lokr is not available for family flux"):
        resolve_spec(spec_for("flux", type="lokr"))
    assert resolve_spec(spec_for("flux", type="loha")).type == "loha"


def test_conv_dim_of_loha_and_lokr_needs_a_family_with_convolution_layers():
    assert resolve_spec(spec_for("sd15", type="loha", network={"convDim": 4})).network.conv_dim == 4
    assert resolve_spec(spec_for("sdxl", type="lokr", network={"convDim": 4})).network.conv_dim == 4
    with pytest.raises(SpecError, match=r"spec\.network\.convDim: family flux has no convolution layers"):
        resolve_spec(spec_for("flux", type="loha", network={"convDim": 4}))


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_dora_is_a_lora_field_on_every_family(family):
    assert resolve_spec(spec_for(family, network={"dora": True})).network.dora is True
    for kind, extra in (("loha", {}), ("lokr", {}), ("embedding", {"embedding": {"initialPhrase": "cat"}})):
        if kind == "lokr" and family == "flux":
            continue
        with pytest.raises(SpecError, match=r"spec\.network\.dora: .*needs spec\.type: lora or locon"):
            resolve_spec(spec_for(family, type=kind, network={"dora": True}, **extra))


def test_dora_on_an_fp8_base_is_refused_naming_the_field_and_nf4_is_not():
    with pytest.raises(SpecError, match=r"spec\.training\.baseQuantization: fp8 cannot train network\.dora"):
        resolve_spec(spec_for("flux", network={"dora": True}, training={"baseQuantization": "fp8"}))
    resolve_spec(spec_for("flux", network={"dora": True}, training={"baseQuantization": "nf4"}))
    resolve_spec(spec_for("flux", training={"baseQuantization": "fp8"}))
