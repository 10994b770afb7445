"""Dataset settings: where the images are and how they become training samples."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from .base import ApiModel
from .families import edit_families
from .uris import SIZE_PATTERN, URI_PATTERN


class CropMode(StrEnum):
    """How an image is cut to a training size."""

    FOCUS = "focus"
    """Keep the most detailed region (edge energy), for off-centre subjects."""
    CENTER = "center"
    """Cut around the image centre."""
    NONE = "none"
    """Resize only; combine with buckets to keep aspect ratios."""


class Crop(ApiModel):
    """Cropping and aspect-ratio bucketing."""

    mode: CropMode = CropMode.FOCUS
    """focus, center or none. Default: focus."""
    size: str | None = Field(default=None, pattern=SIZE_PATTERN)
    """Target WIDTHxHEIGHT, e.g. 1024x1024, each side 10 to 4096 (no family trains larger;
    a larger size would only run out of GPU memory once the job has a node). Default: the family's
    nearest standard size per image (SD1.5 512x512 / 768x512 / 512x768, SDXL and Flux 1024x1024 /
    768x1024 / 1024x768)."""
    buckets: bool = False
    """Group images into aspect-ratio buckets instead of one size. Default: false."""
    bucket_min_side: int = Field(default=256, ge=64, le=4096)
    """Smallest bucket side in pixels. Default: 256."""
    bucket_max_side: int = Field(default=1536, ge=64, le=4096)
    """Largest bucket side in pixels. Default: 1536."""
    bucket_step: int = Field(default=64, ge=8, le=512)
    """Bucket sides are multiples of this. Default: 64."""

    @model_validator(mode="after")
    def _min_side_within_max(self) -> Crop:
        # Mirrors the CRD's CEL rule, so a local run refuses what the apiserver refuses.
        if self.bucket_min_side > self.bucket_max_side:
            raise ValueError("bucketMinSide must not exceed bucketMaxSide")
        return self


class Tags(ApiModel):
    """Tags added to every caption in batch."""

    prepend: list[str] = Field(default_factory=list, max_length=64)
    """Tags put at the head of each caption (after the caption prefix)."""
    append: list[str] = Field(default_factory=list, max_length=64)
    """Tags put at the tail of each caption."""


class AutoCaptionMode(StrEnum):
    """Which images the auto-captioner writes captions for."""

    MISSING = "missing"
    """Only images without a .txt or .caption caption."""
    REPLACE = "replace"
    """Every image; existing captions are ignored."""


class AutoCaption(ApiModel):
    """Caption images with a tagger model loaded from storage. Captions are cached by image content
    under <output.uri>/<namespace>/.caption-cache/ (per tagger URI and threshold): a retry, a
    retrain or another job of the namespace reads them back and runs the tagger only on new images."""

    model: str = Field(pattern=URI_PATTERN)
    """URI of the tagger model folder (s3://, file:// or hf://). No empty, . or .. path segments."""
    mode: AutoCaptionMode = AutoCaptionMode.MISSING
    """missing or replace. Default: missing."""
    threshold: float = Field(default=0.35, gt=0.0, lt=1.0)
    """Tag probability above which a tag is kept. Default: 0.35."""


class Regularization(ApiModel):
    """Class images that keep the model from forgetting its prior (DreamBooth prior preservation)."""

    uri: str = Field(pattern=URI_PATTERN)
    """URI of the regularization images (with optional .txt or .caption captions). No empty, . or ..
    path segments."""
    weight: float = Field(default=1.0, ge=0.0, le=10.0)
    """Weight of the prior loss. Default: 1.0."""
    class_prompt: str = Field(default="", max_length=200)
    """Caption of the class images that have none of their own, e.g. "a photo of a dog". Class
    images train with their own caption (or this) as written: the trigger (captionPrefix), the
    batch tags and the embedding token are not added, so they keep the class's prior. Default: ""."""


def _pairs_schema(schema: dict) -> None:
    """The explain text of dataset.pairs names the edit families of the table when the schema is made."""
    schema["description"] += f" Edit families: {', '.join(edit_families())}."


class MaskedLoss(ApiModel):
    """Weight the loss by a mask per image, so only the subject is learned."""

    enabled: bool = False
    """Weight each image's loss by its mask: a file beside it named like it with .mask before the
    suffix (x.mask.png for x.png; white counts fully, black weighs floor), else its alpha channel
    (opaque counts fully); an image with neither trains unmasked. Masks are scaled, cropped and
    mirrored with their images. Files named *.mask.png are never trained as images. Default: false."""
    floor: float = Field(default=0.0, ge=0.0, le=1.0)
    """The weight of the fully masked-out area (0: not learned at all; 1: masks have no effect).
    Default: 0."""


class Dataset(ApiModel):
    """The training images and their captions."""

    uri: str | None = Field(default=None, pattern=URI_PATTERN)
    """URI prefix holding png/jpg/jpeg/webp images and optional same-named .txt or .caption captions
    (a .txt wins when both exist; the .caption is then ignored with a warning): s3://bucket/prefix/
    (bucket: lowercase letters, digits, dots, hyphens) or file:///path. No empty, . or .. path
    segments; file:// only under the folder the platform allows (LORA_FILE_URI_ROOT)."""
    caption_prefix: str = Field(default="", max_length=200)
    """Trigger phrase put before every caption, e.g. "TKXW, "."""
    tags: Tags = Field(default_factory=Tags)
    """Tags added in batch at head or tail of every caption."""
    repeats: int = Field(default=1, ge=1, le=1000)
    """How many times each image is drawn in one pass over the data. With training.stepsPreset
    tensorart a pass is an epoch, so repeats multiply the steps; with scenario (the default) or
    a step count the length is fixed and repeats only weight images against each other.
    Per-image overrides come from an optional repeats.json ({"file.png": 3}) next to the
    images. Default: 1."""
    crop: Crop = Field(default_factory=Crop)
    """Cropping and bucketing."""
    flip: bool = False
    """Randomly mirror images horizontally. Default: false."""
    masked_loss: MaskedLoss = Field(default_factory=MaskedLoss)
    """Loss masks from mask files or alpha channels."""
    auto_caption: AutoCaption | None = Field(default=None)
    """Caption images automatically; captions are cached by image content for the namespace
    (<output.uri>/<namespace>/.caption-cache/), so retries, retrains and other jobs run the tagger
    only on images it has not captioned. Default: off."""
    regularization: Regularization | None = None
    """Regularization (class) images. Default: none."""
    pairs: bool = Field(default=False, json_schema_extra=_pairs_schema)
    """Train an edit LoRA (only an edit family, named below): every target image has a
    control (source) image, and its caption is the instruction that turns the control into the
    target, e.g. "make it a watercolor". A pair is named in one of two ways, both allowed in one
    dataset: beside the target, x.png and x.control.png (any image suffix each), or in a control/
    folder next to the target with the same file name, x.png and control/x.png. Crops, buckets and
    flips cut both images of a pair alike (the control is scaled to the target's size first). A
    target without a readable control, or a control without a target, is skipped and listed in the
    manifest's skipped files. Previews edit the held-out pairs' control images. Default: false."""
    validation_split: float = Field(default=0.1, ge=0.0, le=0.5)
    """Share of images whose loss is measured at each epoch end, at fixed timesteps and noise (at
    least one image; 0 turns it off). From 20 images up they are held out of training (at most
    half): the loss measures unseen images. Smaller datasets keep every image for training and
    validate on a fixed subset of the training images: the loss then tracks fit, not
    generalisation. Default: 0.1."""

    @model_validator(mode="after")
    def _pairs_without_class_images(self) -> Dataset:
        # Class images have no control image: an edit batch cannot mix them with pairs.
        if self.pairs and self.regularization is not None:
            raise ValueError("pairs and regularization cannot be combined (class images have no control image)")
        return self
