"""The model families: one row each, read by the API models, the CRD generator, presets and the trainer.

Adding a family is one row here plus its trainer module (``row.trainer``); nothing else names a
family. The table imports nothing heavy (no torch), so the operator reads it too. Tests may
register a throwaway row with `register` (and take it out again with `unregister`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPreset:
    """What ``training.steps: auto`` means for a dataset of n images:
    ``base + per_image * min(n, up_to) + beyond * max(n - up_to, 0)``.

    Attributes:
        per_image: Steps per image up to `up_to` images.
        base: Steps whatever the dataset size.
        up_to: Images counted at `per_image` (None: all).
        beyond: Steps per image past `up_to`.
    """

    per_image: int
    base: int = 0
    up_to: int | None = None
    beyond: int = 0

    def steps(self, images: int) -> int:
        """The preset's step count for `images` images."""
        counted = images if self.up_to is None else min(images, self.up_to)
        return self.base + self.per_image * counted + self.beyond * (images - counted)

    def formula(self, images: int) -> str:
        """`steps` written out for the printed plan, e.g. "175 x 6 images", "500 + 50 x 6 images"."""
        counted = images if self.up_to is None else min(images, self.up_to)
        text = f"{self.per_image} x {counted}"
        if self.beyond and images > counted:
            text += f" + {self.beyond} x {images - counted}"
        return (f"{self.base} + " if self.base else "") + text + " images"


@dataclass(frozen=True)
class DistilledVariant:
    """A step-distilled checkpoint of a family that a LoRA must not be trained on directly (it breaks the
    distillation): a base model URI naming it is refused, naming the base to train on instead.

    Attributes:
        name: The distilled variant, e.g. Z-Image-Turbo.
        pattern: Case-insensitive regex searched in ``baseModel.uri``.
        base: The undistilled checkpoint to train on, e.g. Tongyi-MAI/Z-Image.
    """

    name: str
    pattern: str
    base: str

    def problem(self, uri: str) -> tuple[str, str] | None:
        """("baseModel.uri", why) when `uri` names the distilled variant, else None."""
        if not re.search(self.pattern, uri, re.IGNORECASE):
            return None
        return ("baseModel.uri", f"{uri} is {self.name}, a step-distilled model: a LoRA trained directly on it "
                                 f"breaks the distillation; train on the base model {self.base} instead (its "
                                 f"LoRAs load on {self.name} too)")


@dataclass(frozen=True)
class FamilyRow:
    """Everything outside the trainer's family module needs to know about a family.

    Attributes:
        name: The ``baseModel.family`` value.
        text_encoders: Kind of each text encoder, in pipeline order (their count is the length).
        latent_channels: Channels of the VAE latents.
        latent_dims: Spatial dimensions of the latents (2: images).
        resolution: Side of the square area the family was trained at (aspect buckets aim at it).
        sizes: The standard training sizes, (height, width): square, landscape, portrait.
        steps: The ``steps: auto`` preset.
        adapters: The adapter types (``spec.type``) the family can train.
        formats: The checkpoint formats (``checkpoints.formats``) it can write.
        pipeline: The diffusers pipeline class its previews use.
        prediction: What the denoiser predicts: epsilon (or v, from the scheduler config) or flow.
        trainer: ``module:Class`` of its trainer family (in the trainer image).
        edit: It trains on ``dataset.pairs`` (control image -> target image, the caption the
            instruction); a job with pairs for a family without it is refused.
        distilled: Its distilled variant, refused as a base model (None: none).
    """

    name: str
    text_encoders: tuple[str, ...]
    latent_channels: int
    latent_dims: int
    resolution: int
    sizes: tuple[tuple[int, int], ...]
    steps: StepPreset
    adapters: tuple[str, ...]
    formats: tuple[str, ...]
    pipeline: str
    prediction: str
    trainer: str
    edit: bool = False
    distilled: DistilledVariant | None = None


