"""Edit pairs (``dataset.pairs``): which image of a dataset folder is the control (source) of which target.

Two layouts, mixable in one folder (the same rules `lora-train upload` checks):

- beside the target: ``x.png`` and ``x.control.png``;
- a ``control/`` folder next to the target, holding the same file name: ``x.png`` and ``control/x.png``.

The suffixes may differ (``x.jpg`` with ``x.control.png``). The target's caption is the instruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .discover import IMAGE_SUFFIXES

CONTROL_SUFFIX = ".control"
"""Stem ending of a control image beside its target (``x.control.png``)."""
CONTROL_FOLDER = "control"
"""Folder of control images next to their targets (``control/x.png``)."""


@dataclass
class Pairs:
    """The images of a folder sorted into targets and controls.

    Attributes:
        controls: The control image of each target that has one, by target path.
        targets: Every image that is not a control, in the order found.
        orphans: Control images whose target does not exist, with the target names looked for.
        warnings: Targets with more than one control (the first in name order is used).
    """

    controls: dict[Path, Path] = field(default_factory=dict)
    targets: list[Path] = field(default_factory=list)
    orphans: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def control_key(path: Path) -> tuple[Path, str] | None:
    """(folder, stem) of the target a control image belongs to; None: `path` is no control image."""
    if path.stem.lower().endswith(CONTROL_SUFFIX):
        return path.parent, path.stem[: -len(CONTROL_SUFFIX)]
    if path.parent.name == CONTROL_FOLDER:
        return path.parent.parent, path.stem
    return None


def pair_images(images: list[Path], root: Path) -> Pairs:
    """Split `images` (paths under `root`) into targets and their control images.

    An image named ``*.control.*`` or inside a folder named ``control`` is a control; every other image
    is a target, paired with the control of the same folder and stem.
    """
    found = Pairs()
    by_target: dict[tuple[Path, str], list[Path]] = {}
    for path in images:
        key = control_key(path)
        if key is None:
            found.targets.append(path)
        else:
            by_target.setdefault(key, []).append(path)
    claimed: set[tuple[Path, str]] = set()
    for target in found.targets:
        key = (target.parent, target.stem)
        candidates = sorted(by_target.get(key, []), key=lambda p: p.as_posix())
        if not candidates:
            continue
        claimed.add(key)
        found.controls[target] = candidates[0]
        if len(candidates) > 1:
            names = ", ".join(_rel(p, root) for p in candidates)
            found.warnings.append(f"{_rel(target, root)}: several control images ({names}); "
                                  f"{_rel(candidates[0], root)} is used")
    for key, controls in sorted(by_target.items(), key=lambda item: item[1][0].as_posix()):
        if key not in claimed:
            wanted = _rel(key[0] / (key[1] + ".png"), root)
            found.orphans += [(path, wanted) for path in controls]
    return found


def missing_control_reason(target: Path, root: Path) -> str:
    """The skip reason of a target without a control image, naming both places looked at."""
    beside = _rel(target.with_name(target.stem + CONTROL_SUFFIX + target.suffix), root)
    folder = _rel(target.parent / CONTROL_FOLDER / target.name, root)
    return f"no control image ({beside} or {folder}; any of {', '.join(sorted(IMAGE_SUFFIXES))})"


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
