"""Finding the images of a dataset folder, their caption files and per-image repeats."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
"""Image formats a dataset may hold (any letter case)."""
SIDECAR_SUFFIXES = frozenset({".txt", ".json", ".caption"})
"""Files that belong to the dataset without being images (captions, repeats.json)."""
REPEATS_FILE = "repeats.json"
MAX_REPEATS = 1000


@dataclass
class Discovered:
    """What a dataset folder holds.

    Attributes:
        images: Image files, sorted by their path relative to the root.
        ignored: Other files (not images, captions or repeats.json), relative paths.
        repeats: Per-image repeats from repeats.json files, by relative path.
        warnings: Entries of repeats.json that name no image.
    """

    images: list[Path] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    repeats: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def discover(root: Path) -> Discovered:
    """Walk ``root`` recursively for images; hidden files and folders (``.name``) are left out.

    Raises:
        DatasetError: ``root`` is not a folder, or a repeats.json is malformed.
    """
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    found = Discovered()
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES and path.stem.lower().endswith(".mask"):
            continue  # a loss mask of the image beside it (data/masks.py), never a training image
        if suffix in IMAGE_SUFFIXES:
            found.images.append(path)
        elif path.name == REPEATS_FILE:
            found.repeats.update(read_repeats(path, root))
        elif suffix not in SIDECAR_SUFFIXES:
            found.ignored.append(relative.as_posix())
    keys = {p.relative_to(root).as_posix() for p in found.images}
    found.warnings.extend(f"{REPEATS_FILE} names {key}, which is not an image of the dataset"
                          for key in sorted(set(found.repeats) - keys))
    return found


def read_repeats(path: Path, root: Path) -> dict[str, int]:
    """Read a repeats.json (``{"file.png": 3}``), keys relative to its own folder.

    Returns:
        Repeats by image path relative to ``root``.

    Raises:
        DatasetError: Not a JSON object of image names to integers in [1, 1000].
    """
    name = path.relative_to(root).as_posix()
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f'{name} must be a JSON object like {{"image.png": 3}}')
    folder = path.parent.relative_to(root)
    repeats = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPEATS:
            raise DatasetError(f"{name}: repeats of {key!r} must be an integer from 1 to {MAX_REPEATS}, "
                               f"not {value!r}")
        repeats[(folder / key).as_posix()] = value
    return repeats