FLUX2_DATA = dict(
    latent_channels=32, latent_dims=2, resolution=1024, sizes=((1024, 1024), (768, 1024), (1024, 768)),
    steps=StepPreset(per_image=100, base=500, up_to=30), adapters=("lora",), formats=("kohya", "diffusers"),
    prediction="flow",
)
"""What Flux.2 dev and Klein share: 32-channel latents trained at 1024 in 16-pixel multiples (8x VAE, 2x2
patches); LoRA only (no convolutions to adapt, no CLIP-style token embedding); the text encoders (Mistral-Small-3
24B, Qwen3 4B / 8B) stay frozen, their outputs cached and the encoders released.
Steps: no Flux.2 trainer publishes a per-image rule; published Klein-base runs train 250-1000 steps at rank 32 /
lr 1e-4 for a style, subject runs 1200-3000: 500 + 100 per image (up to 30) gives 1500 for 10 images, 3500 for
30 (examples/templates/flux2.yaml cites the sources)."""

FAMILIES: dict[str, FamilyRow] = {
    row.name: row
    for row in (
        FamilyRow(
            name="sd15", text_encoders=("clip-l",), latent_channels=4, latent_dims=2, resolution=512,
            sizes=((512, 512), (512, 768), (768, 512)), steps=StepPreset(per_image=175),
            adapters=("lora", "locon", "loha", "lokr", "embedding"), formats=("kohya", "diffusers"),
            pipeline="StableDiffusionPipeline", prediction="epsilon",
            trainer="lora_trainer.families.sd15:SD15Family",
        ),
        FamilyRow(
            name="sdxl", text_encoders=("clip-l", "openclip-g"), latent_channels=4, latent_dims=2, resolution=1024,
            sizes=((1024, 1024), (768, 1024), (1024, 768)), steps=StepPreset(per_image=350, up_to=30, beyond=75),
            adapters=("lora", "locon", "loha", "lokr", "embedding"), formats=("kohya", "diffusers"),
            pipeline="StableDiffusionXLPipeline", prediction="epsilon",
            trainer="lora_trainer.families.sdxl:SDXLFamily",
        ),
        FamilyRow(
            name="flux", text_encoders=("clip-l", "t5-xxl"), latent_channels=16, latent_dims=2, resolution=1024,
            sizes=((1024, 1024), (768, 1024), (1024, 768)), steps=StepPreset(per_image=50, base=500),
            adapters=("lora", "loha", "embedding"), formats=("kohya", "diffusers"),
            pipeline="FluxPipeline", prediction="flow",
            trainer="lora_trainer.families.flux:FluxFamily",
        ),
        # Chroma: Flux.1-schnell pruned (8.9B), T5 only, no CLIP to train an embedding for. Steps as Flux.1.
        FamilyRow(
            name="chroma", text_encoders=("t5-xxl",), latent_channels=16, latent_dims=2, resolution=1024,
            sizes=((1024, 1024), (768, 1024), (1024, 768)), steps=StepPreset(per_image=50, base=500),
            adapters=("lora",), formats=("kohya", "diffusers"),
            pipeline="ChromaPipeline", prediction="flow",
            trainer="lora_trainer.families.chroma:ChromaFamily",
        ),
        # Flux.1 Kontext dev: the Flux.1 transformer that reads the control image's tokens beside its own.
        FamilyRow(
            name="flux-kontext", text_encoders=("clip-l", "t5-xxl"), latent_channels=16, latent_dims=2,
            resolution=1024, sizes=((1024, 1024), (768, 1024), (1024, 768)), steps=StepPreset(per_image=50, base=500),
            adapters=("lora",), formats=("kohya", "diffusers"),
            pipeline="FluxKontextPipeline", prediction="flow",
            trainer="lora_trainer.families.flux_kontext:FluxKontextFamily", edit=True,
        ),
        # Flux.2 dev and Klein (4B / 9B): see FLUX2_DATA.
        FamilyRow(name="flux2", **FLUX2_DATA, pipeline="Flux2Pipeline", text_encoders=("mistral-small-3",),
                  trainer="lora_trainer.families.flux2:Flux2Family"),
        # Klein edits with the same checkpoint and pipeline (Flux2KleinPipeline's `image`), so edit pairs are
        # this row with dataset.pairs, not a family of their own (unlike Kontext's separate checkpoint).
        FamilyRow(name="flux2-klein", **FLUX2_DATA, pipeline="Flux2KleinPipeline", text_encoders=("qwen3",),
                  trainer="lora_trainer.families.flux2:Flux2KleinFamily", edit=True),
        # Z-Image (Tongyi-MAI/Z-Image, 6B single-stream DiT, Qwen3-4B text, Flux.1's 16-channel VAE). Steps:
        # ai-toolkit's train_lora_zimage_base_32gb.yaml trains 3000 steps ("2500-3000 typical"), reached here
        # at 25 images. LoRA only: no convolutions in the transformer, no CLIP token embedding.
        FamilyRow(
            name="z-image", text_encoders=("qwen3-4b",), latent_channels=16, latent_dims=2, resolution=1024,
            sizes=((1024, 1024), (768, 1024), (1024, 768)), steps=StepPreset(per_image=100, base=500, up_to=25),
            adapters=("lora",), formats=("kohya", "diffusers"),
            pipeline="ZImagePipeline", prediction="flow",
            trainer="lora_trainer.families.z_image:ZImageFamily",
            distilled=DistilledVariant(name="Z-Image-Turbo", pattern=r"z[-_ ]?image[-_ ]?turbo",
                                       base="Tongyi-MAI/Z-Image"),
        ),
        # Qwen-Image (Qwen/Qwen-Image, 20B MMDiT, Qwen2.5-VL-7B text). Its VAE is a video VAE: latents are
        # (B, 16, T, H, W), one frame for an image, hence latent_dims 3. Steps: ai-toolkit's
        # train_lora_qwen_image_24gb.yaml trains 2000 ("500 - 4000 is a good range"), reached at 25 images.
        FamilyRow(
            name="qwen-image", text_encoders=("qwen2.5-vl-7b",), latent_channels=16, latent_dims=3, resolution=1024,
            sizes=((1024, 1024), (768, 1024), (1024, 768)), steps=StepPreset(per_image=60, base=500, up_to=25),
            adapters=("lora",), formats=("kohya", "diffusers"),
            pipeline="QwenImagePipeline", prediction="flow",
            trainer="lora_trainer.families.qwen_image:QwenImageFamily",
        ),
        # Qwen-Image-Edit (Qwen/Qwen-Image-Edit-2509 / -2511): Qwen-Image's transformer reading the control
        # image's latents beside its own and the control in Qwen2.5-VL's prompt. Its own checkpoint and pipeline,
        # so its own family (as flux-kontext). Steps as Qwen-Image: the same transformer and objective.
        FamilyRow(
            name="qwen-image-edit", text_encoders=("qwen2.5-vl-7b",), latent_channels=16, latent_dims=3,
            resolution=1024, sizes=((1024, 1024), (768, 1024), (1024, 768)),
            steps=StepPreset(per_image=60, base=500, up_to=25), adapters=("lora",), formats=("kohya", "diffusers"),
            pipeline="QwenImageEditPlusPipeline", prediction="flow",
            trainer="lora_trainer.families.qwen_image_edit:QwenImageEditFamily", edit=True,
        ),
    )
}
"""Every family, in the order the CRD enum and the docs list them."""


class UnknownFamilyError(ValueError):
    """A family name that has no row."""


def family_row(name: str) -> FamilyRow:
    """The row of family `name`.

    Raises:
        UnknownFamilyError: no such family (the message lists the known ones).
    """
    try:
        return FAMILIES[str(name)]
    except KeyError:
        raise UnknownFamilyError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}") from None


def family_names() -> list[str]:
    """The family names, in table order."""
    return list(FAMILIES)


def describe_families() -> str:
    """``sd15, sdxl or flux.``: the names as a sentence (the field's explain text)."""
    names = family_names()
    return (", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]) + "."


def edit_families() -> list[str]:
    """The families that train on edit pairs (``dataset.pairs``), in table order."""
    return [row.name for row in FAMILIES.values() if row.edit]


def register(row: FamilyRow) -> None:
    """Add a row (tests: a throwaway family). Refuses to replace an existing one."""
    if row.name in FAMILIES:
        raise ValueError(f"family {row.name!r} already exists")
    FAMILIES[row.name] = row


def unregister(name: str) -> None:
    """Take out a row that `register` added."""
    del FAMILIES[name]
