"""Images and captions to model inputs, with caching of latents and text embeddings.

The VAE is frozen and encodes deterministically (posterior mode), so a latent depends
only on (sample, flipped): cached latents equal fresh ones. Text embeddings are cached
by caption (by caption and control image for a family whose text reads the control: Qwen-Image-Edit)
when captions are deterministic (no shuffle, no dropout) and no text weight
is training at that step. When every caption is known up front (`precache_text`), the
text encoders then leave the GPU (`release_text`, called by `textpark.park_text_encoders`,
which also brings them back per call for previews).

Conditioning tensors may differ in sequence length from caption to caption (Qwen-Image and
Z-Image keep only a prompt's own tokens, with an attention mask): a batch joins them padded
with zeros on dim 1, and a zero mask entry marks padding.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import Sample
from .families import Components, Family

TextEntry = str | tuple[str, Hashable]
"""A text cache key: the caption, or (caption, control key) for a family whose text reads the control."""


def pixels(image: Image.Image, flip: bool) -> torch.Tensor:
    """An RGB image as a (3, H, W) float tensor in [-1, 1], mirrored when `flip`."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return torch.flip(tensor, dims=[-1]) if flip else tensor


def join(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on dim 0, zero-padding dim 1 to the longest when the lengths differ (token sequences
    and their masks; a (B, D) pooled vector has equal lengths and is only concatenated)."""
    if tensors[0].dim() >= 2 and len({t.shape[1] for t in tensors}) > 1:
        longest = max(t.shape[1] for t in tensors)
        tensors = [F.pad(t, [0, 0] * (t.dim() - 2) + [0, longest - t.shape[1]]) for t in tensors]
    return torch.cat(tensors)


class Encoder:
    """Encodes batches for the loop.

    Args:
        family: The model family.
        parts: Its components (adapted).
        device: Where the models run.
        cache_latents: Keep latents of each (sample, flipped) after the first encode.
        cache_text: Keep text embeddings per caption while the text side is frozen.
    """

    def __init__(self, family: Family, parts: Components, device: torch.device, *,
                 cache_latents: bool, cache_text: bool):
        self.family = family
        self.parts = parts
        self.device = device
        self.cache_latents = cache_latents
        self.cache_text = cache_text
        self._latents: dict[tuple[int, bool], torch.Tensor] = {}
        self._controls: dict[tuple[int, bool], torch.Tensor] = {}
        self._text: dict[TextEntry, dict[str, torch.Tensor]] = {}
        self.control_image: Callable[[Hashable], Image.Image] | None = None
        """Opens a control image by its key (the loop sets it when the family's text reads the control)."""
        self.released = False
        """The text encoders left the device (`release_text`): text comes from the cache."""

    @torch.no_grad()
    def latents(self, keys: list[tuple[int, bool]], samples: list[Sample], control: bool = False) -> torch.Tensor:
        """Latents of a batch; `keys` are (sample index, flipped) pairs.

        Only the samples whose latents are not cached are decoded (from their files). `control`: the
        latents of the pairs' control images (cut and flipped as their targets), cached apart.
        """
        cache = self._controls if control else self._latents
        missing = [i for i, key in enumerate(keys) if key not in cache]
        if missing:
            images = [samples[i].decoded_control() if control else samples[i].decoded() for i in missing]
            batch = torch.stack([pixels(image, keys[i][1]) for image, i in zip(images, missing, strict=True)])
            batch = batch.to(self.device)
            encoded = self.family.encode_images(self.parts, batch).float()
            fresh = {keys[i]: encoded[j : j + 1] for j, i in enumerate(missing)}
        else:
            fresh = {}
        out = torch.cat([fresh[k] if k in fresh else cache[k] for k in keys])
        if self.cache_latents:
            cache.update({k: v.cpu() if self.device.type == "cpu" else v for k, v in fresh.items()})
        return out.to(self.device)

    def text(self, captions: list[str], grad: bool, controls: list[Hashable] | None = None) -> dict[str, torch.Tensor]:
        """Conditioning of a batch of captions; with grad when text weights train.

        `controls`: for a family whose text reads the control image (``text_reads_control``), the key of each
        caption's control image (`control_image` opens it): the text is encoded, and cached, per
        (caption, control key).
        """
        entries = self._entries(captions, controls)
        if grad or not self.cache_text:
            with torch.set_grad_enabled(grad):
                return self._encode(entries)
        self.precache_text(entries)
        return {k: join([self._text[e][k] for e in entries]).to(self.device) for k in self._text[entries[0]]}

    def _entries(self, captions: list[str], controls: list[Hashable] | None) -> list[TextEntry]:
        """Text cache keys: the caption, or (caption, control key) when the family's text reads the control."""
        if controls is None or not getattr(self.family, "text_reads_control", False):
            return list(captions)
        return list(zip(captions, controls, strict=True))

    def _encode(self, entries: list[TextEntry]) -> dict[str, torch.Tensor]:
        if not entries or isinstance(entries[0], str):
            return self.family.encode_prompts(self.parts, entries)
        if self.control_image is None:
            raise RuntimeError("Encoder.control_image is unset: a family whose text reads the control needs it")
        images = [self.control_image(key) for _, key in entries]
        return self.family.encode_prompts(self.parts, [caption for caption, _ in entries], controls=images)

    @torch.no_grad()
    def precache_text(self, entries: list[TextEntry], batch_size: int = 8) -> None:
        """Encode and keep the entries (captions, or (caption, control key)) not cached yet, `batch_size` at a
        time."""
        missing = list(dict.fromkeys(e for e in entries if e not in self._text))
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            encoded = self._encode(chunk)
            for j, entry in enumerate(chunk):
                self._text[entry] = {k: v[j : j + 1] for k, v in encoded.items()}

    def release_text(self, entries: list[TextEntry], park: torch.device | str = "cpu") -> None:
        """Encode every text of the run once, then move the text encoders to `park` (the CPU).

        The cached embeddings stay in host memory and go to the device per batch, and the encoders' GPU
        memory is free for the denoiser (`textpark.park_text_encoders` decides when). `entries`: captions,
        or (caption, control key) for a family whose text reads the control. A text missed here is still
        encoded, by the parked encoders.
        """
        self.cache_text = True
        for start in range(0, len(entries), 8):
            chunk = entries[start:start + 8]
            self.precache_text(chunk)
            for entry in chunk:  # to host memory as they come: a big dataset's embeddings need not fit the GPU
                self._text[entry] = {k: v.cpu() for k, v in self._text[entry].items()}
        for encoder in self.parts.text_encoders:
            encoder.to(park)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.released = True

    def forget_text(self) -> None:
        """Drop cached text embeddings (the text weights changed)."""
        self._text.clear()

