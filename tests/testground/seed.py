"""Seed data for the demo and the e2e test: a generated dataset and uploads to MinIO."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from lora_operator.storage import open_store

from .ground import Ground


def make_dataset(folder: Path, count: int = 6) -> None:
    """Small drawings with captions: a red or blue circle or square on a light background."""
    rng = random.Random(7)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour, shape = rng.choice(["red", "blue"]), rng.choice(["circle", "square"])
        image = Image.new("RGB", (64, 64), (235, 235, 225))
        draw = ImageDraw.Draw(image)
        box = (rng.randint(4, 20), rng.randint(4, 20), rng.randint(40, 60), rng.randint(40, 60))
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
        image.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"{colour} {shape}, simple drawing")


def mixed_dataset(root: Path) -> Path:
    """A dataset folder as users hand them over: usable images (png, jpg, webp; a sub-folder with a
    space), captions (one named .TXT), a repeats.json, and files the trainer skips or never sees
    (a corrupt png with its caption, a pdf, a hidden folder). Usable: a.png, b.jpg, sub dir/c.webp."""
    for rel, fmt in (("a.png", "PNG"), ("b.jpg", "JPEG"), ("sub dir/c.webp", "WEBP"), (".thumbs/x.png", "PNG")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 64), (200, 120, 40)).save(root / rel, fmt)
    (root / "a.txt").write_text("corgi, sitting")
    (root / "sub dir" / "c.TXT").write_text("corgi, running")
    (root / "repeats.json").write_text('{"a.png": 3}')
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "broken.txt").write_text("caption of an unusable image")
    (root / "notes.pdf").write_bytes(b"%PDF-1.7")
    return root


def upload(ground: Ground, uri: str, folder: Path) -> None:
    bucket = uri.split("/")[2]
    client = ground.minio.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    open_store(uri, endpoint=ground.minio.endpoint, access_key=ground.minio.access_key,
               secret_key=ground.minio.secret_key, secure=False).upload_dir(folder)
