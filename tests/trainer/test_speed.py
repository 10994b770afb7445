"""speed.py's choices: when to compile, in which mode (the GPU measurements behind them are in bench/RESULTS.md)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.modeling_utils import ModelMixin

from lora_trainer.families import get_family
from lora_trainer.speed import (
    BLOCK_VARIANTS,
    COMPILE_BLOCKS_ENV,
    COMPILE_MODE_ENV,
    COMPILE_SCOPE_ENV,
    compile_blocks,
    compile_denoiser,
    compile_mode,
    compile_scope,
    compile_wanted,
    stable_attention,
    training_attention,
    upload,
)

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_compile_auto_means_on_a_gpu_and_explicit_settings_win():
    assert compile_wanted("auto", CUDA) and not compile_wanted("auto", CPU)
    assert compile_wanted("on", CPU) and not compile_wanted("off", CUDA)


@pytest.mark.parametrize(("family", "expected"), [("sd15", "reduce-overhead"), ("sdxl", "reduce-overhead"),
                                                  ("flux", None)])
def test_unet_families_replay_cuda_graphs_on_a_gpu(monkeypatch, family, expected):
    monkeypatch.delenv(COMPILE_MODE_ENV, raising=False)
    family = get_family(family)
    assert compile_mode(family, CUDA, checkpointing=False, batch_size=4) == expected
    assert compile_mode(family, CUDA, checkpointing=True, batch_size=4) is None  # not measured with recomputation
    assert compile_mode(family, CPU, checkpointing=False, batch_size=4) is None


@pytest.mark.parametrize("family", ["flux", "flux-kontext", "chroma"])
def test_flux_families_replay_cuda_graphs_at_one_image_without_checkpointing(monkeypatch, family):
    monkeypatch.delenv(COMPILE_MODE_ENV, raising=False)
    family = get_family(family)
    assert compile_mode(family, CUDA, checkpointing=False, batch_size=1) == "reduce-overhead"
    assert compile_mode(family, CUDA, checkpointing=False, batch_size=2) is None
    assert compile_mode(family, CUDA, checkpointing=True, batch_size=1) is None
    assert compile_mode(family, CPU, checkpointing=False, batch_size=1) is None


def test_the_environment_overrides_the_mode(monkeypatch):
    sd15, flux = get_family("sd15"), get_family("flux")
    monkeypatch.setenv(COMPILE_MODE_ENV, "max-autotune-no-cudagraphs")
    assert compile_mode(sd15, CPU, checkpointing=True, batch_size=4) == "max-autotune-no-cudagraphs"
    monkeypatch.setenv(COMPILE_MODE_ENV, "default")
    assert compile_mode(sd15, CUDA, checkpointing=False, batch_size=4) is None
    assert compile_mode(flux, CUDA, checkpointing=False, batch_size=1) is None


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_unets_compile_their_resnet_and_sampling_blocks_too_unless_the_environment_names_others(
        monkeypatch, family):
    monkeypatch.delenv(COMPILE_BLOCKS_ENV, raising=False)
    blocks = compile_blocks(get_family(family).compile_blocks)
    assert set(blocks) == {"BasicTransformerBlock", "ResnetBlock2D", "Downsample2D", "Upsample2D"}
    assert compile_blocks(get_family("flux").compile_blocks) == []  # the transformer's own _repeated_blocks
    monkeypatch.setenv(COMPILE_BLOCKS_ENV, "BasicTransformerBlock")
    assert compile_blocks(get_family(family).compile_blocks) == ["BasicTransformerBlock"]


def test_upload_moves_and_casts_and_keeps_the_dtype_by_default():
    ints = torch.arange(4)
    assert upload(ints, CPU).dtype == torch.int64
    assert upload(ints, CPU, torch.float32).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_the_repeated_blocks_are_compiled_unless_the_environment_asks_for_the_whole_model(monkeypatch):
    monkeypatch.delenv(COMPILE_SCOPE_ENV, raising=False)
    assert compile_scope() == "blocks"
    monkeypatch.setenv(COMPILE_SCOPE_ENV, "model")
    assert compile_scope() == "model"
    monkeypatch.setenv(COMPILE_SCOPE_ENV, "everything")
    with pytest.raises(ValueError, match="LORA_COMPILE_SCOPE='everything'"):
        compile_scope()


class _Block(torch.nn.Linear):
    pass


class _Denoiser(torch.nn.Module):
    """A small module with diffusers' own regional compilation (real models: test_hyperparameters)."""

    _repeated_blocks = ["_Block"]
    compile_repeated_blocks = ModelMixin.compile_repeated_blocks

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Block(4, 4) for _ in range(3))
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_compile_scope_model_wraps_the_whole_denoiser_and_blocks_only_the_repeated_ones():
    whole, regional = _Denoiser(), _Denoiser()
    assert compile_denoiser(whole, scope="model") == 1
    assert compiled(whole) and not any(compiled(b) for b in whole.blocks)
    assert compile_denoiser(regional, scope="blocks") == 3
    assert not compiled(regional) and all(compiled(b) for b in regional.blocks) and not compiled(regional.head)


