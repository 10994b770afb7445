"""What must fit on one GPU to train a LoRA on each benchmark case, computed without a GPU.

`python -m bench.memory [--gpu-gib 80] [--case flux2-1024 ...]` builds every component of a case's
full-size config (bench/configs/) on the meta device (no memory), counts its parameters, and prints per
phase of a run what is resident on the GPU:

- caching: the text encoder(s) and VAE encode every caption and image once (the denoiser is on the GPU
  too: `LoraRecipe.setup` moves every part before caching, except an offloaded denoiser);
- training: the denoiser's frozen weights, the LoRA with its gradients and AdamW states (fp32), and the
  saved activations of one step (`Family.activation_gib_per_megapixel`, measured on an H100 for Flux.1,
  estimated for the others; `CHECKPOINTED_SHARE` of it with gradient checkpointing); families that release
  their text encoders after caching (`release_text_encoders`) no longer hold them.

Both phases come from the trainer's estimate, `lora_trainer.memory.phases_gib` (the one source the auto
settings read too), given the counted parameters. Each is given for the denoiser's weights in bf16, fp8 and
nf4 (training.baseQuantization; text encoders and VAE stay bf16), and with training.offload blocks, and the
setting the auto options would pick is named. The figures are estimates: allocator slack and temporary
buffers come on top (`precision.MEMORY_HEADROOM` keeps 10% back).

`python -m bench.memory --options [--batch 2] [--gpu 24 --gpu 80]` prints the other view: per family and
memory option, the peak of `lora_trainer.memory.peak_gib` (what training.baseQuantization auto uses): the
frozen weights on the GPU (the denoiser at its quantized size; text encoders and VAE in bf16, as the trainer
keeps them there) plus the denoiser's saved activations (the family's `activation_gib_per_megapixel`,
`CHECKPOINTED_SHARE` of it with gradient checkpointing), one image at the family's resolution. "+park": the
text encoders leave the GPU after caching (`lora_trainer.textpark`), so the peak is the larger of caching
and the steps; "+offload": training.offload blocks (`OFFLOADED_SHARE` of the denoiser on the GPU). The
LoRA, its gradients and AdamW state and the CUDA context (~0.5 GiB) are left out there.
Its rows come from the family table; a family without a parameter count in `PARAMS` is printed as such.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from bench.trainer import CASES, RANK, Case
from bench.trainer_models import _classes, load_config
from lora_operator.api.families import FAMILIES
from lora_trainer.families import get_family
from lora_trainer.memory import (
    GIB,
    MEMORY_HEADROOM,
    QUANTIZATIONS,
    QUANTIZED_BYTES,
    Weights,
    peak_gib,
    phases_gib,
)

QUANTIZATION = {"bf16": "none", "fp8": "fp8", "nf4": "nf4"}
"""training.baseQuantization by the name this table prints for the denoiser's weights."""
BYTES = {name: QUANTIZED_BYTES[kind] for name, kind in QUANTIZATION.items()}
"""Bytes per denoiser weight, by the name this table prints: the trainer's estimate."""
LORA_BYTES = 16
"""Per trainable LoRA parameter: fp32 weight, gradient and AdamW's two moments."""


@dataclass
class Parts:
    """Parameter counts of a case's components."""

    denoiser: int
    text_encoders: int
    vae: int
    lora: int


def _meta(entry: dict[str, Any]) -> torch.nn.Module:
    cls = _classes()[entry["class"]]
    with torch.device("meta"):
        if hasattr(cls, "from_config"):
            return cls.from_config(entry["config"])
        return cls(cls.config_class(**entry["config"]))


def count(case: Case) -> Parts:
    """Parameters of the full-size components of `case`, and of a rank-RANK LoRA on the family's targets."""
    import re

    spec = load_config(case.config or case.family)
    family = get_family(case.family)
    denoiser = _meta(spec["denoiser"])
    exclude = re.compile(family.denoiser_exclude) if family.denoiser_exclude else None
    lora = 0
    for name, module in denoiser.named_modules():
        targeted = any(name == t or name.endswith("." + t) for t in family.denoiser_targets)
        if targeted and isinstance(module, torch.nn.Linear) and not (exclude and exclude.fullmatch(name)):
            lora += RANK * (module.in_features + module.out_features)
    return Parts(
        denoiser=sum(p.numel() for p in denoiser.parameters()),
        text_encoders=sum(sum(p.numel() for p in _meta(e).parameters()) for e in spec["text_encoders"]),
        vae=sum(p.numel() for p in _meta(spec["vae"]).parameters()), lora=lora)


