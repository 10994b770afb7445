"""Decoding dataset images into plain RGB, whatever the file holds.

Handles EXIF orientation, grayscale / palette / CMYK / 16-bit / transparent images and
refuses decompression bombs before decoding them. Any image that cannot be used raises
`UnusableImage` with a reason a user understands; the dataset lists it as skipped.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 100_000_000
"""Largest image accepted (100 MP, e.g. 12000x8000): a bigger one is skipped, not decoded,
because a small file can declare a huge canvas (a decompression bomb) and exhaust memory."""

# We enforce MAX_PIXELS ourselves before decoding; Pillow's own warning (above ~89 MP)
# would only add noise. Its hard error (above ~179 MP) is caught and reported below.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


class UnusableImage(Exception):
    """An image file that cannot be trained on; the message is the reason."""


def load_image(path: Path, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file as an upright RGB image.

    Args:
        path: A png, jpg/jpeg or webp file.
        max_pixels: Refuse images with more pixels than this. Default: `MAX_PIXELS`.

    Returns:
        A fully decoded RGB image, rotated as its EXIF orientation says.

    Raises:
        UnusableImage: Corrupt, truncated, not an image, or too large.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise UnusableImage(_too_large(width, height, max_pixels))
            if width < 1 or height < 1:
                raise UnusableImage(f"image has no pixels ({width}x{height})")
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright)
    except Image.DecompressionBombError as exc:
        # Pillow refuses the largest canvases inside Image.open, before we see the size.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "too many pixels"
        raise UnusableImage(f"image has {size}, above the {max_pixels / 1e6:.0f} MP limit; "
                            "downscale it before training") from exc
    except UnidentifiedImageError as exc:
        raise UnusableImage("not a readable image (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data surfaces while decoding, as OSError / SyntaxError.
        raise UnusableImage(f"corrupt or truncated image ({exc})") from exc


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (f"image is {width}x{height} ({width * height / 1e6:.0f} MP), above the "
            f"{max_pixels / 1e6:.0f} MP limit; downscale it before training")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white.

    16-bit grayscale is scaled to 8 bits (Pillow's own conversion would clip it to white).
    """
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max(initial=0) > 255 else 1.0
        gray = np.clip(values / scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image.copy() if image.readonly else image
