"""Decoding dataset images: every mode and format becomes upright RGB; bad files are refused clearly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lora_trainer.data import MAX_PIXELS, UnusableImage, load_image

pytestmark = pytest.mark.trainer


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of width x height: tiny on disk, enormous when decoded."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("mode, fmt, suffix", [
    ("RGB", "PNG", "png"), ("RGB", "JPEG", "jpg"), ("RGB", "WEBP", "webp"), ("L", "PNG", "png"),
    ("L", "JPEG", "jpeg"), ("P", "PNG", "png"), ("1", "PNG", "png"), ("LA", "PNG", "png"),
    ("RGBA", "WEBP", "webp"), ("CMYK", "JPEG", "jpg"),
])
def test_every_supported_mode_and_format_decodes_to_rgb(tmp_path, mode, fmt, suffix):
    image = Image.new("RGB", (20, 10), (200, 30, 30)).convert(mode)
    path = tmp_path / f"img.{suffix}"
    image.save(path, fmt)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.size == (20, 10)


def test_transparent_pixels_become_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.getpixel((0, 0)) == (255, 0, 0)
    assert loaded.getpixel((3, 3)) == (255, 255, 255)


def test_palette_image_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.save(tmp_path / "p.png", transparency=0)
    loaded = load_image(tmp_path / "p.png")
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 1)) == (255, 0, 0)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.full((4, 4), 32768, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png")
    assert abs(loaded.getpixel((0, 0))[0] - 128) <= 1


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (10, 30)


def test_truncated_file_is_refused_with_a_reason(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UnusableImage, match="truncated|corrupt"):
        load_image(tmp_path / "cut.png")


def test_garbage_with_an_image_name_is_refused(tmp_path):
    (tmp_path / "fake.jpg").write_bytes(b"this is not a jpeg at all")
    with pytest.raises(UnusableImage, match="not a readable image"):
        load_image(tmp_path / "fake.jpg")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(huge_png(20000, 20000))
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    with pytest.raises(UnusableImage, match=r"400 MP.*100 MP limit"):
        load_image(tmp_path / "bomb.png")
    assert MAX_PIXELS < 20000 * 20000


def test_an_image_above_the_limit_is_refused_with_its_size(tmp_path):
    Image.new("1", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(UnusableImage, match=r"300x200 \(0 MP\), above the 0 MP limit"):
        load_image(tmp_path / "big.png", max_pixels=50_000)
