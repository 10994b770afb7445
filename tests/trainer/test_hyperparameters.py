"""Each hyperparameter of `training` / `network` takes effect in the loop (tiny SD1.5 runs on CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lora_operator.api import ModelFamily, Training
from lora_trainer.schedule import Plan, count_steps, total_steps

pytestmark = pytest.mark.trainer


def lora_b(recipe, component="unet"):
    """The LoRA B (up) weights of a component, by key."""
    return {k: v for k, v in recipe.adapter.state_dict().items() if k.startswith(component + ".") and "lora_B" in k}


def spy(recipe, name):
    """Wrap recipe.family.<name>, recording its positional arguments."""
    calls = []
    original = getattr(recipe.family, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    setattr(recipe.family, name, wrapper)
    return calls


def test_explicit_steps_are_the_optimizer_steps(train):
    recipe = train(training={"steps": 3})
    assert recipe.plan.total_steps == 3
    assert recipe.progress.report.step == 3
    state = recipe.optimizer.state_dict()["state"]
    assert {int(s["step"]) for s in state.values()} == {3}


def test_auto_steps_follow_the_scenario_preset_per_family(train):
    recipe = train(training={"steps": "auto"}, setup_only=True)
    assert recipe.plan.total_steps == 175 * 3
    samples = recipe.data.train
    assert total_steps(Training(), ModelFamily.SDXL, samples) == 350 * 3
    assert total_steps(Training(), ModelFamily.FLUX, samples) == 500 + 50 * 3


def test_tensorart_preset_makes_one_pass_per_epoch_and_scales_with_repeats_and_batch(train):
    recipe = train(training={"steps": "auto", "stepsPreset": "tensorart", "epochs": 2, "batchSize": 2},
                   dataset={"repeats": 2}, checkpoints={"formats": ["kohya"]})
    assert recipe.plan.total_steps == 2 * math.ceil(3 * 2 / 2)
    entries = recipe.manifest.manifest.checkpoints
    assert [(e.name, e.step) for e in entries] == [("epoch-0001", 3), ("epoch-0002", 6)]
    once = train(training={"steps": "auto", "stepsPreset": "tensorart", "epochs": 2, "batchSize": 2},
                 dataset={"repeats": 1}, setup_only=True)
    assert once.plan.total_steps == 2 * math.ceil(3 / 2)


def test_the_run_states_its_step_count_in_progress_json_and_divides_auto_steps_by_the_gpus(train):
    recipe = train(training={"steps": "auto", "stepsPreset": "tensorart", "epochs": 2, "batchSize": 2},
                   dataset={"repeats": 2}, setup_only=True)
    progress = json.loads((recipe.outputs.workdir / "progress.json").read_text())
    assert progress["plan"] == "3 images x 2 repeats x 2 epochs / batch 2 = 6 steps"
    samples, tensorart = recipe.data.train, Training(steps_preset="tensorart", epochs=2, gradient_accumulation=2)
    assert count_steps(tensorart, ModelFamily.SD15, samples, world=2) == (
        3, "3 images x 2 repeats x 2 epochs / batch 1 x accumulation 2 x 2 GPUs = 3 steps")  # 12 micro-batches
    assert total_steps(Training(), ModelFamily.SD15, samples, world=2) == 175 * 3 // 2 + 1
    # Class images share each pass, so an epoch of the tensorart preset draws them too.
    assert count_steps(Training(steps_preset="tensorart", epochs=2), ModelFamily.SD15, samples,
                       regularization=samples[:1]) == (16, "(3 images x 2 repeats + 1 class images (2 draws)) "
                                                           "x 2 epochs / batch 1 = 16 steps")
    assert total_steps(Training(steps=100), ModelFamily.SD15, samples, world=2) == 100  # as written


def test_epochs_split_steps_and_checkpoint_at_each_epoch_end(train):
    recipe = train(training={"steps": 4, "epochs": 2}, checkpoints={"formats": ["kohya"]})
    assert [(e.name, e.step) for e in recipe.manifest.manifest.checkpoints] == [("epoch-0001", 2), ("epoch-0002", 4)]
    assert Plan.make(steps=10, epochs=3).epoch_end(1) == 4 and Plan.make(steps=2, epochs=5).epochs == 2


def test_checkpoints_every_epochs_skips_epochs_but_keeps_the_last(train):
    recipe = train(training={"steps": 3, "epochs": 3}, checkpoints={"everyEpochs": 2, "formats": ["kohya"]})
    assert [e.name for e in recipe.manifest.manifest.checkpoints] == ["epoch-0002", "epoch-0003"]


def test_repeats_put_each_image_that_many_times_in_a_data_pass(train):
    recipe = train(dataset={"repeats": 3}, setup_only=True)
    first_pass = [i for b in range(9) for i in recipe.stream.batch(b)]
    assert sorted(first_pass) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_batch_size_and_gradient_accumulation_shape_the_denoiser_calls(train):
    def record(recipe):
        recipe.calls = spy(recipe, "predict")

    recipe = train(training={"steps": 2, "batchSize": 2, "gradientAccumulation": 2}, after_setup=record)
    assert len(recipe.calls) == 4  # 2 steps x 2 micro-batches
    assert [args[1].shape[0] for args in recipe.calls] == [2, 1, 2, 1]  # 3 images: each pass ends with a 1-batch


@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_unet_learning_rate_sets_the_first_adam_step_size(train, lr):
    recipe = train(training={"steps": 1, "unetLearningRate": lr, "optimizer": {"weightDecay": 0.0}})
    biggest = max(v.abs().max().item() for v in lora_b(recipe).values())
    assert biggest == pytest.approx(lr, rel=1e-3)  # Adam's first step moves each weight by lr (B starts at 0)


def test_text_encoder_learning_rate_trains_a_text_lora_at_that_rate(train):
    recipe = train(training={"steps": 1, "textEncoderLearningRate": 3e-3, "textEncoderRatio": 1.0,
                             "optimizer": {"weightDecay": 0.0}})
    text = lora_b(recipe, "text_encoder")
    assert text and max(v.abs().max().item() for v in text.values()) == pytest.approx(3e-3, rel=1e-3)
    assert not lora_b(train(training={"steps": 1, "textEncoderLearningRate": 0.0, "textEncoderRatio": 1.0}),
                      "text_encoder")


def test_text_encoder_ratio_stops_text_training_after_its_share_of_steps(train):
    te = {"textEncoderLearningRate": 1e-2}
    half = train(training={"steps": 4, "textEncoderRatio": 0.5, **te})
    two = train(training={"steps": 2, "textEncoderRatio": 1.0, **te})
    four = train(training={"steps": 4, "textEncoderRatio": 1.0, **te})
    for key, value in lora_b(half, "text_encoder").items():
        assert torch.equal(value, lora_b(two, "text_encoder")[key])
    assert any(not torch.equal(v, lora_b(four, "text_encoder")[k]) for k, v in lora_b(half, "text_encoder").items())


SCHEDULE_SHAPES = {
    "constant": lambda lrs: len(set(lrs)) == 1,
    "constant_with_warmup": lambda lrs: lrs[0] < lrs[1] == lrs[-1],
    "linear": lambda lrs: lrs[0] < lrs[1] and lrs[-1] < lrs[2],
    "cosine": lambda lrs: lrs[0] < lrs[1] and lrs[-1] < lrs[3] < lrs[2],
    "cosine_with_restarts": lambda lrs: any(b > a for a, b in zip(lrs[2:], lrs[3:], strict=False)),
    "polynomial": lambda lrs: lrs[0] < lrs[1] and lrs[-1] < lrs[2],
}


@pytest.mark.parametrize("kind", list(SCHEDULE_SHAPES))
def test_each_lr_scheduler_type_shapes_the_learning_rate(train, kind):
    lrs = []

    def record(recipe):
        step = recipe.lr_scheduler.step

        def wrapped():
            lrs.append(recipe.optimizer.param_groups[0]["lr"])
            step()

        recipe.lr_scheduler.step = wrapped

    train(training={"steps": 8, "lrScheduler": {"type": kind, "warmupSteps": 1, "cycles": 3}},
          checkpoints={"formats": ["kohya"]}, after_setup=record)
    assert len(lrs) == 8
    assert SCHEDULE_SHAPES[kind](lrs), lrs


@pytest.mark.parametrize("kind,cls", [("adamw", "AdamW"), ("prodigy", "Prodigy"), ("adafactor", "Adafactor"),
                                      ("lion", "Lion")])
def test_each_optimizer_is_used_and_moves_the_weights(train, kind, cls):
    recipe = train(training={"steps": 1, "optimizer": {"type": kind}, "unetLearningRate": 1e-2})
    assert type(recipe.optimizer.optimizer).__name__ == cls
    assert any(v.abs().max() > 0 for v in lora_b(recipe).values())


def test_adamw8bit_without_bitsandbytes_is_refused_with_the_package_name(train):
    pytest.importorskip("torch")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("bitsandbytes is installed")
    from lora_trainer.errors import MissingPackageError

    with pytest.raises(MissingPackageError, match="bitsandbytes"):
        train(training={"optimizer": {"type": "adamw8bit"}}, setup_only=True)


def test_dim_and_alpha_set_rank_and_scale(train):
    recipe = train(network={"dim": 8, "alpha": 2}, training={"steps": 1})
    folder = recipe.outputs.workdir / "checkpoints/epoch-0001"
    kohya = load_file(folder / "kohya.safetensors")
    downs = [v for k, v in kohya.items() if k.endswith("lora_down.weight")]
    assert downs and all(v.shape[0] == 8 for v in downs)
    assert {v.item() for k, v in kohya.items() if k.endswith(".alpha")} == {2.0}
    q = recipe.parts.denoiser.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert q.scaling["default"] == pytest.approx(2 / 8)


def test_conv_dim_and_alpha_apply_only_to_conv_layers(train):
    recipe = train(type="locon", network={"dim": 4, "alpha": 4, "convDim": 2, "convAlpha": 1}, training={"steps": 1})
    conv1 = recipe.parts.denoiser.down_blocks[0].resnets[0].conv1
    assert conv1.r["default"] == 2 and conv1.scaling["default"] == pytest.approx(0.5)
    to_q = recipe.parts.denoiser.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert to_q.r["default"] == 4 and to_q.scaling["default"] == pytest.approx(1.0)


@pytest.mark.parametrize("setting", [{"noiseOffset": 0.3}, {"multiresNoise": {"iterations": 3, "discount": 0.5}},
                                     {"minSnrGamma": 1.0}, {"captionDropout": 1.0}, {"shuffleTags": True}])
def test_noise_loss_and_caption_settings_change_the_trained_weights(train, setting):
    plain = lora_b(train(training={"steps": 2}))
    changed = lora_b(train(training={"steps": 2, **setting}))
    assert any(not torch.equal(v, changed[k]) for k, v in plain.items())


def test_noise_offset_shifts_whole_channels_and_multires_adds_low_frequencies():
    from lora_trainer.noise import make_noise

    latents = torch.zeros(64, 4, 16, 16)
    plain = make_noise(latents, Training(), torch.Generator().manual_seed(0))
    offset = make_noise(latents, Training(noise_offset=0.5), torch.Generator().manual_seed(0))
    assert offset.mean(dim=(2, 3)).std() > 3 * plain.mean(dim=(2, 3)).std()
    pyramid = make_noise(latents, Training(multires_noise={"iterations": 4, "discount": 0.8}),
                         torch.Generator().manual_seed(0))
    assert pyramid.std().item() == pytest.approx(1.0, abs=1e-3)
    pool = torch.nn.functional.avg_pool2d
    assert pool(pyramid, 8).std() > 2 * pool(plain, 8).std()


def test_min_snr_gamma_caps_the_weight_of_low_noise_timesteps(train):
    recipe = train(setup_only=True)
    t = torch.tensor([10, 500, 990])
    weights = recipe.family.loss_weights(recipe.parts, t, 5.0)
    assert weights[0] < 0.1 and weights[2] == pytest.approx(1.0)
    assert torch.equal(recipe.family.loss_weights(recipe.parts, t, 0.0), torch.ones(3))


def test_caption_dropout_trains_with_empty_captions(train):
    def record(recipe):
        recipe.calls = spy(recipe, "encode_prompts")

    dropped = train(training={"steps": 2, "captionDropout": 1.0}, after_setup=record)
    assert dropped.calls and all(c == "" for args in dropped.calls for c in args[1])
    kept = train(training={"steps": 2}, after_setup=record)
    assert all(c.startswith("tkxw, a square") for args in kept.calls for c in args[1])


def test_same_seed_gives_byte_identical_adapters_and_another_seed_does_not(train, tmp_path):
    def kohya_bytes(recipe):
        return (recipe.outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors").read_bytes()

    spec = {"training": {"steps": 2, "textEncoderLearningRate": 1e-3, "textEncoderRatio": 1.0},
            "network": {"dropout": 0.1}, "dataset": {"flip": True}}
    first = kohya_bytes(train(**spec, tmp=tmp_path / "same"))
    second = kohya_bytes(train(**spec, tmp=tmp_path / "same"))  # same output URI: the same spec hash
    assert first == second
    other = {**spec, "training": {**spec["training"], "seed": 8}}
    assert load_file(first_path := tmp_path / "same/work/checkpoints/epoch-0001/kohya.safetensors")
    other_path = train(**other).outputs.workdir / "checkpoints/epoch-0001/kohya.safetensors"
    a, b = load_file(first_path), load_file(other_path)
    assert any(not torch.equal(a[k], b[k]) for k in a if "lora_up" in k)


def test_mixed_precision_falls_back_to_float32_on_cpu_and_maps_to_dtypes_on_gpu(train, monkeypatch):
    from lora_trainer.precision import resolve_precision

    recipe = train(training={"steps": 1, "mixedPrecision": "bf16"})
    assert recipe.mixed_precision == "no" and recipe.parts.denoiser.dtype == torch.float32
    assert resolve_precision("fp16", "cuda") == ("fp16", torch.float16)
    # No GPU here: what the GPU reports is stood in for, to check the dtype mapping alone.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("bf16", "cuda") == ("bf16", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("bf16", "cuda") == ("fp16", torch.float16)


def test_gradient_checkpointing_on_recomputes_but_trains_the_same_weights(train):

    on = train(training={"steps": 2, "gradientCheckpointing": "on"})
    off = train(training={"steps": 2, "gradientCheckpointing": "off"})
    assert on.parts.denoiser.is_gradient_checkpointing and not off.parts.denoiser.is_gradient_checkpointing
    for key, value in lora_b(on).items():
        torch.testing.assert_close(value, lora_b(off)[key])


def test_gradient_checkpointing_auto_turns_on_only_when_the_estimated_peak_would_not_fit():
    from lora_trainer.families import get_family
    from lora_trainer.precision import checkpointing_wanted

    cuda, h100, mp_1024 = torch.device("cuda"), 79.6, 1024 * 1024 / 1e6

    def auto(family: str, images: int, memory_gib: float, resident_gib: float) -> bool:
        return checkpointing_wanted("auto", get_family(family), cuda, images=images, megapixels=mp_1024,
                                    memory_gib=memory_gib, resident_gib=resident_gib)

    # Flux at 1024 px on an 80 GB H100 (31.4 GiB of weights resident): one image fits, two do not.
    assert auto("flux", 1, h100, 31.4) is False
    assert auto("flux", 2, h100, 31.4) is True
    # SDXL at 1024 px, 4 images: fits an 80 GB GPU, not a 24 GB one.
    assert auto("sdxl", 4, h100, 6.5) is False
    assert auto("sdxl", 4, 24.0, 6.5) is True
    # Explicit settings win; on CPU auto is off.
    assert checkpointing_wanted("on", get_family("sd15"), torch.device("cpu"), images=1, megapixels=0.26) is True
    assert checkpointing_wanted("off", get_family("flux"), cuda, images=8, megapixels=4.0, memory_gib=24,
                                resident_gib=30) is False
    assert checkpointing_wanted("auto", get_family("flux"), torch.device("cpu"), images=8, megapixels=4.0) is False


def test_latent_caching_does_not_change_what_is_trained(train):
    cached = train(training={"steps": 2, "cacheLatents": True})
    fresh = train(training={"steps": 2, "cacheLatents": False})
    assert cached.encoder._latents and not fresh.encoder._latents
    for key, value in lora_b(cached).items():
        torch.testing.assert_close(value, lora_b(fresh)[key])


def test_validation_loss_is_recorded_per_checkpoint_on_the_held_out_image(train):
    recipe = train(training={"steps": 2, "epochs": 2}, dataset={"validationSplit": 0.34},
                   checkpoints={"formats": ["kohya"]})
    assert len(recipe.data.validation) == 1 and len(recipe.data.train) == 3  # 3 images: none held out
    assert recipe.manifest.manifest.images == 3 and recipe.manifest.manifest.validation_images == 0
    losses = [e.validation_loss for e in recipe.manifest.manifest.checkpoints]
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses) and losses[0] != losses[1]
    assert recipe.validation_loss() == recipe.validation_loss()  # fixed timesteps and noise


def test_regularization_images_join_training_at_the_prior_loss_weight(train, tmp_path):
    from conftest import write_dataset

    reg = write_dataset(tmp_path / "reg", n=2)

    def run(weight):
        return train(dataset={"regularization": {"uri": reg.as_uri(), "weight": weight}}, training={"steps": 3})

    light, heavy = run(0.0), run(3.0)
    assert len(light.data.regularization) == 2 and all(s.regularization for s in light.samples[3:])
    assert any(not torch.equal(v, lora_b(heavy)[k]) for k, v in lora_b(light).items())


@pytest.mark.parametrize("kind", ["lora", "embedding"])
def test_class_images_train_with_their_own_caption_or_the_class_prompt(train, tmp_path, kind):
    from conftest import write_dataset

    reg = write_dataset(tmp_path / "reg", n=2)
    (reg / "img0.txt").write_text("a photo of a dog, sitting")
    (reg / "img1.txt").unlink()  # no caption of its own: the class prompt
    extra = {"embedding": {"token": "<tkxw>", "initialPhrase": "square"}} if kind == "embedding" else {}
    calls = []

    def record(recipe):
        calls.append(spy(recipe, "encode_prompts"))
        recipe.encoder.cache_text = False  # every draw reaches encode_prompts

    train(type=kind, **extra, after_setup=record,
          dataset={"captionPrefix": "tkxw, ", "tags": {"prepend": ["best"], "append": ["detailed"]},
                   "regularization": {"uri": reg.as_uri(), "classPrompt": "a photo of a dog"}},
          training={"steps": 5})  # 3 training + 2 class images: one pass at batch 1
    prompts = [p for call in calls[0] for p in call[1]]
    assert "a photo of a dog, sitting" in prompts and "a photo of a dog" in prompts
    own = [p for p in prompts if "square" in p]
    assert len(own) == 3 and all(p.startswith(("tkxw, best, a square", "<tkxw>")) for p in own)
    assert all(p.endswith("detailed") for p in own)
    assert len(prompts) == 5  # class prompts carry no trigger, tag or embedding token


def test_embedding_trains_only_the_new_token_rows(train, tiny_models):
    from transformers import CLIPTextModel

    recipe = train(type="embedding", embedding={"token": "<tkxw>", "initialPhrase": "square", "vectors": 3},
                   training={"steps": 2, "unetLearningRate": 1e-2})
    weight = recipe.parts.text_encoders[0].get_input_embeddings().weight.detach()
    base = CLIPTextModel.from_pretrained(tiny_models("sd15") / "text_encoder").get_input_embeddings().weight
    new_ids = recipe.parts.tokenizers[0].convert_tokens_to_ids(recipe.adapter.tokens)
    assert len(set(new_ids)) == 3 and weight.shape[0] >= base.shape[0]
    others = torch.ones(base.shape[0], dtype=torch.bool)
    others[[i for i in new_ids if i < base.shape[0]]] = False
    assert torch.equal(weight[: base.shape[0]][others], base.detach()[others])
    assert not torch.equal(recipe.adapter.vectors()[0], recipe.adapter._rows[0][2][new_ids])


def test_compile_on_compiles_the_repeated_blocks_and_trains_the_same_weights(train, monkeypatch):
    # The transformer blocks only: what `compile` does is the same for every block list, and the UNets'
    # default list (ResNet blocks too, test_speed.py's slow tests) takes minutes to compile on a cold CPU cache.
    monkeypatch.setenv("LORA_COMPILE_BLOCKS", "BasicTransformerBlock")
    compiled = train(training={"steps": 2, "compile": "on"})
    eager = train(training={"steps": 2, "compile": "off"})
    auto_on_cpu = train(training={"steps": 1})

    def compiled_blocks(recipe) -> list[str]:
        return [type(m).__name__ for m in recipe.parts.denoiser.modules() if getattr(m, "_compiled_call_impl", None)]

    assert compiled.compiled and compiled_blocks(compiled)
    assert set(compiled_blocks(compiled)) == set(compiled.parts.denoiser._repeated_blocks)
    assert not eager.compiled and not compiled_blocks(eager)
    assert not auto_on_cpu.compiled  # auto: only with a GPU
    for key, value in lora_b(compiled).items():
        reference = lora_b(eager)[key]
        assert reference.norm() > 0  # trained away from the zero init
        # Fused kernels round differently: the same update up to float32 rounding, not bit for bit.
        assert (value - reference).norm() / reference.norm() < 1e-3, key