@pytest.fixture
def attention_flags():
    """Restores the process-wide attention settings the tests change."""
    order, cudnn = torch._C._get_sdp_priority_order(), torch.backends.cuda.cudnn_sdp_enabled()
    yield
    torch._C._set_sdp_priority_order(order)
    torch.backends.cuda.enable_cudnn_sdp(cudnn)


def test_training_attention_puts_cudnn_first_on_a_gpu_without_checkpointing(attention_flags):
    from torch.nn.attention import SDPBackend

    stable_attention()
    before = torch._C._get_sdp_priority_order()
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    with training_attention(CUDA, checkpointing=False):
        assert torch.backends.cuda.cudnn_sdp_enabled()
        assert torch._C._get_sdp_priority_order()[0] == int(SDPBackend.CUDNN_ATTENTION)
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()  # fall-backs
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    cudnn = int(SDPBackend.CUDNN_ATTENTION)  # disabled again; the enabled backends keep their order
    assert [b for b in torch._C._get_sdp_priority_order() if b != cudnn] == [b for b in before if b != cudnn]
    for device, checkpointing in ((CUDA, True), (CPU, False)):
        with training_attention(device, checkpointing=checkpointing):
            assert not torch.backends.cuda.cudnn_sdp_enabled()  # the crash-safe default stays


def test_the_environment_names_other_block_classes_to_compile(monkeypatch):
    monkeypatch.setenv(COMPILE_BLOCKS_ENV, " _Block , Linear")
    denoiser = _Denoiser()
    with torch._dynamo.config.patch(recompile_limit=8):  # restored afterwards (a monkeypatch would delete it)
        assert compile_denoiser(denoiser, scope="blocks", blocks=compile_blocks(("_Block",))) == 4  # and the head
        assert torch._dynamo.config.recompile_limit == BLOCK_VARIANTS
    assert all(compiled(b) for b in denoiser.blocks) and compiled(denoiser.head)
    assert _Denoiser._repeated_blocks == ["_Block"]  # other instances keep the class's list


@pytest.mark.trainer
@pytest.mark.slow  # inductor compiles a dozen block variants on CPU: minutes per family with a cold cache
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_compile_on_compiles_the_unet_blocks_around_the_compute_copies_and_trains(train, monkeypatch, family):
    from accelerate.state import AcceleratorState

    from lora_trainer.compute_copies import ADAPTER_CAST_ENV
    from lora_trainer.precision import CPU_BF16_ENV

    monkeypatch.delenv(COMPILE_BLOCKS_ENV, raising=False)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    monkeypatch.setenv(ADAPTER_CAST_ENV, "step")
    AcceleratorState._reset_state(reset_partial_state=True)  # a bf16 run in this process (as test_bf16)
    try:
        recipe = train(family, type="locon", network={"dim": 4, "alpha": 4, "convDim": 2, "convAlpha": 2},
                       training={"steps": 1, "compile": "on", "mixedPrecision": "bf16", "unetLearningRate": 5e-2})
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    denoiser = recipe.parts.denoiser
    kinds = {type(m).__name__ for m in denoiser.modules() if compiled(m)}
    assert kinds == {"BasicTransformerBlock", "ResnetBlock2D", "Downsample2D", "Upsample2D"}
    assert len(recipe.compute_copies) > 0  # the LoCon convolutions inside the compiled ResNet blocks among them
    assert recipe.last_loss is not None and torch.isfinite(torch.tensor(recipe.last_loss))
    up = [p for n, p in denoiser.named_parameters() if "lora_B" in n and "resnets" in n]
    assert up and all(p.dtype == torch.float32 for p in up) and any(p.abs().sum() > 0 for p in up)  # trained
