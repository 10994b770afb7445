"""Loss masks (dataset.maskedLoss): where in an image the loss counts.

A mask comes from a file beside the image, ``x.mask.png`` for ``x.png`` (any image suffix; white:
full weight, black: the floor), else from the image's alpha channel. It travels with its image: the
same scale and window cut (`cut_window`), the same mirror when flipped, then averaged down to the
latent grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ..errors import DatasetError
from .crop import cut_window
from .discover import IMAGE_SUFFIXES

if TYPE_CHECKING:  # torch is imported where masks are made (training), not by upload's discovery
    import torch

MASK_STEM = ".mask"
"""What a mask file's stem ends with: ``x.mask.png`` is the mask of ``x.png``."""
_ALPHA = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


def is_mask_file(path: Path) -> bool:
    """Whether `path` is a loss mask (``*.mask.png``), not a training image."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.stem.lower().endswith(MASK_STEM)


def mask_file(image: Path) -> Path | None:
    """The mask file beside `image`, if there is one."""
    for suffix in sorted(IMAGE_SUFFIXES):
        candidate = image.with_name(image.stem + MASK_STEM + suffix)
        if candidate.is_file():
            return candidate
    return None


def source_mask(image_path: Path, mask_path: Path | None) -> Image.Image | None:
    """The full-size mask (mode L) of an image: its mask file, else its alpha channel; None: neither.

    Raises:
        DatasetError: the mask file cannot be read or its size differs from the image's.
    """
    with Image.open(image_path) as image:
        size = image.size
        alpha = image.convert("RGBA").getchannel("A") if image.mode in _ALPHA or "transparency" in image.info \
            else None
    if mask_path is None:
        return alpha
    try:
        with Image.open(mask_path) as mask:
            mask = mask.convert("L")
    except OSError as err:
        raise DatasetError(f"{mask_path.name}: not a readable mask image ({err})") from err
    if mask.size != size:
        raise DatasetError(f"{mask_path.name}: mask is {mask.size[0]}x{mask.size[1]}, its image "
                           f"{image_path.name} is {size[0]}x{size[1]}; a mask must have its image's size")
    return mask


def latent_mask(mask: Image.Image | None, scaled: tuple[int, int], top_left: tuple[int, int],
                target: tuple[int, int], flip: bool, latent_hw: tuple[int, int], floor: float) -> torch.Tensor:
    """Loss weights on the latent grid, (h, w) in [floor, 1]: the mask cut like its image, mirrored when
    the image is, averaged over each latent cell; all ones without a mask."""
    import torch
    import torch.nn.functional as F

    if mask is None:
        return torch.ones(latent_hw)
    cut = cut_window(mask, scaled, top_left, target)
    values = torch.frombuffer(bytearray(cut.tobytes()), dtype=torch.uint8).float().view(1, 1, *target) / 255
    if flip:
        values = torch.flip(values, dims=[-1])
    small = F.adaptive_avg_pool2d(values, latent_hw)[0, 0]
    return floor + (1 - floor) * small
