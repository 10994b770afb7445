"""Peak GPU memory of a LoRA training step per family and memory option, estimated without a GPU.

The estimate is `lora_trainer.memory.peak_gib` (what training.baseQuantization auto uses): the frozen
weights on the GPU (the denoiser at its quantized size; text encoders and VAE in bf16, as the trainer
keeps them there) plus the denoiser's saved activations (the family's `activation_gib_per_megapixel`,
`CHECKPOINTED_SHARE` of it with gradient checkpointing), one image at the family's resolution. "+park":
the text encoders leave the GPU after caching (`lora_trainer.textpark`: deterministic captions, frozen
text), so the peak is the larger of caching and the steps. The LoRA,
its gradients and AdamW state (tens of MiB at rank 16) and the CUDA context (~0.5 GiB) are left out.

Rows come from the family table: a family added there appears here; one without a parameter count in
`PARAMS` is printed as such.

Example:
    python bench/memory_options.py
    python bench/memory_options.py --batch 2 --gpu 24 --gpu 80
"""

from __future__ import annotations

import argparse

from lora_operator.api.families import FAMILIES
from lora_trainer.families import get_family
from lora_trainer.memory import MEMORY_HEADROOM, QUANTIZATIONS, Weights, peak_gib

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


def table(batch: int, gpus: list[float]) -> str:
    """The markdown table: a row per family, a column per quantization x checkpointing; marks what fits."""
    options = [(q, c, False) for q in QUANTIZATIONS for c in (False, True)] + [(q, True, True) for q in QUANTIZATIONS]
    head = ["family", "px", "weights GiB (bf16)"] + [f"{q}{' +ckpt' if c else ''}{' +park' if p else ''}"
                                                      for q, c, p in options]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in FAMILIES.items():
        weights = PARAMS.get(name)
        if weights is None:
            lines.append(f"| {name} | {row.resolution} | no parameter count in bench/memory_options.py PARAMS |")
            continue
        activation = get_family(name).activation_gib_per_megapixel
        cells = []
        for quantization, checkpointing, parked in options:
            peak = peak_gib(weights, activation, quantization=quantization, checkpointing=checkpointing,
                            images=batch, megapixels=row.resolution**2 / 1e6, text_parked=parked)
            fits = [f"{g:g}" for g in gpus if peak <= MEMORY_HEADROOM * g]
            cells.append(f"{peak:.1f}" + (f" (fits {','.join(fits)})" if fits else ""))
        total = (weights.denoiser + weights.others) * 2e9 / 2**30
        lines.append(f"| {name} | {row.resolution} | {total:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="images per micro-batch")
    parser.add_argument("--gpu", type=float, action="append", help="GPU sizes (GiB) to mark fits for; "
                        "default 24, 48 and 80", default=None)
    args = parser.parse_args()
    print(table(args.batch, args.gpu or [24.0, 48.0, 80.0]))


if __name__ == "__main__":
    main()
