"""Tiny Flux.2 dev: one double- and one single-stream Flux.2 block, a Mistral-Small-3 encoder, the Flux.2 VAE.

The real FLUX.2-dev folder holds a `Flux2Transformer2DModel` (8 double + 48 single blocks, guidance
embedding), an `AutoencoderKLFlux2` (32 latent channels, batch-norm statistics of the 2x2 patched
latents), a `Mistral3ForConditionalGeneration` text encoder (Mistral-Small-3.1, vision tower included)
whose hidden states 10, 20 and 30 are stacked into the conditioning, and its processor. The tiny one
keeps every layer kind with widths of 16-64; the encoder keeps 30 layers (the pipeline reads layer 30).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lora_operator.api.families import family_row

from .parts import _bytes_to_unicode

TEXT_HIDDEN = 16
"""Hidden size of the tiny text encoders: the conditioning is 3 x 16 = 48 wide (3 stacked layers)."""
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)
"""Renders the pipelines' messages (string or typed-part content; Klein passes enable_thinking, ignored)."""


def write_byte_tokenizer(folder: Path, cls, specials: list[str], **kwargs) -> None:
    """A byte-level BPE tokenizer with no merges (every byte is a token) plus `specials`, and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(_bytes_to_unicode())}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    tokenizer = cls(tokenizer_object=backend, model_max_length=512, **kwargs)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)


def flux2_vae():
    """An AutoencoderKLFlux2 with 32 latent channels and non-trivial batch-norm statistics."""
    from diffusers import AutoencoderKLFlux2

    channels = family_row("flux2").latent_channels
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=channels, norm_num_groups=32,
        sample_size=32,
    )
    with torch.no_grad():  # the real statistics are far from 0 / 1: make the normalisation show
        vae.bn.running_mean.copy_(torch.randn(4 * channels) * 0.1)
        vae.bn.running_var.copy_(torch.rand(4 * channels) + 0.5)
    return vae


def flux2_transformer(guidance_embeds: bool):
    """A Flux2Transformer2DModel with one block of each kind (every layer kind of the real one)."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * family_row("flux2").latent_channels, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * TEXT_HIDDEN,
        timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=guidance_embeds,
    )


def flux2_scheduler():
    """The scheduler config of the Flux.2 repos: exponential dynamic shift, mu given by the pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential",
                                           base_shift=0.5, max_shift=1.15)


def build(path: Path) -> None:
    """Write the tiny model's diffusers folder to `path`."""
    from diffusers import Flux2Pipeline
    from transformers import (
        AutoProcessor,
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
        PreTrainedTokenizerFast,
    )

    write_byte_tokenizer(path / "tokenizer", PreTrainedTokenizerFast, ["<s>", "</s>", "<pad>", "[IMG]"],
                         bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer = AutoProcessor.from_pretrained(path / "tokenizer")
    vocab = len(tokenizer)
    text = MistralConfig(vocab_size=vocab, hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=30,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    vision = PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 image_size=32, patch_size=16)
    image_token = tokenizer.convert_tokens_to_ids("[IMG]")
    text_encoder = Mistral3ForConditionalGeneration(
        Mistral3Config(text_config=text, vision_config=vision, image_token_index=image_token, spatial_merge_size=1,
                       projector_hidden_act="gelu"))
    pipe = Flux2Pipeline(scheduler=flux2_scheduler(), vae=flux2_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                         transformer=flux2_transformer(guidance_embeds=True))
    pipe.save_pretrained(path, safe_serialization=True)


def mark(path: Path, **fields) -> None:
    """Set `fields` in the folder's model_index.json (the pipeline config), as a variant's repo has them."""
    index = path / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), **fields}, indent=2))
