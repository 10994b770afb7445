"""LoHa, LoKr and DoRA kohya files: every key lands, by ComfyUI's key rules, on a module of the original model
(LDM UNet, BFL Flux, CLIP), and applied by ComfyUI's formulas (`kohya_rules.comfy_merged`) gives exactly the
weights peft's own merge gives the trained model. A DoRA's diffusers folder loads with load_lora_weights."""

from __future__ import annotations

import pytest
import torch
from kohya_rules import (
    bfl_flux_checkpoint,
    comfy_clip_key_map,
    comfy_merged,
    comfy_model_key_map,
    layers_of,
    plain_and_merged,
    train_kohya,
)

pytestmark = pytest.mark.trainer

CONV = {"dim": 4, "alpha": 2, "convDim": 2, "convAlpha": 1}
RUNS = {
    "sd15-loha": ("sd15", {"type": "loha", "network": CONV}),
    "sd15-lokr": ("sd15", {"type": "lokr", "network": CONV}),
    "sd15-dora": ("sd15", {"type": "locon", "network": {**CONV, "dora": True}}),
    "sdxl-lokr": ("sdxl", {"type": "lokr", "network": {"dim": 2, "alpha": 4}}),
    "flux-loha": ("flux", {"type": "loha", "network": {"dim": 2, "alpha": 3}}),
    "flux-dora": ("flux", {"type": "lora", "network": {"dim": 2, "alpha": 3, "dora": True}}),
}
SUFFIXES = {
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "lokr": {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"},
    "dora": {"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"},
}


def targets(recipe, family: str) -> tuple[dict[str, tuple[dict, dict, str]], int]:
    """{kohya layer: (plain weights, peft-merged weights, weight key)} by ComfyUI's key rules, for the denoiser
    (Flux in BFL's layout) and the trained text encoders; and how many weights peft's merge changed."""
    out, changed = {}, 0
    plain, merged = plain_and_merged(recipe.parts.denoiser)
    if family == "flux":
        config = recipe.parts.denoiser.config
        plain = bfl_flux_checkpoint(plain, config.num_layers, config.num_single_layers)
        merged = bfl_flux_checkpoint(merged, config.num_layers, config.num_single_layers)
    changed += sum(not torch.equal(plain[k], merged[k]) for k in plain)
    for layer, key in comfy_model_key_map({k: tuple(v.shape) for k, v in plain.items()}).items():
        out[layer] = (plain, merged, key)
    encoders = recipe.parts.text_encoders[: recipe.family.trainable_text_encoders]
    clips = dict(zip(["clip_l", "clip_g"] if family == "sdxl" else ["clip_l"], encoders, strict=False))
    names = {id(m): n for encoder in encoders for n, m in encoder.named_modules()}
    tables = {clip: plain_and_merged(encoder) for clip, encoder in clips.items()}
    for p, m in tables.values():
        changed += sum(not torch.equal(p[k], m[k]) for k in p)
    for layer, (clip, module) in comfy_clip_key_map(clips).items():
        out[layer] = (*tables[clip], names[id(module)] + ".weight")
    return out, changed


@pytest.mark.parametrize("run", list(RUNS))
def test_kohya_file_applied_by_comfyuis_formulas_gives_pefts_merged_weights(run, tmp_path, tiny_models,
                                                                              dataset_dir):
    family, overrides = RUNS[run]
    recipe, kohya, meta = train_kohya(tmp_path, family, tiny_models(family), dataset_dir, **overrides)
    layers = layers_of(kohya)
    kind = run.split("-")[1]
    assert {suffix for parts in layers.values() for suffix in parts} <= SUFFIXES[kind]
    assert any(key.endswith(("hada_w1_a", "lokr_w1", "dora_scale")) for key in kohya)
    table, changed = targets(recipe, family)
    assert set(layers) <= set(table), f"keys on no module: {sorted(set(layers) - set(table))[:5]}"
    moved = 0
    for name, parts in layers.items():
        plain, merged, key = table[name]
        if "dora_scale" in parts:
            assert parts["dora_scale"].shape == (plain[key].shape[0], *[1] * (plain[key].ndim - 1)), name
        got = comfy_merged(plain[key], parts)
        torch.testing.assert_close(got, merged[key], rtol=0, atol=2e-6, msg=name)
        moved += not torch.equal(got, plain[key])
    # Every weight peft's merge changes has its layer (the last CLIP layers, unused by SDXL, get no gradient).
    assert moved == changed > 0
    if family == "sd15":  # the conv layers are adapted too (convDim)
        assert any(parts["alpha"].item() == 1.0 and "down_blocks_0_resnets_0_conv1" in name
                   for name, parts in layers.items())
    if kind in ("loha", "lokr"):
        assert meta["ss_network_module"] == "lycoris.kohya" and f'"algo": "{kind}"' in meta["ss_network_args"]
    else:
        assert '"dora_wd": true' in meta["ss_network_args"]


def test_flux_fuses_loha_and_dora_parts_into_the_bfl_layers(tmp_path, tiny_models, dataset_dir):
    _, kohya, _ = train_kohya(tmp_path, "flux", tiny_models("flux"), dataset_dir,
                              type="loha", network={"dim": 2, "alpha": 3})
    layers = layers_of(kohya)
    qkv = layers["lora_unet_double_blocks_0_img_attn_qkv"]
    assert qkv["hada_w1_b"].shape[0] == 6 and qkv["alpha"].item() == 9.0  # 3 parts of rank 2: alpha / rank stays 3 / 2
    assert layers["lora_unet_single_blocks_0_linear1"]["hada_w2_b"].shape[0] == 8


def test_dora_diffusers_folder_loads_in_diffusers_with_the_trained_outputs(tmp_path, tiny_models, dataset_dir):
    from diffusers import DiffusionPipeline

    from conftest import base_spec, run_recipe_for

    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "out", type="locon",
                     network={**CONV, "dora": True})
    recipe = run_recipe_for(tmp_path, spec)
    folder = recipe.outputs.workdir / "checkpoints/epoch-0001"
    assert (folder / "kohya.safetensors").is_file()
    pipe = DiffusionPipeline.from_pretrained(tiny_models("sd15"))
    pipe.load_lora_weights(str(folder / "diffusers"))
    torch.manual_seed(0)
    args = (torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 77, 32))
    with torch.no_grad():
        plain = DiffusionPipeline.from_pretrained(tiny_models("sd15")).unet(*args).sample
        torch.testing.assert_close(pipe.unet(*args).sample, recipe.parts.denoiser(*args).sample)
    assert not torch.allclose(plain, pipe.unet(*args).sample)


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_loha_and_lokr_write_only_the_kohya_file(kind, tmp_path, tiny_models, dataset_dir):
    from conftest import base_spec, run_recipe_for

    spec = base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "out", type=kind)
    del spec["checkpoints"]["formats"]  # the default: every format the type can be written in
    recipe = run_recipe_for(tmp_path, spec)
    folder = recipe.outputs.workdir / "checkpoints/epoch-0001"
    assert (folder / "kohya.safetensors").is_file() and not (folder / "diffusers").exists()
    assert [c["format"] for c in recipe.manifest.manifest.model_dump()["checkpoints"]] == ["kohya"]


