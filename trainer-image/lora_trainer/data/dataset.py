"""Preparing a dataset folder into training, validation and regularization samples."""

from __future__ import annotations

import json
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from lora_operator.api import Dataset, ModelFamily, SkippedFile
from lora_operator.api.dataset import AutoCaptionMode

from ..errors import ConfigError, DatasetError
from .buckets import target_size
from .captions import read_caption
from .crop import cut_window, scaled_size, window
from .discover import IMAGE_SUFFIXES, discover
from .images import UnusableImage, load_image
from .masks import latent_mask, mask_file, source_mask
from .pairs import missing_control_reason, pair_images

log = logging.getLogger(__name__)

CAPTION_SIDE = 1024
"""Images waiting for the auto-captioner are kept at most this large (memory)."""
CHUNK = 32
"""Images decoded (by a few threads) before the next ones: only these, and for the auto-captioner
their thumbnails, are in memory at once, whatever the dataset's size."""
MAX_LISTED = 10
"""Files named in an error message before "and N more"."""
MIN_HOLD_OUT_IMAGES = 20
"""Datasets from this size up give their validation images up; smaller ones validate on training images."""
REGULARIZATION_PREFIX = "regularization/"
"""Prefix of skipped regularization files in `PreparedDataset.skipped`."""

if TYPE_CHECKING:  # torch stays out of `lora-train upload` (a laptop tool without the trainer extra)
    import torch


@dataclass
class Sample:
    """One training image, decoded, cropped and captioned.

    No decoded copy of the image is kept (a dataset of thousands of images would not fit in
    memory): `decoded` decodes the file again and cuts the same window.

    Attributes:
        key: Path relative to the dataset (or regularization) root, with forward slashes.
        image: An image held in memory, already cut to ``target_size``; None (the default):
            `decoded` reads ``path``.
        caption: Base caption (sidecar or auto caption); prefix and tags come later, except on
            regularization samples, which train with it as written (regularization.classPrompt
            when they have none).
        repeats: Draws per epoch.
        original_size: ``(height, width)`` before cropping (SDXL conditioning).
        crop_top_left: ``(top, left)`` of the cut in the scaled image (SDXL conditioning).
        target_size: ``(height, width)`` of ``image``; samples of a batch share it.
        regularization: True for regularization (class) images.
        scaled_size: ``(height, width)`` of the scaled image the window was cut from
            (None: ``target_size``, nothing was cut away).
    """

    key: str
    image: Image.Image | None
    caption: str
    repeats: int
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]
    regularization: bool = False
    scaled_size: tuple[int, int] | None = None
    path: Path | None = None
    """The image file (when ``image`` is None)."""
    control_path: Path | None = None
    """The control (source) image of an edit pair (dataset.pairs); None: not a pair."""
    mask_path: Path | None = None
    """Its loss-mask file, ``x.mask.png`` (dataset.maskedLoss); None: the alpha channel, if any."""

    def loss_mask(self, flip: bool, latent_hw: tuple[int, int], floor: float) -> torch.Tensor:
        """Loss weights (h, w) on the latent grid from the mask file or alpha channel, cut, scaled and
        mirrored like the image (`masks.latent_mask`); ones for an in-memory image or one without."""
        mask = source_mask(self.path, self.mask_path) if self.path is not None else None
        return latent_mask(mask, self.scaled_size or self.target_size, self.crop_top_left, self.target_size,
                           flip, latent_hw, floor)

    def decoded(self) -> Image.Image:
        """The RGB image cut to ``target_size``: ``image``, or decoded from ``path`` now."""
        if self.image is not None:
            return self.image
        if self.path is None:
            raise ValueError(f"{self.key}: neither an image nor a file")
        return cut_window(load_image(self.path), self.scaled_size or self.target_size, self.crop_top_left,
                          self.target_size)

    def decoded_control(self) -> Image.Image:
        """The pair's control image cut exactly as the target: scaled to the target's scaled size (whatever
        its own size), the same window cut, so both images of a pair line up pixel for pixel."""
        if self.control_path is None:
            raise ValueError(f"{self.key}: not an edit pair (no control image)")
        return cut_window(load_image(self.control_path), self.scaled_size or self.target_size, self.crop_top_left,
                          self.target_size)

    def size_conditioning(self, flipped: bool) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """``(original_size, crop_top_left, target_size)`` for SDXL's add_time_ids.

        A mirrored image shows the window mirrored too: its left edge moves to
        ``scaled_width - left - target_width`` (as kohya's sd-scripts and diffusers' SDXL script do).
        """
        top, left = self.crop_top_left
        if flipped:
            left = (self.scaled_size or self.target_size)[1] - left - self.target_size[1]
        return self.original_size, (top, left), self.target_size


