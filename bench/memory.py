"""What must fit on one GPU to train a LoRA on each benchmark case, computed without a GPU.

`python -m bench.memory [--gpu-gib 80] [--case flux2-1024 ...]` builds every component of a case's
full-size config (bench/configs/) on the meta device (no memory), counts its parameters, and prints per
phase of a run what is resident on the GPU:

- caching: the text encoder(s) and VAE encode every caption and image once (the denoiser is on the GPU
  too: `LoraRecipe.setup` moves every part before caching);
- training: the denoiser's frozen weights, the LoRA with its gradients and AdamW states (fp32), and the
  saved activations of one step (`Family.activation_gib_per_megapixel`, measured on an H100 for Flux.1,
  estimated for the others) or, with gradient checkpointing, the block inputs plus one block's activations;
  families that release their text encoders after caching (`release_text_encoders`) no longer hold them.

Each phase is given for the base weights in bf16, fp8 and nf4 (the quantized bases of the features issue),
and the cheapest setting that fits is named. The figures are estimates: allocator slack and temporary
buffers come on top (`precision.MEMORY_HEADROOM` keeps 10% back).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from bench.trainer import CASES, RANK, Case
from bench.trainer_models import _classes, load_config
from lora_trainer.families import get_family
from lora_trainer.precision import MEMORY_HEADROOM

GIB = 2**30
BYTES = {"bf16": 2.0, "fp8": 1.0, "nf4": 0.5 + 2 / 64}
"""Bytes per weight: nf4 stores a bf16 scale per 64-weight block (bitsandbytes' default)."""
LORA_BYTES = 16
"""Per trainable LoRA parameter: fp32 weight, gradient and AdamW's two moments."""


@dataclass
class Parts:
    """Parameter counts of a case's components and the shape facts the estimate needs."""

    denoiser: int
    text_encoders: int
    vae: int
    lora: int
    blocks: int
    width: int


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
    config = spec["denoiser"]["config"]
    blocks = config.get("num_layers", 0) + config.get("num_single_layers", 0) or 16  # UNets: about 16 stages
    width = config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0) or 1280
    return Parts(
        denoiser=sum(p.numel() for p in denoiser.parameters()),
        text_encoders=sum(sum(p.numel() for p in _meta(e).parameters()) for e in spec["text_encoders"]),
        vae=sum(p.numel() for p in _meta(spec["vae"]).parameters()), lora=lora, blocks=blocks, width=width)


def estimate(case: Case, parts: Parts, weights: str, batch: int = 1) -> dict[str, float]:
    """GiB per phase of `case` with base weights in `weights` (bf16, fp8, nf4); the VAE stays bf16."""
    family = get_family(case.family)
    megapixels = case.resolution**2 / 1e6
    per = BYTES[weights]
    denoiser, text, vae = parts.denoiser * per / GIB, parts.text_encoders * per / GIB, parts.vae * 2 / GIB
    lora = parts.lora * LORA_BYTES / GIB
    per_megapixel = family.activation_gib_per_megapixel
    if case.family.startswith("flux2"):  # the Flux.2 estimate scales with the transformer's size (Klein 4B / 9B)
        from lora_trainer.families.flux2 import activations_per_megapixel

        per_megapixel = activations_per_megapixel(load_config(case.config or case.family)["denoiser"]["config"])
    images = 2 if case.pairs else 1  # an edit step's sequence holds the control image's tokens too
    activations = batch * images * megapixels * per_megapixel
    tokens = batch * images * (case.resolution // 16) ** 2 + batch * 512  # image patches + text (Flux-style)
    checkpointed = activations / parts.blocks + parts.blocks * tokens * parts.width * 2 / GIB
    released = getattr(family, "release_text_encoders", False)
    return {
        "caching": denoiser + text + vae,
        "training": denoiser + (0 if released else text) + vae + lora + activations,
        "training_checkpointed": denoiser + (0 if released else text) + vae + lora + checkpointed,
    }


def plan(case: Case, parts: Parts, gpu_gib: float, batch: int = 1) -> str:
    """The cheapest setting that fits `gpu_gib`: weights dtype and checkpointing (or that none does)."""
    budget = MEMORY_HEADROOM * gpu_gib
    for weights in BYTES:
        phases = estimate(case, parts, weights, batch)
        if phases["caching"] > budget:
            continue
        if phases["training"] <= budget:
            return f"{weights} base, no checkpointing"
        if phases["training_checkpointed"] <= budget:
            return f"{weights} base, gradient checkpointing"
    return "does not fit: needs a larger GPU or CPU offload of the text encoder"


def report(keys: list[str], gpu_gib: float) -> str:
    """The table: parameter counts, GiB per phase and dtype, and the plan per case."""
    lines = [f"GPU: {gpu_gib:.0f} GiB (plans keep {1 - MEMORY_HEADROOM:.0%} back); LoRA rank {RANK}, batch 1",
             f"{'case':<22}{'denoiser':>10}{'text':>8}{'lora':>7}  {'weights':<6}{'caching':>9}{'train':>8}"
             f"{'train+ckpt':>12}  plan"]
    for key in keys:
        case = CASES[key]
        parts = count(case)
        first = True
        for weights in BYTES:
            phases = estimate(case, parts, weights)
            head = (f"{key:<22}{parts.denoiser / 1e9:>9.1f}B{parts.text_encoders / 1e9:>7.1f}B"
                    f"{parts.lora / 1e6:>6.0f}M" if first else " " * 47)
            lines.append(f"{head}  {weights:<6}{phases['caching']:>9.1f}{phases['training']:>8.1f}"
                         f"{phases['training_checkpointed']:>12.1f}" + (f"  {plan(case, parts, gpu_gib)}" if first
                                                                         else ""))
            first = False
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Print the memory table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="GPU memory (default 80: an H100)")
    parser.add_argument("--case", choices=list(CASES), action="append", help="default: every case")
    args = parser.parse_args(argv)
    text = report(args.case or list(CASES), args.gpu_gib)
    print(text)
    return text


if __name__ == "__main__":
    main()
