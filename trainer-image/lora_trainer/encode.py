"""Images and captions to model inputs, with caching of latents and text embeddings.

The VAE is frozen and encodes deterministically (posterior mode), so a latent depends
only on (sample, flipped): cached latents equal fresh ones. Text embeddings are cached
by caption when captions are deterministic (no shuffle, no dropout) and no text weight
is training at that step.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .data import Sample
from .families import Components, Family


def pixels(image: Image.Image, flip: bool) -> torch.Tensor:
    """An RGB image as a (3, H, W) float tensor in [-1, 1], mirrored when `flip`."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return torch.flip(tensor, dims=[-1]) if flip else tensor


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
        self._text: dict[str, dict[str, torch.Tensor]] = {}
        self._released = False

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

    def text(self, captions: list[str], grad: bool) -> dict[str, torch.Tensor]:
        """Conditioning of a batch of captions; with grad when text weights train."""
        if grad or not self.cache_text:
            with torch.set_grad_enabled(grad):
                return self.family.encode_prompts(self.parts, captions)
        missing = sorted({c for c in captions if c not in self._text})
        if missing:
            with torch.no_grad():
                encoded = self.family.encode_prompts(self.parts, missing)
            for j, caption in enumerate(missing):
                self._text[caption] = {k: v[j : j + 1] for k, v in encoded.items()}
        return {k: torch.cat([self._text[c][k] for c in captions]).to(self.device) for k in self._text[captions[0]]}

    def forget_text(self) -> None:
        """Drop cached text embeddings (the text weights changed)."""
        self._text.clear()

    @property
    def released(self) -> bool:
        """The text encoders left the device (`release_text`): text comes from the cache."""
        return self._released

    def release_text(self, captions: list[str]) -> None:
        """Encode every caption of the run once, then move the text encoders to the CPU.

        For families whose text encoders are large frozen LLMs (Flux.2, the 2025 families): the cached
        embeddings stay in host memory and go to the device per batch, and the encoders' GPU memory
        is free for the denoiser. A caption missed here is still encoded, on the CPU (slow, correct).
        """
        self.cache_text = True
        for start in range(0, len(captions), 8):
            chunk = captions[start:start + 8]
            self.text(chunk, grad=False)
            for caption in chunk:  # to host memory as they come: a big dataset's embeddings need not fit the GPU
                self._text[caption] = {k: v.cpu() for k, v in self._text[caption].items()}
        for encoder in self.parts.text_encoders:
            encoder.to("cpu")
        self._released = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