@dataclass
class PreparedDataset:
    """The prepared dataset.

    Attributes:
        train: Samples trained on.
        validation: Samples of the validation loss: held out from `train`, or below
            `MIN_HOLD_OUT_IMAGES` images a fixed subset of it (see `split_validation`).
        regularization: Regularization samples (``regularization=True``), repeats 1 unless
            their folder's repeats.json says otherwise.
        skipped: Files not used and why (regularization files prefixed ``regularization/``).
        warnings: Things worth telling the user that did not stop a file from being used
            (a truncated caption, a repeats.json entry naming no image).
    """

    train: list[Sample]
    validation: list[Sample]
    regularization: list[Sample]
    skipped: list[SkippedFile]
    warnings: list[str] = field(default_factory=list)
    pairs: bool = False
    """Every training and validation sample is an edit pair with a control image (dataset.pairs)."""

    @property
    def held_out(self) -> list[Sample]:
        """The validation samples that do not train (none below `MIN_HOLD_OUT_IMAGES` images)."""
        trained = {s.key for s in self.train}
        return [s for s in self.validation if s.key not in trained]

    def captions_json(self) -> bytes:
        """captions.json: the base caption (sidecar .txt or auto caption) of every image used, by file.

        Prefix, tags, shuffles and dropout are applied per step on top of these; regularization
        files are keyed ``regularization/<file>`` as in the manifest's skipped list.
        """
        captions = {s.key: s.caption for s in sorted(self.train + self.validation, key=lambda s: s.key)}
        captions.update({REGULARIZATION_PREFIX + s.key: s.caption for s in self.regularization})
        return json.dumps(captions, indent=1, ensure_ascii=False).encode()


def prepare_dataset(dataset: Dataset, root: Path, family: ModelFamily, *, seed: int,
                    regularization_root: Path | None = None, captioner=None) -> PreparedDataset:
    """Load, caption, crop and split a local dataset folder, in memory independent of its size.

    Each image is decoded, checked, its crop window chosen, and dropped (a few at a time):
    the samples hold their file and window, and decode again when trained (`Sample.decoded`).

    Args:
        dataset: The job's dataset settings.
        root: Local folder holding the images (already downloaded).
        family: Base-model family (its standard sizes apply when crop.size is unset).
        seed: Seed of the validation split.
        regularization_root: Local folder of regularization images, if the job has them.
        captioner: A `Captioner` (see `load_captioner`); required when dataset.autoCaption is set.

    Raises:
        DatasetError: No usable image (names the files and reasons), an empty folder (names
            it), or a malformed repeats.json.
        ConfigError: Bucket settings allowing no bucket, or a missing captioner / regularization folder.
    """
    _check_settings(dataset, family, captioner, regularization_root)
    samples, skipped, warnings = _load_folder(root, dataset, family, captioner, regularization=False)
    train, validation = split_validation(samples, dataset.validation_split, seed)
    regularization = []
    if regularization_root is not None:
        regularization, reg_skipped, reg_warnings = _load_folder(
            regularization_root, dataset, family, captioner, regularization=True)
        skipped += [SkippedFile(file=REGULARIZATION_PREFIX + s.file, reason=s.reason) for s in reg_skipped]
        warnings += [f"regularization: {w}" for w in reg_warnings]
    for warning in warnings:
        log.warning("dataset: %s", warning)
    return PreparedDataset(train=train, validation=validation, regularization=regularization,
                           skipped=skipped, warnings=warnings, pairs=dataset.pairs)


def _check_settings(dataset: Dataset, family: ModelFamily, captioner, regularization_root) -> None:
    if dataset.crop.buckets:
        try:
            target_size(1, 1, dataset.crop, family)
        except ValueError as exc:
            raise ConfigError(f"dataset.crop: {exc}") from exc
    if dataset.auto_caption is not None and captioner is None:
        raise ConfigError(f"dataset.autoCaption: the tagger {dataset.auto_caption.model} was not loaded")
    if dataset.regularization is not None and regularization_root is None:
        raise ConfigError(f"dataset.regularization: {dataset.regularization.uri} was not downloaded")


@dataclass
class _Loaded:
    key: str
    sample: Sample | None = None
    reason: str | None = None
    warning: str | None = None
    full: Image.Image | None = None  # kept (downscaled) only when the image still needs a caption


