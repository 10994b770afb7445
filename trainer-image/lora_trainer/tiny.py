"""Tiny random-weight diffusers models, built from configs in seconds (no downloads).

Tests, `make demo` and the end-to-end test train on these. Each family gets the
same component layout as its full-size model (so the trainer cannot tell them
apart) with 32-64 channels. The tokenizers are written from scratch: CLIP gets a
byte-level BPE vocabulary with no merges (every character is a token), T5 a
Unigram model over single characters.

Example:
    >>> from lora_trainer.tiny import build_tiny_model
    >>> build_tiny_model("sd15", Path("/tmp/tiny-sd15"))
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lora_operator.api import ModelFamily
from lora_operator.api.families import family_row

CLIP_VOCAB_SIZE = 1000
T5_VOCAB_SIZE = 1000
TEXT_HIDDEN = 32


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters GPT-2 / CLIP BPE use for the bytes 0-255."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_clip_tokenizer(folder: Path) -> None:
    """Write a CLIP tokenizer (vocab.json + merges.txt) whose tokens are single bytes."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), pad_token="<|endoftext|>",
        model_max_length=77,
    )
    tokenizer.save_pretrained(folder)


def write_t5_tokenizer(folder: Path) -> None:
    """Write a T5 tokenizer: a Unigram model over printable characters, Metaspace pre-tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(ord("!"), ord("~") + 1)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer = T5TokenizerFast(
        tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
        model_max_length=32,
    )
    tokenizer.save_pretrained(folder)


def _clip_config(vocab_size: int, eos_token_id: int, projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        projection_dim=TEXT_HIDDEN if projection else 512,
        hidden_act="gelu",
    )


def _vae(latent_channels: int = 4, **kwargs):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=latent_channels,
        sample_size=32,
        **kwargs,
    )


def _clip_encoder(folder: Path, projection: bool = False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = _clip_config(len(tokenizer), eos, projection)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config), tokenizer


def _ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)


def _build_sd15(path: Path) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    write_clip_tokenizer(path / "tokenizer")
    text_encoder, tokenizer = _clip_encoder(path / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_ddpm(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)


def _build_sdxl(path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    write_clip_tokenizer(path / "tokenizer")
    write_clip_tokenizer(path / "tokenizer_2")
    text_encoder, tokenizer = _clip_encoder(path / "tokenizer")
    text_encoder_2, tokenizer_2 = _clip_encoder(path / "tokenizer_2", projection=True)
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TEXT_HIDDEN,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN,
        transformer_layers_per_block=(1, 1),
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(force_upcast=False),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_ddpm(),
    )
    pipe.save_pretrained(path, safe_serialization=True)


def _build_flux(path: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    write_clip_tokenizer(path / "tokenizer")
    write_t5_tokenizer(path / "tokenizer_2")
    text_encoder, tokenizer = _clip_encoder(path / "tokenizer")
    tokenizer_2 = T5TokenizerFast.from_pretrained(path / "tokenizer_2")
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=T5_VOCAB_SIZE, d_model=TEXT_HIDDEN, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
    )
    latent_channels = family_row("flux").latent_channels  # 16, as the real VAE: the conformance test checks it
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    vae = _vae(latent_channels, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
               use_post_quant_conv=False)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(path, safe_serialization=True)


BUILDERS = {ModelFamily.SD15: _build_sd15, ModelFamily.SDXL: _build_sdxl, ModelFamily.FLUX: _build_flux}


def build_tiny_model(family: ModelFamily | str, path: Path, seed: int = 0) -> Path:
    """Write a random-weight diffusers model folder of `family` to `path`.

    Args:
        family: sd15, sdxl or flux.
        path: Destination folder (created).
        seed: Seed of the random weights; the same seed writes the same weights.

    Returns:
        `path`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BUILDERS[ModelFamily(family)](path)
    return path


def build_tiny_tagger(path: Path, labels: dict[int, str], biases: list[float], image_size: int = 32) -> Path:
    """Write a tiny ViT tagger (a transformers image classifier) whose logits are `biases` for any image.

    The classifier weights are zero, so each label's probability is ``sigmoid(bias)``
    whatever the image: tests know exactly which tags `data.autocaption` keeps.

    Args:
        path: Destination folder (created).
        labels: id2label of the tags, e.g. ``{0: "cat", 1: "black_hair"}``.
        biases: One logit per label.
        image_size: Input side of the image processor.

    Returns:
        `path`.
    """
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    config = ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, id2label=dict(labels),
                       label2id={v: k for k, v in labels.items()}, problem_type="multi_label_classification")
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(biases))
    model.save_pretrained(path)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return Path(path)


def main() -> None:
    """`python -m lora_trainer.tiny FAMILY PATH`: write a tiny model (used by `make demo`)."""
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m lora_trainer.tiny sd15|sdxl|flux PATH")
    print(build_tiny_model(sys.argv[1], Path(sys.argv[2])))


if __name__ == "__main__":
    main()