def estimate(case: Case, parts: Parts, weights: str, batch: int = 1) -> dict[str, float]:
    """GiB per phase of `case` with the denoiser's weights in `weights` (bf16, fp8, nf4), from the trainer's
    estimate (`lora_trainer.memory.phases_gib`: text encoders and VAE bf16, checkpointed activations a
    `CHECKPOINTED_SHARE`); "offloaded" phases are with training.offload blocks (and checkpointing)."""
    family = get_family(case.family)
    per_megapixel = family.activation_gib_per_megapixel
    if case.family.startswith("flux2"):  # the Flux.2 estimate scales with the transformer's size (Klein 4B / 9B)
        from lora_trainer.families.flux2 import activations_per_megapixel

        per_megapixel = activations_per_megapixel(load_config(case.config or case.family)["denoiser"]["config"])
    counts = Weights(denoiser=parts.denoiser / 1e9, others=(parts.text_encoders + parts.vae) / 1e9, vae=parts.vae / 1e9)
    options = {"quantization": QUANTIZATION[weights], "megapixels": case.resolution**2 / 1e6,
               "images": batch * (2 if case.pairs else 1),  # an edit step's sequence holds the control's tokens too
               "text_parked": getattr(family, "release_text_encoders", False),
               "adapter_gib": parts.lora * LORA_BYTES / GIB}
    caching, training = phases_gib(counts, per_megapixel, checkpointing=False, **options)
    _, checkpointed = phases_gib(counts, per_megapixel, checkpointing=True, **options)
    caching_offloaded, offloaded = phases_gib(counts, per_megapixel, checkpointing=True, offload=True, **options)
    return {"caching": caching, "training": training, "training_checkpointed": checkpointed,
            "caching_offloaded": caching_offloaded, "training_offloaded": offloaded}


def plan(case: Case, parts: Parts, gpu_gib: float, batch: int = 1) -> str:
    """The first setting that fits `gpu_gib`: the base in bf16, fp8, nf4 (without, then with gradient
    checkpointing), as training.baseQuantization auto tries them, then offload blocks on a bf16 or fp8 base
    (nf4 does not offload); or that none does. (With both auto, the trainer picks the quantization first,
    from the steps' peak without parking, and offloads only a bf16 or fp8 base that still does not fit.)"""
    budget = MEMORY_HEADROOM * gpu_gib
    phases = {weights: estimate(case, parts, weights, batch) for weights in BYTES}
    for weights, p in phases.items():
        if p["caching"] > budget:
            continue
        if p["training"] <= budget:
            return f"{weights} base, no checkpointing"
        if p["training_checkpointed"] <= budget:
            return f"{weights} base, gradient checkpointing"
    for weights in ("bf16", "fp8"):
        if max(phases[weights]["caching_offloaded"], phases[weights]["training_offloaded"]) <= budget:
            return f"{weights} base, gradient checkpointing, offload blocks"
    return "does not fit: needs a larger GPU or CPU offload of the text encoder"


def report(keys: list[str], gpu_gib: float) -> str:
    """The table: parameter counts, GiB per phase and dtype, and the plan per case."""
    lines = [f"GPU: {gpu_gib:.0f} GiB (plans keep {1 - MEMORY_HEADROOM:.0%} back); LoRA rank {RANK}, batch 1",
             f"{'case':<22}{'denoiser':>10}{'text':>8}{'lora':>7}  {'weights':<6}{'caching':>9}{'train':>8}"
             f"{'train+ckpt':>12}{'offload: caching':>18}{'train':>7}  plan"]
    for key in keys:
        case = CASES[key]
        parts = count(case)
        first = True
        for weights in BYTES:
            phases = estimate(case, parts, weights)
            head = (f"{key:<22}{parts.denoiser / 1e9:>9.1f}B{parts.text_encoders / 1e9:>7.1f}B"
                    f"{parts.lora / 1e6:>6.0f}M" if first else " " * 47)
            offload = (f"{phases['caching_offloaded']:>18.1f}{phases['training_offloaded']:>7.1f}"
                       if weights != "nf4" else f"{'-':>18}{'-':>7}")
            lines.append(f"{head}  {weights:<6}{phases['caching']:>9.1f}{phases['training']:>8.1f}"
                         f"{phases['training_checkpointed']:>12.1f}{offload}"
                         + (f"  {plan(case, parts, gpu_gib)}" if first else ""))
            first = False
    return "\n".join(lines)


