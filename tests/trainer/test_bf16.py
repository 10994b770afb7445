"""bf16 on CPU: the embedding, LoRA and LoCon paths of every family train with bf16 weights.

torch runs bf16 on CPU; `LORA_CPU_BF16=1` keeps training.mixedPrecision bf16 there instead of
falling back to float32, so the dtype mixes a GPU run meets (a float32 trained tensor inside a
bf16 model) are met here too.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lora_trainer.precision import CPU_BF16_ENV

pytestmark = pytest.mark.trainer

CASES = [("sd15", "embedding"), ("sd15", "lora"), ("sd15", "locon"),
         ("sdxl", "embedding"), ("sdxl", "lora"), ("sdxl", "locon"),
         ("flux", "embedding"), ("flux", "lora")]  # Flux has no conv layers: no LoCon


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one process-wide state: an earlier float32 run's would refuse a bf16 run in
    this process, and a bf16 run's the next float32 one; reset before and after."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_each_adapter_of_each_family_trains_in_bf16_on_cpu(train, monkeypatch, family, kind):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    extra = {"type": kind, "training": {"steps": 2, "mixedPrecision": "bf16", "unetLearningRate": 5e-2,
                                        "textEncoderLearningRate": 1e-3, "textEncoderRatio": 1.0}}
    if kind == "embedding":
        extra.update(embedding={"token": "<tkxw>", "initialPhrase": "square", "vectors": 2},
                     dataset={"captionPrefix": "<tkxw>, "})
    if kind == "locon":
        extra.update(network={"dim": 4, "alpha": 4, "convDim": 2, "convAlpha": 2})
    recipe = train(family, **extra)
    assert recipe.mixed_precision == "bf16"
    assert next(recipe.parts.vae.parameters()).dtype in (torch.bfloat16, torch.float32)  # SDXL: float32 VAE
    norms = [m for m in recipe.parts.text_encoders[0].modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and {m.weight.dtype for m in norms} == {torch.bfloat16}
    assert recipe.last_loss is not None and recipe.last_loss == recipe.last_loss
    folder = recipe.outputs.workdir / "checkpoints/epoch-0001"
    if kind == "embedding":
        tensors = load_file(folder / "embedding.safetensors")
        init = recipe.parts.text_encoders[0].get_input_embeddings().weight
        ids = recipe.parts.tokenizers[0].encode("square", add_special_tokens=False)
        first = next(iter(tensors.values()))
        assert first.dtype == torch.float32 and torch.isfinite(first).all()
        assert not torch.equal(first[0], init[ids[0]].detach().float())  # the vector trained
    else:
        tensors = load_file(folder / "kohya.safetensors")
        ups = [v for k, v in tensors.items() if "lora_up" in k]
        assert ups and all(torch.isfinite(v).all() for v in ups)
        assert any(v.abs().max() > 0 for v in ups)  # lora_up starts at zero: it trained
        assert any(k.startswith("lora_te") for k in tensors)  # the text-encoder LoRA trained in bf16 too
        if kind == "locon":
            assert any(v.ndim == 4 for k, v in tensors.items() if "lora_down" in k)
