"""``lora-train upload``: check a dataset folder the way the trainer will read it, then upload it.

The check is the trainer's own preparation (`prepare_dataset`: decoding, modes, sizes, crops,
captions, repeats.json), so what it reports is what the job will see: the images it will
train on, and each file it will skip and why. A folder the trainer would refuse (no usable
image, a malformed repeats.json) is not uploaded.

What is uploaded: the usable images, their caption files, with dataset.pairs their control images
(a target without a readable control, or a control without a target, stays behind and is listed
as skipped), and the repeats.json files, under their paths relative to the folder. Files the
trainer would skip stay behind. An object that is already there with the same content (its S3
ETag is the file's MD5) is not sent again, so an interrupted upload is finished by running the
same command.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_operator.api import Dataset, ModelFamily, SkippedFile, Training
from lora_operator.storage import ObjectStore

from .data import prepare_dataset
from .data.discover import REPEATS_FILE, SIDECAR_SUFFIXES
from .dataset_report import DatasetReport, build_report
from .schedule import Plan, count_steps


@dataclass
class UploadPlan:
    """What the trainer makes of a folder, and the files that go up.

    Attributes:
        usable: Images the trainer will train on (the validation share included); with pairs, the
            target images (each goes up with its control image).
        skipped: Files the trainer will not use, with the reason.
        warnings: The preparation's warnings (cut captions, repeats.json naming no image...).
        files: Paths relative to the folder, in upload order.
        steps: How many steps a job trains on it, and how they were counted (one GPU).
        report: Near-duplicates, upscaled images, buckets, captions and the trigger.
    """

    usable: int
    skipped: list[SkippedFile]
    warnings: list[str]
    files: list[str] = field(default_factory=list)
    steps: str = ""
    report: DatasetReport | None = None


def plan_upload(root: Path, dataset: Dataset, family: ModelFamily, training: Training | None = None) -> UploadPlan:
    """Prepare `root` as the trainer would (without auto-captioning or regularization images).

    `training` (default: the defaults) counts the steps a job on one GPU would take.

    Raises:
        DatasetError: The trainer would refuse the folder (names the files and reasons).
        ConfigError: Dataset settings the trainer would refuse.
    """
    settings = dataset.model_copy(update={"auto_caption": None, "regularization": None})
    prepared = prepare_dataset(settings, root, family, seed=0)
    samples = prepared.train + prepared.validation
    used = sorted({sample.key for sample in samples})  # discover()'s order
    controls = {s.key: s.control_path.relative_to(root).as_posix() for s in samples if s.control_path}
    files = []
    for key in used:
        files.append(key)
        files += [p.relative_to(root).as_posix() for p in _sidecars(root / key)]
        files += [controls[key]] if key in controls else []
    files += sorted(p.relative_to(root).as_posix() for p in root.rglob(REPEATS_FILE) if _visible(p, root))
    training = training or Training()
    steps, text = count_steps(training, family, prepared.train)
    plan = Plan.make(steps, training.epochs)
    return UploadPlan(usable=len(used), skipped=prepared.skipped, warnings=prepared.warnings,
                      files=list(dict.fromkeys(files)),  # a.png and a.jpg share a.txt: send it once
                      steps=f"{text}; {plan.epochs} epochs of {plan.steps_per_epoch} steps",
                      report=build_report(prepared.train + prepared.validation, settings))


def _sidecars(image: Path) -> list[Path]:
    """The caption files beside an image (same name, a sidecar suffix in any letter case)."""
    return sorted(p for p in image.parent.glob(f"{_escape(image.stem)}.*")
                  if p.stem == image.stem and p.suffix.lower() in SIDECAR_SUFFIXES and p.is_file())


def _escape(stem: str) -> str:
    """A file name as a glob pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in stem)


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


@dataclass
class Uploaded:
    """The outcome of `upload`: keys sent, and keys already there with the same content."""

    sent: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def upload(store: ObjectStore, root: Path, files: list[str],
           progress: Callable[[int, int], None] | None = None) -> Uploaded:
    """Put `files` (relative to `root`) under the store's prefix, skipping unchanged objects.

    `progress(done, total)` is called after each file.
    """
    done = Uploaded()
    remote = {info.key: info.etag for info in store.list()}
    for count, key in enumerate(files, 1):
        path = root / key
        if remote.get(key) == _md5(path):
            done.unchanged.append(key)
        else:
            store.put_file(key, path)
            done.sent.append(key)
        if progress is not None:
            progress(count, len(files))
    return done


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
