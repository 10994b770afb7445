"""A before/after contact sheet: the trigger and a control prompt, the base and then each epoch's LoRA.

One row per model (the base first, then epoch 1, 2, ...), the trigger prompt's samples on the
left and the control prompt's on the right, same seeds in every row, each 32 px image
upscaled (nearest neighbour) so a person reads it at a glance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .concept import images_of, load_adapter, unload_adapter
from .sampling import load_pipeline

SCALE = 4
LABEL_WIDTH = 90
GAP = 8


def contact_sheet(base: Path, loras: list[tuple[str, Path]], trigger: str, control: str,
                  seeds: list[int]) -> Image.Image:
    """Sample the base and each (label, diffusers LoRA folder) in `loras`; returns the sheet."""
    pipe = load_pipeline(base)
    rows = [("base", images_of(pipe, [trigger, control], seeds))]
    for label, folder in loras:
        load_adapter(pipe, folder, label.replace(" ", "_"))
        rows.append((label, images_of(pipe, [trigger, control], seeds)))
        unload_adapter(pipe, folder)
    side = 32 * SCALE
    n = len(seeds)
    width = LABEL_WIDTH + 2 * n * side + GAP
    sheet = Image.new("RGB", (width, 20 + len(rows) * side), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((LABEL_WIDTH, 4), trigger, fill="black")
    draw.text((LABEL_WIDTH + n * side + GAP, 4), control, fill="black")
    for r, (label, images) in enumerate(rows):
        y = 20 + r * side
        draw.text((4, y + side // 2 - 6), label, fill="black")
        for i, image in enumerate(images):
            x = LABEL_WIDTH + i * side + (GAP if i >= n else 0)
            tile = Image.fromarray(np.asarray(image)).resize((side, side), Image.NEAREST)
            sheet.paste(tile, (x, y))
    return sheet
