"""The preview contact sheet: one row per epoch, one column per image, epoch labels on the left."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

LABEL_WIDTH = 72
PAD = 4
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def contact_sheet(rows: Sequence[tuple[str, Sequence[Image.Image]]],
                  cell: tuple[int, int] | None = None) -> Image.Image:
    """Compose labelled rows of images into one RGB image.

    Args:
        rows: ``(label, images)`` per row, top to bottom (e.g. ``("epoch 3", [...])``).
        cell: Size every image is fitted into (aspect kept, centred). Default: the largest image.

    Returns:
        An image ``LABEL_WIDTH + columns * (cell + PAD)`` wide and ``rows * (cell + PAD)`` high.

    Raises:
        ValueError: No images at all.
    """
    images = [im for _, ims in rows for im in ims]
    if not images:
        raise ValueError("no preview images to compose")
    cw, ch = cell or (max(im.width for im in images), max(im.height for im in images))
    columns = max(len(ims) for _, ims in rows)
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * (cw + PAD) + PAD, len(rows) * (ch + PAD) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for r, (label, ims) in enumerate(rows):
        top = PAD + r * (ch + PAD)
        draw.text((PAD, top + ch // 2 - 5), label, fill=INK)
        for c, im in enumerate(ims):
            fitted = im.convert("RGB")
            fitted.thumbnail((cw, ch))
            left = LABEL_WIDTH + PAD + c * (cw + PAD)
            sheet.paste(fitted, (left + (cw - fitted.width) // 2, top + (ch - fitted.height) // 2))
    return sheet