def _load_folder(root: Path, dataset: Dataset, family: ModelFamily, captioner, *,
                 regularization: bool) -> tuple[list[Sample], list[SkippedFile], list[str]]:
    label = "regularization folder" if regularization else "dataset folder"
    found = discover(root)
    skipped = [SkippedFile(file=name, reason="not a png, jpg, jpeg or webp image") for name in found.ignored]
    if not found.images:
        others = f"; it holds only: {_names(found.ignored)}" if found.ignored else ""
        raise DatasetError(f"{label} {root} holds no {'/'.join(sorted(s[1:] for s in IMAGE_SUFFIXES))} "
                           f"images{others}")
    default_repeats = 1 if regularization else dataset.repeats
    mode = dataset.auto_caption.mode if dataset.auto_caption else None
    warnings = list(found.warnings)
    images, controls = _pairing(found.images, root, dataset.pairs and not regularization, skipped, warnings)

    def load(path: Path) -> _Loaded:
        key = path.relative_to(root).as_posix()
        repeats = found.repeats.get(key, default_repeats)
        if controls is None:
            return _load_one(path, key, dataset, family, mode, repeats, regularization)
        if path not in controls:
            return _Loaded(key=key, reason=missing_control_reason(path, root))
        return _load_pair(path, controls[path], key, root, dataset, family, mode, repeats)

    samples = []
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(found.images), CHUNK):
            for item in pool.map(load, images[start:start + CHUNK]):
                if item.warning:
                    warnings.append(item.warning)
                if item.sample is None:
                    skipped.append(SkippedFile(file=item.key, reason=item.reason or "unusable"))
                    continue
                if item.full is not None:
                    item.sample.caption = captioner.caption(item.full)
                if regularization and not item.sample.caption:
                    item.sample.caption = dataset.regularization.class_prompt
                samples.append(item.sample)
    if not samples:
        bad = [f"{s.file} ({s.reason})" for s in skipped]
        raise DatasetError(f"no usable image in {label} {root}: {_names(bad)}")
    return samples, skipped, warnings


def _load_one(path: Path, key: str, dataset: Dataset, family: ModelFamily, mode: AutoCaptionMode | None,
              repeats: int, regularization: bool) -> _Loaded:
    try:
        image = load_image(path)
    except UnusableImage as exc:
        return _Loaded(key=key, reason=str(exc))
    caption, warning = read_caption(path)
    needs_caption = mode == AutoCaptionMode.REPLACE or (mode == AutoCaptionMode.MISSING and not caption)
    full = None
    if needs_caption:
        full = image.copy()
        full.thumbnail((CAPTION_SIDE, CAPTION_SIDE))
    size = target_size(image.height, image.width, dataset.crop, family)
    top_left = window(image, size, dataset.crop.mode)  # the pixels are decoded again when trained
    mask = mask_file(path) if dataset.masked_loss.enabled else None
    if mask is not None:
        source_mask(path, mask)  # a bad mask file stops the run now, naming it
    sample = Sample(key=key, image=None, path=path, mask_path=mask, caption=caption or "", repeats=repeats,
                    original_size=(image.height, image.width), crop_top_left=top_left,
                    target_size=size, regularization=regularization,
                    scaled_size=scaled_size((image.height, image.width), size, dataset.crop.mode))
    return _Loaded(key=key, sample=sample, warning=f"{key}: {warning}" if warning else None, full=full)


def _pairing(images: list[Path], root: Path, pairs: bool, skipped: list[SkippedFile],
             warnings: list[str]) -> tuple[list[Path], dict[Path, Path] | None]:
    """(target images, control of each target); without `pairs` every image, and None. Control images
    without a target go to `skipped`, ambiguous pairs to `warnings`."""
    if not pairs:
        return images, None
    found = pair_images(images, root)
    warnings += found.warnings
    skipped += [SkippedFile(file=path.relative_to(root).as_posix(), reason=f"control image without a target image "
                                                                          f"({wanted})")
                for path, wanted in found.orphans]
    return found.targets, found.controls


def _load_pair(path: Path, control: Path, key: str, root: Path, dataset: Dataset, family: ModelFamily,
               mode: AutoCaptionMode | None, repeats: int) -> _Loaded:
    """An edit pair: the target as `_load_one` loads it, kept only when its control image decodes too."""
    control_key = control.relative_to(root).as_posix()
    try:
        load_image(control)
    except UnusableImage as exc:
        return _Loaded(key=key, reason=f"control image {control_key}: {exc}")
    loaded = _load_one(path, key, dataset, family, mode, repeats, regularization=False)
    if loaded.sample is not None:
        loaded.sample.control_path = control
    return loaded


def split_validation(samples: list[Sample], share: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Pick ``share`` of the images (at least one when share > 0) for the validation loss, by ``seed``.

    From `MIN_HOLD_OUT_IMAGES` images up they are held out (at most half): the loss then
    measures images the adapter never saw. A smaller dataset cannot spare an image, so all
    of them train and the validation images are a fixed subset of the training images (the
    loss, at fixed timesteps and noise, then tracks fit, not generalisation). The choice
    depends only on the seed and the image keys, not on decoding order.

    Returns:
        ``(train, validation)``, both in key order; below `MIN_HOLD_OUT_IMAGES` every
        validation sample is also in train.
    """
    count = len(samples)
    if share <= 0.0 or count == 0:
        return list(samples), []
    held = max(1, int(count * share + 0.5))
    keys = sorted(sample.key for sample in samples)
    if count < MIN_HOLD_OUT_IMAGES:
        chosen = set(random.Random(seed).sample(keys, min(held, count)))
        return list(samples), [s for s in samples if s.key in chosen]
    chosen = set(random.Random(seed).sample(keys, min(held, count // 2)))
    train = [s for s in samples if s.key not in chosen]
    validation = [s for s in samples if s.key in chosen]
    return train, validation


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