@pytest.mark.parametrize("config", ["LoHaConfig", "LoKrConfig"])
def test_diffusers_cannot_load_a_peft_loha_or_lokr_folder_for_these_pipelines(config, tmp_path, tiny_models):
    """Why loha / lokr are written as kohya only: the PEFT folder they would make does not load."""
    import peft
    from diffusers import DiffusionPipeline

    from lora_trainer.export import peft_layers, write_diffusers

    pipe = DiffusionPipeline.from_pretrained(tiny_models("sd15"))
    unet = pipe.unet
    unet.add_adapter(getattr(peft, config)(r=2, target_modules=["to_q"], init_weights=False))
    folder = write_diffusers(tmp_path / "d", {"unet": peft_layers(unet)},
                             {"unet": unet.peft_config["default"].to_dict()}).parent
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):
        DiffusionPipeline.from_pretrained(tiny_models("sd15")).load_lora_weights(str(folder))


def every_family_and_type():
    from lora_operator.api.families import FAMILIES

    for row in FAMILIES.values():
        for kind in row.adapters:
            if kind != "embedding":
                yield row.name, kind, False
        yield row.name, "lora", True


@pytest.mark.parametrize(("family", "kind", "dora"), list(every_family_and_type()))
def test_every_type_a_family_offers_attaches_and_exports_in_its_formats(family, kind, dora, tmp_path, tiny_models):
    from conftest import base_spec
    from lora_operator.api import resolve_spec
    from lora_trainer.adapters import make_adapter
    from lora_trainer.families import get_family

    conv = {"convDim": 2} if kind in ("locon", "loha", "lokr") and family != "flux" else {}
    fam = get_family(family)
    text = fam.trainable_text_encoders > 0  # the LLM / T5-only families keep their encoders frozen (refused)
    spec = base_spec(family, tiny_models(family), tmp_path, tmp_path / "o", type=kind,
                     network={"dim": 2, "alpha": 2, "dora": dora, **conv},
                     training={"textEncoderLearningRate": 1e-3 if text else 0.0, "textEncoderRatio": 1.0})
    del spec["checkpoints"]["formats"]
    resolved = resolve_spec(spec)
    adapter = make_adapter(kind)
    adapter.attach(fam, fam.load(tiny_models(family), torch.float32), resolved)
    written = dict(adapter.export(tmp_path / "ckpt", resolved.checkpoints.formats, {"resolution": "32x32"}))
    assert set(written) == set(resolved.checkpoints.formats)
    assert set(written) == ({"kohya"} if kind in ("loha", "lokr") else {"kohya", "diffusers"})
    from safetensors import safe_open

    with safe_open(str(written["kohya"]), "pt") as fh:
        keys = list(fh.keys())  # noqa: SIM118 (safe_open is no dict)
    prefix = {"loha": ".hada_w1_a", "lokr": ".lokr_w1", "locon": ".lora_down.weight"}.get(kind, ".lora_down.weight")
    assert any(k.endswith(prefix) for k in keys) and text == any(k.startswith("lora_te") for k in keys)
    assert dora == any(k.endswith(".dora_scale") for k in keys)
