"""The dataset report `lora-train upload --dry-run` prints: near-duplicates by perceptual hash,
images below the size they train at, the aspect buckets, caption coverage and the trigger."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from lora_trainer.cli import main
from lora_trainer.dataset_report import DUPLICATE_BITS, difference_hash, near_duplicates


def drawing(seed: int, size: tuple[int, int] = (192, 128)) -> Image.Image:
    rng = random.Random(seed)
    image = Image.new("RGB", size, (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randint(0, size[0] - 10), rng.randint(0, size[1] - 10)
        draw.ellipse((x, y, x + rng.randint(8, 40), y + rng.randint(8, 40)),
                     fill=(rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)))
    return image


def test_a_resaved_copy_is_a_near_duplicate_and_other_drawings_are_not():
    images = {f"d{i}.png": drawing(i) for i in range(8)}
    images["d0-copy.jpg"] = images["d0.png"].resize((180, 120)).convert("RGB")  # rescaled, JPEG-like
    hashes = {key: difference_hash(image) for key, image in images.items()}
    pairs = near_duplicates(hashes)
    assert [(a, b) for a, b, _ in pairs] == [("d0-copy.jpg", "d0.png")]
    assert pairs[0][2] <= DUPLICATE_BITS


def test_dry_run_prints_duplicates_small_images_buckets_captions_and_trigger(tmp_path, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(4):
        drawing(i).save(folder / f"d{i}.png")
        (folder / f"d{i}.txt").write_text(f"drawing {i}")
    drawing(0).save(folder / "d0-again.jpg", quality=90)
    drawing(9, (40, 30)).save(folder / "tiny.png")  # no caption, and smaller than any bucket
    drawing(5, (128, 256)).save(folder / "tall.png")
    job = tmp_path / "job.yaml"
    job.write_text(
        "apiVersion: lora-operator.io/v1alpha1\nkind: LoraTrainingJob\nmetadata: {name: s}\n"
        "spec:\n  type: lora\n  baseModel: {family: sd15, uri: 's3://models/sd15/'}\n"
        "  dataset: {uri: 's3://data/s/', captionPrefix: 'zxq person, ', validationSplit: 0,\n"
        "            crop: {mode: center, buckets: true, bucketMinSide: 64, bucketMaxSide: 128, bucketStep: 64}}\n"
        "  output: {uri: 's3://out/'}\n")
    assert main(["upload", str(folder), "s3://data/s/", "--dry-run", "--job", str(job)]) == 0
    out = capsys.readouterr().out
    assert "near-duplicates (perceptual hash, <= 6 of 64 bits apart): d0-again.jpg ~ d0.png\n" in out
    assert "below the training size (upscaled): 1 of 7\n  tiny.png: 30x40 trains at 128x128\n" in out
    buckets = next(line for line in out.splitlines() if line.startswith("aspect buckets"))
    counts = dict(item.split(": ") for item in buckets.split("): ", 1)[1].split(", "))
    assert sum(map(int, counts.values())) == 7 and int(counts["128x128"]) >= 1, buckets  # tiny.png's bucket
    assert "captions: 4 of 7 images have one (none: d0-again.jpg, tall.png, tiny.png)" in out
    assert "trigger: 'zxq person' starts every caption (dataset.captionPrefix)" in out
    assert main(["upload", str(folder), "s3://data/s/", "--dry-run", "--family", "sd15"]) == 0
    assert "trigger: none (dataset.captionPrefix is empty; captions are used as written)" in capsys.readouterr().out
