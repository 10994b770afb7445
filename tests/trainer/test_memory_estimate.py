"""The memory estimate and what training.baseQuantization auto chooses from it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lora_trainer.families import get_family
from lora_trainer.memory import (
    CHECKPOINTED_SHARE,
    GIB,
    QUANTIZED_BYTES,
    Weights,
    base_quantization,
    choose_quantization,
    folder_weights,
    peak_gib,
)

FLUX = Weights(denoiser=11.9, others=4.97, vae=0.084)  # FLUX.1-dev: transformer; CLIP-L + T5-XXL + VAE
FLUX_ACT = get_family("flux").activation_gib_per_megapixel


def test_the_peak_is_weights_plus_activations_each_option_shrinking_its_part():
    plain = peak_gib(FLUX, FLUX_ACT, quantization="none", checkpointing=False)
    assert plain == pytest.approx((11.9 * 2 + 4.97 * 2) * 1e9 / GIB + FLUX_ACT)
    checkpointed = peak_gib(FLUX, FLUX_ACT, quantization="none", checkpointing=True)
    assert plain - checkpointed == pytest.approx(FLUX_ACT * (1 - CHECKPOINTED_SHARE))
    nf4 = peak_gib(FLUX, FLUX_ACT, quantization="nf4", checkpointing=True)
    assert checkpointed - nf4 == pytest.approx(11.9e9 * (2 - QUANTIZED_BYTES["nf4"]) / GIB)
    two = peak_gib(FLUX, FLUX_ACT, quantization="none", checkpointing=False, images=2)
    assert two - plain == pytest.approx(FLUX_ACT)
    caching = 11.9e9 * QUANTIZED_BYTES["nf4"] / GIB + 4.97 * 2e9 / GIB  # all weights, no activations
    for activation in (FLUX_ACT, 200.0):  # caching sets the peak, then the steps (without the text encoders)
        steps = nf4 - FLUX_ACT * CHECKPOINTED_SHARE - (4.97 - 0.084) * 2e9 / GIB + activation * CHECKPOINTED_SHARE
        parked = peak_gib(FLUX, activation, quantization="nf4", checkpointing=True, text_parked=True)
        assert parked == pytest.approx(max(caching, steps)) and parked < nf4 - FLUX_ACT * CHECKPOINTED_SHARE + \
            activation * CHECKPOINTED_SHARE


@pytest.mark.parametrize(("memory", "expected"), [(80, "none"), (40, "none"), (32, "fp8"), (24, "nf4"), (12, "nf4")])
def test_auto_picks_the_first_quantization_that_fits(memory, expected):
    assert choose_quantization("auto", FLUX, FLUX_ACT, memory_gib=memory, images=1, megapixels=1.05) == expected


def test_auto_is_none_without_a_gpu_or_known_weights_and_a_setting_is_kept():
    assert choose_quantization("auto", FLUX, FLUX_ACT, memory_gib=None, images=1, megapixels=1) == "none"
    assert choose_quantization("auto", None, FLUX_ACT, memory_gib=24, images=1, megapixels=1) == "none"
    assert choose_quantization("fp8", FLUX, FLUX_ACT, memory_gib=80, images=1, megapixels=1) == "fp8"
    assert base_quantization("auto", get_family("flux"), None, torch.device("cpu"), images=1, megapixels=1) == "none"


def test_folder_weights_counts_the_parameters_in_the_headers_once(tmp_path):
    for part, n in (("transformer", 3000), ("text_encoder", 1000), ("vae", 500)):
        (tmp_path / part).mkdir()
        save_file({"w": torch.zeros(n, 2, dtype=torch.float32)}, tmp_path / part / "model.safetensors")
    save_file({"w": torch.zeros(n, 2, dtype=torch.float16)}, tmp_path / "vae" / "model.fp16.safetensors")  # a variant
    (tmp_path / "tokenizer").mkdir()
    weights = folder_weights(tmp_path, "transformer")
    assert (weights.denoiser, weights.others) == (6000 / 1e9, 3000 / 1e9)
    assert folder_weights(tmp_path, "unet") is None
