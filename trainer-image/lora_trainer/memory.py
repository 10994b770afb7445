"""The peak GPU memory of a training step, estimated before loading, and what the auto settings choose.

The estimate: the frozen weights on the GPU (the denoiser at its quantized size, the text encoders and
the VAE in the weight dtype), plus the denoiser's saved activations, `activation_gib_per_megapixel`
per training megapixel, a `CHECKPOINTED_SHARE` of that with gradient checkpointing; with training.offload blocks only
`OFFLOADED_SHARE` of the denoiser's weights is on the GPU at once. `python -m bench.memory --options` prints it per
family and option; training.baseQuantization auto and training.offload auto pick from it, and
training.gradientCheckpointing auto from the same GPU memory (`gpu_memory_gib`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_operator.api.contract import ENV_GPU_MEMORY, TrainerEnv

from .errors import ConfigError
from .families import Family
from .singlefile import SingleFileModel

log = logging.getLogger(__name__)

GIB = 2**30
MEMORY_HEADROOM = 0.9
"""Share of the GPU's memory a step may plan to use (the rest: allocator slack, optimizer, spikes)."""
CHECKPOINTED_SHARE = 0.12
"""Activations kept with gradient checkpointing, as a share of those without: Flux at 1024 px, batch 2,
peaked at 37.6 GiB with checkpointing on 31.4 GiB of weights (bench/RESULTS.md, session 6), 3.1 GiB per
megapixel against 28 without (11%)."""
QUANTIZED_BYTES = {"none": 2.0, "fp8": 1.03, "nf4": 0.56}
"""Bytes per denoiser parameter: bf16; torchao float8 with a bf16 scale per row of a 3072-wide layer (~1.03);
bitsandbytes nf4, 4 bits plus double-quantized absmax per 64 weights and the unquantized norms and
embeddings (~0.56)."""
OFFLOADED_SHARE = 0.1
"""With training.offload blocks (`offload`), the share of the denoiser's weights on the GPU at once: the layer
running and the one prefetched, plus, during the backward pass, the first layer of each block already done
(prefetched in forward order by its predecessor's recompute and kept until the next forward: for Flux, its
norm's modulation linear, 57 of them). An estimate from the layer sizes, not a measurement (no GPU run yet)."""
QUANTIZATIONS = ("none", "fp8", "nf4")
"""In the order auto tries them: the first that fits (least precision lost)."""


@dataclass(frozen=True)
class Weights:
    """Parameter counts of a base model, in billions.

    Attributes:
        denoiser: The UNet or transformer.
        others: Text encoders and VAE (loaded on the GPU in the weight dtype, never quantized).
        vae: The VAE's share of `others` (it stays on the GPU when the text encoders are parked).
    """

    denoiser: float
    others: float
    vae: float = 0.0


def phases_gib(weights: Weights, activation_gib_per_megapixel: float, *, quantization: str, checkpointing: bool,
               images: int = 1, megapixels: float = 1.0, text_parked: bool = False, offload: bool = False,
               adapter_gib: float = 0.0) -> tuple[float, float]:
    """The estimated GPU memory of the two phases of a run, (caching, training), in GiB: the one estimate that
    the auto settings and `bench/memory.py` (both of its views) read.

    Args:
        weights: The model's parameter counts.
        activation_gib_per_megapixel: The family's saved activations per megapixel without checkpointing.
        quantization: none, fp8 or nf4 (the denoiser's storage; text encoders and VAE stay bf16).
        checkpointing: Gradient checkpointing on.
        images: Images per micro-batch (an edit pair's control image counts as one more).
        megapixels: Size of each image.
        text_parked: The text encoders leave the GPU after caching (textpark): the steps hold only the VAE.
        offload: training.offload blocks: `OFFLOADED_SHARE` of the denoiser on the GPU, in caching too.
        adapter_gib: The adapter with its gradients and optimizer state (tens of MiB at rank 16: the trainer's
            choices leave it out).

    Returns:
        caching: every frozen weight on the GPU, no activations; training: the denoiser, the text encoders
        unless parked, the VAE, the adapter and one step's saved activations.
    """
    share = OFFLOADED_SHARE if offload else 1.0
    denoiser = weights.denoiser * 1e9 * QUANTIZED_BYTES[quantization] / GIB * share
    others = weights.others * 1e9 * 2 / GIB
    resident = weights.vae * 1e9 * 2 / GIB if text_parked else others
    activations = images * megapixels * activation_gib_per_megapixel * (CHECKPOINTED_SHARE if checkpointing else 1.0)
    return denoiser + others, denoiser + resident + adapter_gib + activations


def peak_gib(weights: Weights, activation_gib_per_megapixel: float, **options) -> float:
    """The estimated peak GPU memory of a run, in GiB: the larger of its two phases (`phases_gib`, whose
    keyword arguments it takes); without parking the steps hold every weight caching holds, and more."""
    return max(phases_gib(weights, activation_gib_per_megapixel, **options))


