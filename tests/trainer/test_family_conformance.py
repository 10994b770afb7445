"""Every row of the family table: its trainer module, tiny model, presets and CRD enum agree with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from family_conformance import check_family

from lora_operator.api.families import FAMILIES

pytestmark = pytest.mark.trainer

JOB_CRD = Path(__file__).resolve().parents[2] / "crds/lora-operator.io_loratrainingjobs.yaml"
"""The generated job CRD as committed."""


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_agrees_with_its_row(name, tiny_models):
    check_family(name, tiny_models(name))


def test_the_crd_enum_is_the_table():
    doc = yaml.safe_load(JOB_CRD.read_text())
    spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["baseModel"]["properties"]["family"]["enum"] == list(FAMILIES)


def test_a_family_with_three_text_encoders_gets_a_lora_on_each(tiny_models, tmp_path):
    """No code assumes two text encoders: a third one is adapted and named text_encoder_3, not dropped."""
    import copy

    import torch

    from conftest import base_spec
    from lora_operator.api import resolve_spec
    from lora_trainer.adapters import make_adapter
    from lora_trainer.families import get_family
    from lora_trainer.families.base import text_component, text_index

    family = get_family("sd15")
    family.trainable_text_encoders = 3  # this object only
    parts = family.load(tiny_models("sd15"), torch.float32)
    parts.text_encoders += [copy.deepcopy(parts.text_encoders[0]) for _ in range(2)]
    spec = resolve_spec(base_spec("sd15", tiny_models("sd15"), tmp_path, tmp_path / "out",
                                  training={"textEncoderLearningRate": 1e-3, "textEncoderRatio": 1.0}))
    adapter = make_adapter("lora")
    adapter.attach(family, parts, spec)
    assert set(adapter.modules) == {"unet", "text_encoder", "text_encoder_2", "text_encoder_3"}
    assert all(any("lora_A" in n for n, _ in encoder.named_parameters()) for encoder in parts.text_encoders)
    assert [text_index(text_component(i)) for i in range(4)] == [0, 1, 2, 3]


def test_noise_settings_work_on_latents_with_three_spatial_dimensions():
    """Offset and pyramid noise take any number of spatial dimensions (a video family's B, C, T, H, W)."""
    import torch

    from lora_operator.api import Training
    from lora_trainer.noise import make_noise

    latents = torch.zeros(2, 4, 3, 8, 8)
    training = Training(noise_offset=0.5, multires_noise={"iterations": 3, "discount": 0.5})
    noise = make_noise(latents, training, torch.Generator().manual_seed(0))
    assert noise.shape == latents.shape and torch.isfinite(noise).all()
    plain = make_noise(torch.zeros(2, 4, 8, 8), Training(noise_offset=0.5), torch.Generator().manual_seed(0))
    assert plain.shape == (2, 4, 8, 8)
