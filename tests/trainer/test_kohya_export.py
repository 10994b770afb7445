"""The kohya writer: the metadata other tools read, per family, and the tensors it refuses to guess at."""

from __future__ import annotations

import datetime

import pytest
import torch
from safetensors import safe_open

from conftest import base_spec
from lora_operator.api import CheckpointFormat, resolve_spec
from lora_trainer.adapters import make_adapter
from lora_trainer.export import UnknownTensorKind, fuse, kohya_state_dict, peft_layers
from lora_trainer.families import get_family

pytestmark = pytest.mark.trainer

SD_IMPL = "https://github.com/Stability-AI/generative-models"
EXPECTED = {  # the values sd-scripts (train_network.py, library/sai_model_spec.py) writes for a LoRA of each family
    "sd15": {"ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_network_module": "networks.lora",
             "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.implementation": "diffusers",
             "modelspec.prediction_type": "epsilon"},
    "sdxl": {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False", "ss_network_module": "networks.lora",
             "modelspec.architecture": "stable-diffusion-xl-v1-base/lora", "modelspec.implementation": SD_IMPL,
             "modelspec.prediction_type": "epsilon"},
    "flux": {"ss_base_model_version": "flux1", "ss_v2": "False", "ss_network_module": "networks.lora_flux",
             "modelspec.architecture": "flux-1-dev/lora",
             "modelspec.implementation": "https://github.com/black-forest-labs/flux"},
}


def export_metadata(tmp_path, tiny_models, family, *, metadata=None, change_parts=None, **overrides):
    """Attach a LoRA to the tiny `family` model, write its kohya file, return the file's metadata."""
    fam = get_family(family)
    parts = fam.load(tiny_models(family), torch.float32)
    if change_parts:
        change_parts(parts)
    adapter = make_adapter("lora")
    spec = resolve_spec(base_spec(family, tiny_models(family), tmp_path, tmp_path / "o", **overrides))
    adapter.attach(fam, parts, spec)
    written = dict(adapter.export(tmp_path / "ckpt", [CheckpointFormat.KOHYA], metadata or {"resolution": "32x48"}))
    with safe_open(str(written["kohya"]), "pt") as fh:
        return fh.metadata()


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_kohya_metadata_names_the_base_model_as_sd_scripts_and_modelspec_do(family, tmp_path, tiny_models):
    before = datetime.datetime.now(datetime.UTC).date().isoformat()
    meta = export_metadata(tmp_path, tiny_models, family)
    assert {k: meta.get(k) for k in EXPECTED[family]} == EXPECTED[family]
    if family == "flux":
        assert "modelspec.prediction_type" not in meta  # flow matching: sd-scripts writes none
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.title"] == meta["modelspec.trigger_phrase"] == "tkxw"  # captionPrefix "tkxw, "
    assert meta["modelspec.resolution"] == meta["ss_resolution"] == "32x48"
    assert meta["modelspec.date"] in {before, datetime.datetime.now(datetime.UTC).date().isoformat()}
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4.0"


def test_kohya_metadata_follows_prediction_type_guidance_title_trigger_and_build_date(tmp_path, tiny_models,
                                                                                      monkeypatch):
    def v_prediction(parts):
        parts.noise_scheduler = type(parts.noise_scheduler).from_config(parts.noise_scheduler.config,
                                                                        prediction_type="v_prediction")

    meta = export_metadata(tmp_path / "v", tiny_models, "sd15", change_parts=v_prediction)
    assert (meta["ss_base_model_version"], meta["modelspec.prediction_type"]) == ("sd_v1_v", "v")

    meta = export_metadata(tmp_path / "s", tiny_models, "flux",
                           change_parts=lambda parts: parts.denoiser.register_to_config(guidance_embeds=False))
    assert meta["modelspec.architecture"] == "flux-1-schnell/lora"  # no guidance embedding: schnell

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    meta = export_metadata(tmp_path / "t", tiny_models, "sdxl", dataset={"captionPrefix": ""},
                           metadata={"resolution": "32x32", "output_name": "corgi"})
    assert (meta["modelspec.title"], meta["ss_output_name"]) == ("corgi", "corgi")
    assert "modelspec.trigger_phrase" not in meta
    assert meta["modelspec.date"] == "1970-01-02"