def choose_quantization(setting: str, weights: Weights | None, activation_gib_per_megapixel: float, *,
                        memory_gib: float | None, images: int, megapixels: float, dora: bool = False,
                        offload: bool = False) -> str:
    """training.baseQuantization: `setting` itself unless auto; auto is the first of none, fp8, nf4 whose peak
    with gradient checkpointing fits `MEMORY_HEADROOM` of `memory_gib` (the last when none fits), and none when
    the memory or the weights are unknown (CPU). With DoRA fp8 is skipped (`quantize.quantization_config`); with
    training.offload blocks (`offload`) nf4 is skipped (it cannot be offloaded) and the peaks are offloaded ones."""
    if setting != "auto":
        return setting
    if memory_gib is None or weights is None:
        return "none"
    kinds = [q for q in QUANTIZATIONS if not (dora and q == "fp8") and not (offload and q == "nf4")]
    for kind in kinds:
        peak = peak_gib(weights, activation_gib_per_megapixel, quantization=kind, checkpointing=True,
                        images=images, megapixels=megapixels, offload=offload)
        if peak <= MEMORY_HEADROOM * memory_gib:
            log.info("baseQuantization auto: %s, estimated peak %.1f GiB of %.1f GiB", kind, peak, memory_gib)
            return kind
    log.warning("baseQuantization auto: %s, but even its estimated peak does not fit %.1f GiB", kinds[-1], memory_gib)
    return kinds[-1]


def choose_offload(weights: Weights | None, activation_gib_per_megapixel: float, *, memory_gib: float,
                   quantization: str, images: int, megapixels: float, text_parked: bool = False) -> bool:
    """training.offload auto: offload when the estimated peak with `quantization` and gradient checkpointing does
    not fit `MEMORY_HEADROOM` of `memory_gib`; not when the weights are unknown (a single-file base)."""
    if weights is None:
        return False
    peak = peak_gib(weights, activation_gib_per_megapixel, quantization=quantization, checkpointing=True,
                    images=images, megapixels=megapixels, text_parked=text_parked)
    if peak <= MEMORY_HEADROOM * memory_gib:
        return False
    offloaded = peak_gib(weights, activation_gib_per_megapixel, quantization=quantization, checkpointing=True,
                         images=images, megapixels=megapixels, text_parked=text_parked, offload=True)
    log.info("offload auto: blocks, estimated peak %.1f GiB (%.1f GiB without) of %.1f GiB", offloaded, peak,
             memory_gib)
    return True


def folder_weights(folder: Path, denoiser: str) -> Weights | None:
    """Parameter counts read from the safetensors headers of a diffusers folder's parts (no weights are read);
    None when the denoiser has no such files (a single-file checkpoint: auto then keeps none)."""
    if not (folder / denoiser).is_dir():
        return None
    counts = {part.name: _parameters(part) for part in folder.iterdir() if part.is_dir()}
    if not counts.get(denoiser):
        return None
    return Weights(denoiser=counts[denoiser] / 1e9, others=sum(v for k, v in counts.items() if k != denoiser) / 1e9)


def _parameters(part: Path) -> int:
    """Parameters in one part's safetensors files; of the plain files only when variants (``x.fp16.safetensors``)
    sit beside them, so that no weight is counted twice."""
    from safetensors import safe_open

    files = sorted(part.glob("*.safetensors"))
    plain = [f for f in files if f.name.count(".") == 1]
    total = 0
    for file in plain or files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def gpu_memory_gib(device: torch.device, env: Mapping[str, str] | None = None) -> float | None:
    """The memory of one GPU that the auto settings plan with, in GiB: the node's, as the operator passed it
    (`ENV_GPU_MEMORY`, from the node's label), else what torch reports for `device`, else None (CPU).

    On CUDA with both known it is the smaller. torch's figure is what this process can allocate on the
    device it holds: a stale or hand-set label, or one naming the whole card where the pod got a MIG slice,
    must never make the trainer plan for memory the device does not have. A label below torch's figure is
    the platform saying the pod gets less than the device (a card shared through MPS limits, say), which
    torch cannot see.

    Args:
        device: The training device.
        env: The environment to read; default ``os.environ``.

    Raises:
        ConfigError: The variable is set but not a positive whole number of MiB.
    """
    env = os.environ if env is None else env
    try:
        mib = TrainerEnv.from_env({ENV_GPU_MEMORY: env.get(ENV_GPU_MEMORY, "")}).gpu_memory_mib
    except ValueError as err:
        raise ConfigError(str(err)) from err
    node = None if mib is None else mib * 2**20 / GIB
    if device.type != "cuda":
        return node
    device_gib = torch.cuda.get_device_properties(device).total_memory / GIB
    return device_gib if node is None else min(node, device_gib)


def base_quantization(setting: str, family: Family, folder: Path | SingleFileModel | None, device: torch.device, *,
                      images: int, megapixels: float, dora: bool = False, offload: bool = False) -> str:
    """training.baseQuantization for this job: auto chooses (`choose_quantization`) from the memory of the GPU
    the pod holds (`gpu_memory_gib`; none when it is unknown, on CPU without the node's figure) and the model
    folder's weights; `offload`: training.offload is blocks (offload auto is decided after, from the chosen
    quantization)."""
    memory = gpu_memory_gib(device)
    weights = folder_weights(folder, family.denoiser_name) if isinstance(folder, Path) else None
    return choose_quantization(setting, weights, family.activation_gib_per_megapixel, memory_gib=memory,
                               images=images, megapixels=megapixels, dora=dora, offload=offload)
