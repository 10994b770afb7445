"""training.offload in the API: its values, and a refusal naming the field for what it cannot run with."""

from __future__ import annotations

import pytest

from lora_operator.api import SpecError, resolve_spec


def spec_for(family: str = "flux", **extra) -> dict:
    return {"baseModel": {"family": family, "uri": "s3://m/x"}, "dataset": {"uri": "s3://d/x/"},
            "output": {"uri": "s3://out/loras/"}, **extra}


def test_offload_defaults_to_none_and_takes_blocks_and_auto():
    assert resolve_spec(spec_for()).training.offload == "none"
    for value in ("blocks", "auto"):
        assert resolve_spec(spec_for(training={"offload": value})).training.offload == value
    with pytest.raises(SpecError, match=r"spec\.training\.offload"):
        resolve_spec(spec_for(training={"offload": "disk"}))


@pytest.mark.parametrize(("extra", "message"), [
    ({"network": {"dora": True}}, "blocks cannot train network.dora"),
    ({"training": {"baseQuantization": "nf4"}}, "blocks cannot move bitsandbytes nf4 weights"),
    ({"training": {"gradientCheckpointing": "off"}}, "blocks needs gradient checkpointing"),
    ({"training": {"compile": "on"}}, "blocks cannot run compiled blocks"),
])
def test_blocks_with_what_it_cannot_run_with_is_refused_naming_the_field(extra, message):
    training = {**extra.get("training", {}), "offload": "blocks"}
    with pytest.raises(SpecError, match=rf"spec\.training\.offload: {message}"):
        resolve_spec(spec_for(**{**extra, "training": training}))
    resolve_spec(spec_for(**{**extra, "training": {**training, "offload": "auto"}}))  # auto: the trainer decides


def test_blocks_runs_with_fp8_lora_loha_and_sdxl():
    resolve_spec(spec_for(training={"offload": "blocks", "baseQuantization": "fp8"}))
    resolve_spec(spec_for(type="loha", training={"offload": "blocks"}))
    resolve_spec(spec_for("sdxl", type="locon", network={"convDim": 4}, training={"offload": "blocks"}))
