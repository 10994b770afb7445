"""What every family must satisfy: its trainer class and tiny model agree with its table row.

`check_family` is run over every row of the table (test_family_conformance.py) and over the
throwaway family a test registers (test_throwaway_family.py).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from lora_operator.api import AdapterType, CheckpointFormat, JobSpec, Sampler, scenario_steps
from lora_operator.api.families import family_row
from lora_trainer.families import family_class


def check_family(name: str, model_dir: Path) -> None:
    """Assert that family `name`'s row, trainer class and tiny model at `model_dir` agree."""
    row = family_row(name)
    family = family_class(name)()
    assert family.family == row.name
    assert set(row.adapters) <= {t.value for t in AdapterType} and "lora" in row.adapters
    assert set(row.formats) <= {f.value for f in CheckpointFormat} and row.formats
    assert name in JobSpec.model_json_schema()["$defs"]["BaseModelSpec"]["properties"]["family"]["enum"]
    assert scenario_steps(name, 1) > 0 and all(h % 8 == 0 and w % 8 == 0 for h, w in row.sizes)

    parts = family.load(model_dir, torch.float32)
    assert len(parts.text_encoders) == len(parts.tokenizers) == len(row.text_encoders)
    # 0: the text encoders are LLMs (Qwen) that no trainer adapts and no UI loads a LoRA on; then the
    # family offers no embedding either, and the LoRA adapter refuses text-encoder training.
    assert 0 <= family.trainable_text_encoders <= len(row.text_encoders)
    assert len(family.embedding_keys) == family.trainable_text_encoders
    assert family.trainable_text_encoders or "embedding" not in row.adapters
    # AutoencoderKL names its latent channels latent_channels, the video VAEs (Qwen-Image's, Wan's) z_dim.
    config = parts.vae.config
    assert (config.latent_channels if "latent_channels" in config else config.z_dim) == row.latent_channels
    latents = family.encode_images(parts, torch.zeros(1, 3, 32, 32))
    assert latents.dim() == 2 + row.latent_dims and latents.shape[1] == row.latent_channels

    # LoCon adapts convolutions: a row offers it exactly when the family names conv layers.
    assert ("locon" in row.adapters) == bool(family.conv_targets)
    assert type(family.pipeline(parts)).__name__ == row.pipeline
    # An edit row's family takes the pairs' control latents and hands previews their control images.
    if row.edit:
        assert "control" in inspect.signature(family.predict).parameters and callable(family.edit_inputs)
    flow = family.default_sampler is Sampler.FLOW_EULER
    assert (row.prediction == "flow") == flow
    if not flow:
        assert parts.noise_scheduler.config.prediction_type in ("epsilon", "v_prediction")
