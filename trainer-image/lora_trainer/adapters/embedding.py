"""Textual inversion: new token(s) whose input-embedding vectors are the only trained weights.

`embedding.token` becomes `vectors` tokens (token, token_1, ...; the names diffusers'
``load_textual_inversion`` gives a multi-vector embedding), initialised from the
embeddings of `initialPhrase`. The whole embedding matrix is handed to the optimizer,
but every row except the new ones is restored after each step, so only they change.
The learning rate is ``training.unetLearningRate`` (the main learning rate, as kohya's).

The matrix trains in float32 whatever the model's dtype (a bf16 row would round away small
updates); its output is cast back to the text encoder's dtype, so a bf16 or fp16 encoder gets
the dtype its layers expect (no autocast surrounds the text encoders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lora_operator.api import CheckpointFormat, JobSpec

from ..errors import ConfigError
from ..export import write_embedding
from ..families import Components, Family


class EmbeddingAdapter:
    """A textual-inversion embedding on the family's trainable text encoders."""

    trains_text = True
    text_ratio_applies = False

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self._rows: list[tuple[torch.nn.Parameter, list[int], torch.Tensor]] = []
        self._groups: list[dict[str, Any]] = []
        self._hooks: list[Any] = []
        self._spec: JobSpec | None = None
        self._keys: tuple[str, ...] = ()

    def attach(self, family: Family, parts: Components, spec: JobSpec) -> None:
        """Add the tokens to each trainable tokenizer / text encoder and initialise their vectors."""
        emb = spec.embedding
        self._spec = spec
        self._keys = family.embedding_keys
        self.tokens = [emb.token] + [f"{emb.token}_{i}" for i in range(1, emb.vectors)]
        params = []
        trained = family.trainable_text_encoders
        for tokenizer, encoder in zip(parts.tokenizers[:trained], parts.text_encoders[:trained], strict=True):
            if tokenizer.add_tokens(self.tokens) != len(self.tokens):
                raise ConfigError(f"embedding.token: {emb.token!r} is already a word of the tokenizer; pick another")
            init_ids = tokenizer.encode(emb.initial_phrase, add_special_tokens=False)
            if not init_ids:
                raise ConfigError(f"embedding.initialPhrase: {emb.initial_phrase!r} has no tokens")
            if len(tokenizer) > encoder.get_input_embeddings().num_embeddings:  # never shrink the matrix
                encoder.resize_token_embeddings(len(tokenizer))
            embeddings = encoder.get_input_embeddings()
            weight = embeddings.weight
            self._hooks.append(embeddings.register_forward_hook(_cast_to(weight.dtype)))
            new_ids = tokenizer.convert_tokens_to_ids(self.tokens)
            with torch.no_grad():
                for i, row in enumerate(new_ids):
                    weight[row] = weight[init_ids[i % len(init_ids)]]
            weight.data = weight.data.float()
            weight.requires_grad_(True)
            self._rows.append((weight, new_ids, weight.detach().clone()))
            params.append(weight)
        self._groups = [{"name": "embedding", "lr": spec.training.unet_learning_rate, "params": params}]

    def param_groups(self) -> list[dict[str, Any]]:
        """One group: the input-embedding matrices."""
        return self._groups

    def set_text_training(self, enabled: bool) -> None:
        """The embedding always trains (textEncoderRatio does not apply)."""

    def prepare_caption(self, caption: str) -> str:
        """Expand the token to all its vectors; prepend it when the caption lacks it."""
        token = self.tokens[0]
        expanded = " ".join(self.tokens)
        if token in caption:
            return caption.replace(token, expanded)
        return f"{expanded} {caption}".strip()

    @torch.no_grad()
    def after_step(self) -> None:
        """Put every vocabulary row back except the new tokens'."""
        for weight, new_ids, original in self._rows:
            keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            keep[new_ids] = False
            weight[keep] = original.to(weight.device)[keep]

    def vectors(self) -> list[torch.Tensor]:
        """The trained vectors, (vectors, hidden) per text encoder."""
        return [weight.detach()[new_ids].float().cpu() for weight, new_ids, _ in self._rows]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained vectors per text encoder."""
        return {f"text_encoder_{i}": v for i, v in enumerate(self.vectors())}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore vectors written by `state_dict`."""
        for i, (weight, new_ids, _) in enumerate(self._rows):
            weight[new_ids] = state[f"text_encoder_{i}"].to(weight.device, weight.dtype)

    def export(self, folder: Path, formats: list[CheckpointFormat], metadata: dict[str, Any]) -> list[tuple[str, Path]]:
        """Write embedding.safetensors, one tensor per trained encoder named by the family's `embedding_keys`
        (``emb_params``, or ``clip_l`` + ``clip_g`` for SDXL)."""
        tensors = dict(zip(self._keys, self.vectors(), strict=True))
        meta = {**metadata, "token": self.tokens[0], "vectors": len(self.tokens)}
        return [("embedding", write_embedding(folder / "embedding.safetensors", tensors, meta))]


def _cast_to(dtype: torch.dtype):
    """A forward hook returning the embedding output in `dtype` (the encoder's own)."""

    def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        return output.to(dtype)

    return hook
