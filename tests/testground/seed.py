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


def upload(ground: Ground, uri: str, folder: Path) -> None:
    bucket = uri.split("/")[2]
    client = ground.minio.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    open_store(uri, endpoint=ground.minio.endpoint, access_key=ground.minio.access_key,
               secret_key=ground.minio.secret_key, secure=False).upload_dir(folder)