PARAMS: dict[str, Weights] = {
    # Billions of parameters, from the public model cards / configs: denoiser; text encoders + VAE.
    "sd15": Weights(denoiser=0.860, others=0.123 + 0.084, vae=0.084),  # CLIP-L
    "sdxl": Weights(denoiser=2.567, others=0.123 + 0.695 + 0.084, vae=0.084),  # CLIP-L, OpenCLIP bigG
    "flux": Weights(denoiser=11.90, others=0.123 + 4.762 + 0.084, vae=0.084),  # CLIP-L, T5-XXL encoder
    "flux-kontext": Weights(denoiser=11.90, others=0.123 + 4.762 + 0.084, vae=0.084),
    "chroma": Weights(denoiser=8.90, others=4.762 + 0.084, vae=0.084),  # T5-XXL encoder
    "flux2": Weights(denoiser=32.0, others=24.0 + 0.084, vae=0.084),  # FLUX.2 dev: Mistral Small 3.1 24B
    "flux2-klein": Weights(denoiser=4.0, others=4.0 + 0.084, vae=0.084),  # FLUX.2 klein 4B: Qwen3 4B
    "qwen-image": Weights(denoiser=20.4, others=8.3 + 0.127, vae=0.127),  # Qwen2.5-VL 7B
    "z-image": Weights(denoiser=6.15, others=4.0 + 0.084, vae=0.084),  # Qwen3 4B
}
"""Parameter counts per family for the `--options` view (the trainer reads them from the model's files)."""


def table(batch: int, gpus: list[float]) -> str:
    """The `--options` markdown table: a row per family, a column per quantization x checkpointing (x parked
    text encoders); marks the GPUs each fits."""
    options = ([(q, c, False, False) for q in QUANTIZATIONS for c in (False, True)]
               + [(q, True, True, False) for q in QUANTIZATIONS] + [(q, True, True, True) for q in ("none", "fp8")])
    head = ["family", "px", "weights GiB (bf16)"] + [
        f"{q}{' +ckpt' if c else ''}{' +park' if p else ''}{' +offload' if o else ''}" for q, c, p, o in options]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in FAMILIES.items():
        weights = PARAMS.get(name)
        if weights is None:
            lines.append(f"| {name} | {row.resolution} | no parameter count in bench/memory.py PARAMS |")
            continue
        activation = get_family(name).activation_gib_per_megapixel
        cells = []
        for quantization, checkpointing, parked, offload in options:
            peak = peak_gib(weights, activation, quantization=quantization, checkpointing=checkpointing,
                            images=batch, megapixels=row.resolution**2 / 1e6, text_parked=parked, offload=offload)
            fits = [f"{g:g}" for g in gpus if peak <= MEMORY_HEADROOM * g]
            cells.append(f"{peak:.1f}" + (f" (fits {','.join(fits)})" if fits else ""))
        total = (weights.denoiser + weights.others) * 2e9 / GIB
        lines.append(f"| {name} | {row.resolution} | {total:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Print the memory table: per bench case (default) or per family and option (`--options`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="GPU memory (default 80: an H100)")
    parser.add_argument("--case", choices=list(CASES), action="append", help="default: every case")
    parser.add_argument("--options", action="store_true", help="per family and memory option instead")
    parser.add_argument("--batch", type=int, default=1, help="--options: images per micro-batch")
    parser.add_argument("--gpu", type=float, action="append", help="--options: GPU sizes (GiB) to mark fits "
                        "for; default 24, 48 and 80")
    args = parser.parse_args(argv)
    if args.options:
        text = table(args.batch, args.gpu or [24.0, 48.0, 80.0])
    else:
        text = report(args.case or list(CASES), args.gpu_gib)
    print(text)
    return text


if __name__ == "__main__":
    main()