class Two(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 4)
        self.conv = torch.nn.Conv2d(32, 32, 3)  # large enough for LoKr's Tucker core at rank 2


@pytest.mark.parametrize(("config", "kind"), [
    ("LoraConfig", "lora_B.bias"),
    ("LoHaConfig", "hada_t1"),  # a Tucker core (use_effective_conv2d): no layer of the kohya format holds one
    ("LoKrConfig", "lokr_t2"),
])
def test_kohya_export_refuses_tensors_it_has_no_place_for(config, kind):
    import peft

    torch.manual_seed(0)
    extra = {"lora_bias": True} if config == "LoraConfig" else {"use_effective_conv2d": True}
    model = peft.get_peft_model(Two(), getattr(peft, config)(r=2, target_modules=["proj", "conv"], **extra))
    layers = {"unet": peft_layers(model)}
    assert any(kind in k for k in layers["unet"][0])
    with pytest.raises(UnknownTensorKind, match=rf"unet\..*{kind}: the kohya format holds"):
        kohya_state_dict(layers, get_family("sd15").kohya_layer)


def test_kohya_export_refuses_a_layer_missing_a_factor():
    from peft import LoHaConfig, get_peft_model

    layers = peft_layers(get_peft_model(Two(), LoHaConfig(r=2, target_modules=["proj"])))
    weights = {k: v for k, v in layers.weights.items() if not k.endswith("hada_w2_b")}
    with pytest.raises(UnknownTensorKind, match=r"unet\.base_model\.model\.proj: has \[.*\], not the complete"):
        kohya_state_dict({"unet": layers._replace(weights=weights)}, get_family("sd15").kohya_layer)


def test_flux_refuses_lokr_on_a_fused_layer_naming_it():
    from lora_trainer.kohya_tensors import LayerPart, fuse_parts

    parts = [LayerPart("lokr", {"lokr_w1": torch.ones(2, 2), "lokr_w2": torch.ones(2, 2)}, 2.0)] * 3
    with pytest.raises(ValueError, match="lora_unet_double_blocks_0_img_attn_qkv: fuses 3 modules, and a lokr"):
        fuse_parts("lora_unet_double_blocks_0_img_attn_qkv", parts)


def test_flux_refuses_to_name_a_layer_outside_the_blocks():
    flux = get_family("flux")
    assert flux.kohya_layer("transformer", "single_transformer_blocks.3.proj_out").name == \
        "lora_unet_single_blocks_3_linear2"
    for module in ("proj_out", "x_embedder", "context_embedder", "time_text_embed.timestep_embedder.linear_1"):
        with pytest.raises(ValueError, match=f"transformer.{module}: no Flux.1 kohya"):
            flux.kohya_layer("transformer", module)


def test_fused_lora_adds_each_parts_update_to_its_rows_also_when_their_scales_differ():
    torch.manual_seed(0)
    pieces = [(torch.randn(2, 6), torch.randn(5, 2), 4.0), (torch.randn(3, 6), torch.randn(7, 3), 1.5)]
    down, up, alpha = fuse(pieces)
    assert down.shape == (5, 6) and up.shape == (12, 5)
    expected = torch.cat([a / d.shape[0] * u @ d for d, u, a in pieces])
    torch.testing.assert_close(alpha / down.shape[0] * up @ down, expected)


def test_flux_export_refuses_a_fused_layer_with_only_some_parts_adapted(tiny_models):
    from peft import LoraConfig

    flux = get_family("flux")
    transformer = flux.load(tiny_models("flux"), torch.float32).denoiser
    transformer.add_adapter(LoraConfig(r=2, target_modules=["attn.to_q", "attn.to_k"], init_lora_weights=False))
    with pytest.raises(ValueError, match=r"lora_unet_\w+: fuses [34] modules but only parts \[0, 1\] have a LoRA"):
        kohya_state_dict({"transformer": peft_layers(transformer)}, flux.kohya_layer)
