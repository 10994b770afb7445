"""Parts every tiny model shares: character-level tokenizers, a two-layer CLIP, a small VAE, DDPM.

The tokenizers are written from scratch (nothing is downloaded): CLIP gets a byte-level BPE vocabulary
with no merges (every character is a token), T5 a Unigram model over single characters, and the Qwen
LLM encoders (Qwen2.5-VL, Qwen3) the same byte-level vocabulary with Qwen's chat special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

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


QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
"""Qwen's chat layout (what Qwen3's template renders for a user turn; Z-Image's pipeline applies it)."""
QWEN_VOCAB_SIZE = 520
"""256 byte tokens + 3 specials, rounded up: the Qwen tiny configs' vocab_size."""


def write_qwen_tokenizer(folder: Path) -> None:
    """Write a Qwen2 tokenizer (byte-level BPE, no merges) with <|endoftext|>, <|im_start|>, <|im_end|> and a
    chat template, as the Qwen2.5-VL and Qwen3 tokenizers have."""
    from transformers import Qwen2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(_bytes_to_unicode())}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    tokenizer.add_tokens([QWEN_SPECIAL_TOKENS[0]], special_tokens=True)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.model_max_length = 4096
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


def clip_config(vocab_size: int, eos_token_id: int, projection: bool):
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


def t5_encoder():
    """A two-layer T5 encoder (the real class) over the tiny T5 tokenizer's vocabulary."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=T5_VOCAB_SIZE, d_model=TEXT_HIDDEN, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
    )


def tiny_vae(latent_channels: int = 4, **kwargs):
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


def clip_encoder(folder: Path, projection: bool = False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = clip_config(len(tokenizer), eos, projection)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config), tokenizer


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
