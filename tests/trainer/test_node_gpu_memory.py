"""The GPU memory the auto settings plan with: the node's figure the operator passes (LORA_GPU_MEMORY_MIB, from
the node's label), cross-checked with torch's on CUDA; gradientCheckpointing, baseQuantization and offload auto
all follow it. On CPU only the variable gives a memory, so these run here with it standing for the node."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lora_operator.api.contract import ENV_GPU_MEMORY
from lora_trainer.errors import ConfigError
from lora_trainer.families import get_family
from lora_trainer.memory import base_quantization, gpu_memory_gib
from lora_trainer.offload import offload_wanted
from lora_trainer.precision import checkpointing_wanted

CPU = torch.device("cpu")
MP_1024 = 1024 * 1024 / 1e6
FLUX_PARTS = {"transformer": 11_900_000_000, "text_encoder_2": 4_886_000_000, "vae": 84_000_000}
"""FLUX.1-dev's parameter counts: the transformer; T5-XXL (with CLIP-L) and the VAE (test_memory_estimate's FLUX)."""


def sparse_safetensors(path: Path, parameters: int) -> None:
    """A safetensors file of `parameters` one-byte weights, written sparse: its header says Flux.1's size (all
    that `memory.folder_weights` reads) while the disk holds a few blocks."""
    header = json.dumps({"weight": {"dtype": "U8", "shape": [parameters], "data_offsets": [0, parameters]}}).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(header)) + header)
        file.truncate(8 + len(header) + parameters)


def on_node(monkeypatch, mib: str | None) -> None:
    """The pod's environment as the operator writes it for a node whose label says `mib` (None: no label)."""
    if mib is None:
        monkeypatch.delenv(ENV_GPU_MEMORY, raising=False)
    else:
        monkeypatch.setenv(ENV_GPU_MEMORY, mib)


@pytest.fixture(scope="module")
def flux_sized(tmp_path_factory) -> Path:
    """A diffusers folder whose safetensors headers have Flux.1's parameter counts."""
    folder = tmp_path_factory.mktemp("flux-sized")
    for part, parameters in FLUX_PARTS.items():
        (folder / part).mkdir()
        sparse_safetensors(folder / part / "diffusion_pytorch_model.safetensors", parameters)
    return folder


@pytest.mark.parametrize(("mib", "expected"), [(None, "none"), ("81920", "none"), ("32768", "fp8"),
                                               ("24576", "nf4")])
def test_base_quantization_auto_follows_the_nodes_gpu_memory(monkeypatch, flux_sized, mib, expected):
    """What the memory table gives Flux.1 at 1024 px (test_memory_estimate): none on 80 GB, fp8 on 32, nf4 on 24;
    without the node's figure on CPU, none."""
    on_node(monkeypatch, mib)
    assert base_quantization("auto", get_family("flux"), flux_sized, CPU, images=1, megapixels=1.05) == expected
    assert base_quantization("none", get_family("flux"), flux_sized, CPU, images=1, megapixels=1.05) == "none"


@pytest.mark.parametrize(("mib", "expected"), [(None, False), ("81920", False), ("24576", True)])
def test_gradient_checkpointing_auto_follows_the_nodes_gpu_memory(monkeypatch, mib, expected):
    """Flux.1 at 1024 px with its 31.4 GiB of bf16 weights resident: one image fits 80 GB without checkpointing,
    not 24 GB; without the node's figure on CPU, off."""
    on_node(monkeypatch, mib)
    assert checkpointing_wanted("auto", get_family("flux"), CPU, images=1, megapixels=MP_1024,
                                resident_gib=31.4) is expected


@pytest.mark.parametrize(("mib", "expected"), [(None, False), ("32768", False), ("24576", True)])
def test_offload_auto_follows_the_nodes_gpu_memory(monkeypatch, flux_sized, mib, expected):
    """Flux.1 with an fp8 base, checkpointed, at 1024 px: about 24 GiB, inside 90% of 32 GB, not of 24 GB."""
    on_node(monkeypatch, mib)
    assert offload_wanted("auto", get_family("flux"), flux_sized, CPU, quantization="fp8", world=1, images=1,
                          megapixels=1.05) is expected


def test_on_cuda_the_smaller_of_the_nodes_figure_and_torchs_counts(monkeypatch):
    # No GPU here: what torch reports for the device is stood in for (an 80 GiB card), to check the rule alone.
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * 2**30))
    cuda = torch.device("cuda")
    assert gpu_memory_gib(cuda, {}) == 80.0  # no label: torch's
    assert gpu_memory_gib(cuda, {ENV_GPU_MEMORY: "24576"}) == 24.0  # the platform gives the pod less
    assert gpu_memory_gib(cuda, {ENV_GPU_MEMORY: "163840"}) == 80.0  # a label above the device is not believed
    assert gpu_memory_gib(CPU, {ENV_GPU_MEMORY: "24576"}) == 24.0
    assert gpu_memory_gib(CPU, {}) is None


@pytest.mark.parametrize("value", ["80Gi", "0", "-1"])
def test_a_bad_gpu_memory_is_named(value):
    with pytest.raises(ConfigError, match=f"^{ENV_GPU_MEMORY}: "):
        gpu_memory_gib(CPU, {ENV_GPU_MEMORY: value})
