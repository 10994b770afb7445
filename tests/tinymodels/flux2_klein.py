"""Tiny Flux.2 Klein: the Flux.2 transformer without guidance embedding, a Qwen3 encoder, the Flux.2 VAE.

FLUX.2-klein-base-4B / -9B hold the same component kinds as FLUX.2-dev, with a `Qwen3ForCausalLM`
(Qwen3-4B / Qwen3-8B) whose hidden states 9, 18 and 27 are stacked, and no guidance embedding (real
classifier-free guidance). The step-distilled FLUX.2-klein-4B / -9B differ in their pipeline config
(``is_distilled: true`` in model_index.json): `build(path, distilled=True)` writes that variant.
"""

from __future__ import annotations

from pathlib import Path

from .flux2 import TEXT_HIDDEN, flux2_scheduler, flux2_transformer, flux2_vae, mark, write_byte_tokenizer


def build(path: Path, distilled: bool = False) -> None:
    """Write the tiny model's diffusers folder to `path` (the base variant unless `distilled`)."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

    write_byte_tokenizer(path / "tokenizer", Qwen2TokenizerFast, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                         pad_token="<|endoftext|>", eos_token="<|im_end|>", unk_token=None)
    tokenizer = Qwen2TokenizerFast.from_pretrained(path / "tokenizer")
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=32, num_hidden_layers=28,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True))
    pipe = Flux2KleinPipeline(scheduler=flux2_scheduler(), vae=flux2_vae(), text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=flux2_transformer(guidance_embeds=False))
    pipe.save_pretrained(path, safe_serialization=True)
    if distilled:
        mark(path, is_distilled=True)
