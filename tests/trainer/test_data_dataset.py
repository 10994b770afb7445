"""prepare_dataset: discovery, skipping with reasons, repeats, splits, regularization, auto captions."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lora_operator.api import Dataset, ModelFamily
from lora_trainer.data import prepare_dataset
from lora_trainer.errors import ConfigError, DatasetError

pytestmark = pytest.mark.trainer


def write_image(path: Path, size=(48, 40), color=(120, 60, 30), caption: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {"jpg": "JPEG", "jpeg": "JPEG"}.get(path.suffix[1:].lower(), path.suffix[1:].upper())
    Image.new("RGB", size, color).save(path, fmt)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG that is tiny on disk and enormous decoded (as in test_data_images)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress((b"\x00" * (1 + (width + 7) // 8)) * height, 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def spec(**fields) -> Dataset:
    return Dataset.model_validate({"crop": {"size": "32x32"}, "validationSplit": 0.0, **fields})


def prepare(root: Path, dataset: Dataset | None = None, **kwargs):
    return prepare_dataset(dataset or spec(), root, ModelFamily.SD15, seed=kwargs.pop("seed", 0), **kwargs)


def test_images_in_nested_unicode_folders_become_cropped_captioned_samples(tmp_path):
    write_image(tmp_path / "a.png", caption="black cat")
    write_image(tmp_path / "sub dir" / "chat noir é.JPG", size=(80, 40), caption="cat, 猫")
    write_image(tmp_path / "sub dir" / "c.webp")
    prepared = prepare(tmp_path)
    by_key = {s.key: s for s in prepared.train}
    assert set(by_key) == {"a.png", "sub dir/chat noir é.JPG", "sub dir/c.webp"}
    wide = by_key["sub dir/chat noir é.JPG"]
    assert wide.caption == "cat, 猫"
    assert wide.decoded().size == (32, 32) and wide.decoded().mode == "RGB"
    assert wide.original_size == (40, 80) and wide.target_size == (32, 32)
    assert wide.crop_top_left == (0, 16)
    assert by_key["sub dir/c.webp"].caption == ""
    assert all(s.repeats == 1 and not s.regularization for s in prepared.train)
    assert prepared.skipped == [] and prepared.validation == []


def test_corrupt_and_foreign_files_are_skipped_and_listed(tmp_path):
    write_image(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "notes.md").write_text("hello")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    prepared = prepare(tmp_path)
    assert [s.key for s in prepared.train] == ["good.png"]
    reasons = {s.file: s.reason for s in prepared.skipped}
    assert set(reasons) == {"broken.jpg", "notes.md"}
    assert "image" in reasons["broken.jpg"]


@pytest.mark.parametrize("mode", ["focus", "center", "none"])
def test_samples_hold_no_pixels_and_decode_the_same_window_again(tmp_path, mode):
    from lora_trainer.data import crop_to, load_image

    image = Image.new("RGB", (90, 60), (10, 20, 30))
    image.paste((250, 250, 250), (70, 10, 85, 50))  # detail on the right: focus moves the window
    image.save(tmp_path / "a.png")
    sample = prepare(tmp_path, spec(crop={"mode": mode, "size": "40x40"})).train[0]
    assert sample.image is None and sample.path == tmp_path / "a.png"
    expected, top_left = crop_to(load_image(tmp_path / "a.png"), (40, 40), mode)
    assert sample.crop_top_left == top_left
    assert sample.decoded().tobytes() == expected.tobytes()


def test_an_empty_folder_is_a_dataset_error_naming_the_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=str(tmp_path)):
        prepare(tmp_path)


def test_a_missing_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        prepare(tmp_path / "nope")


def test_only_corrupt_images_is_a_dataset_error_naming_each_file(tmp_path):
    (tmp_path / "one.png").write_bytes(b"not png")
    (tmp_path / "two.jpg").write_bytes(b"")
    with pytest.raises(DatasetError) as error:
        prepare(tmp_path)
    assert "one.png" in str(error.value) and "two.jpg" in str(error.value)
    assert error.value.exit_code == 65


def test_a_huge_image_is_skipped_with_its_reason(tmp_path):
    write_image(tmp_path / "ok.png")
    (tmp_path / "bomb.png").write_bytes(huge_png(20000, 20000))
    prepared = prepare(tmp_path)
    assert [s.key for s in prepared.train] == ["ok.png"]
    assert prepared.skipped[0].file == "bomb.png" and "MP limit" in prepared.skipped[0].reason


def test_a_100kb_caption_is_cut_and_reported(tmp_path):
    write_image(tmp_path / "a.png", caption="word, " * 17000)
    prepared = prepare(tmp_path)
    assert len(prepared.train[0].caption) <= 2048
    assert any("a.txt" in w for w in prepared.warnings)


def test_repeats_json_overrides_dataset_repeats_per_image(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    write_image(tmp_path / "sub" / "c.png")
    (tmp_path / "repeats.json").write_text(json.dumps({"a.png": 3, "ghost.png": 2}))
    (tmp_path / "sub" / "repeats.json").write_text(json.dumps({"c.png": 7}))
    prepared = prepare(tmp_path, spec(repeats=2))
    assert {s.key: s.repeats for s in prepared.train} == {"a.png": 3, "b.png": 2, "sub/c.png": 7}
    assert any("ghost.png" in w for w in prepared.warnings)


def test_a_malformed_repeats_json_is_a_dataset_error_naming_it(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "repeats.json").write_text('{"a.png": 0}')
    with pytest.raises(DatasetError, match=r"repeats.json.*a\.png"):
        prepare(tmp_path)


def test_validation_split_is_deterministic_by_seed(tmp_path):
    for i in range(25):
        write_image(tmp_path / f"img{i}.png")
    dataset = spec(validationSplit=0.2)
    first = prepare(tmp_path, dataset, seed=5)
    again = prepare(tmp_path, dataset, seed=5)
    assert len(first.validation) == 5 and len(first.train) == 20
    assert not {s.key for s in first.validation} & {s.key for s in first.train}  # held out
    assert [s.key for s in first.validation] == [s.key for s in again.validation]
    held = {tuple(s.key for s in prepare(tmp_path, dataset, seed=seed).validation) for seed in range(6)}
    assert len(held) > 1


@pytest.mark.parametrize("images, validated", [(1, 1), (2, 1), (6, 1), (19, 2)])
def test_small_datasets_train_on_every_image_and_validate_on_a_fixed_subset(tmp_path, images, validated):
    for i in range(images):
        write_image(tmp_path / f"img{i}.png")
    prepared = prepare(tmp_path, spec(validationSplit=0.1))
    assert len(prepared.train) == images
    assert len(prepared.validation) == validated
    assert {s.key for s in prepared.validation} <= {s.key for s in prepared.train}
    again = prepare(tmp_path, spec(validationSplit=0.1))
    assert [s.key for s in prepared.validation] == [s.key for s in again.validation]


def test_regularization_images_are_flagged(tmp_path):
    write_image(tmp_path / "data" / "a.png", caption="TKXW dog")
    write_image(tmp_path / "reg" / "dog1.png", caption="dog")
    (tmp_path / "reg" / "bad.png").write_bytes(b"x")
    dataset = spec(regularization={"uri": "s3://b/reg/"})
    prepared = prepare(tmp_path / "data", dataset, regularization_root=tmp_path / "reg")
    assert [s.key for s in prepared.regularization] == ["dog1.png"]
    assert prepared.regularization[0].regularization and prepared.regularization[0].caption == "dog"
    assert not prepared.train[0].regularization
    assert [s.file for s in prepared.skipped] == ["regularization/bad.png"]


def test_regularization_without_its_folder_is_a_config_error(tmp_path):
    write_image(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="dataset.regularization"):
        prepare(tmp_path, spec(regularization={"uri": "s3://b/reg/"}))


class FakeCaptioner:
    def __init__(self):
        self.calls = 0

    def caption(self, image):
        self.calls += 1
        return "auto tag"


@pytest.mark.parametrize("mode, expected", [
    ("missing", {"has.png": "own caption", "none.png": "auto tag", "empty.png": "auto tag"}),
    ("replace", {"has.png": "auto tag", "none.png": "auto tag", "empty.png": "auto tag"}),
])
def test_auto_caption_fills_missing_or_replaces_all(tmp_path, mode, expected):
    write_image(tmp_path / "has.png", caption="own caption")
    write_image(tmp_path / "none.png")
    write_image(tmp_path / "empty.png", caption="  \n")
    captioner = FakeCaptioner()
    dataset = spec(autoCaption={"model": "file:///models/tagger", "mode": mode})
    prepared = prepare(tmp_path, dataset, captioner=captioner)
    assert {s.key: s.caption for s in prepared.train} == expected
    assert captioner.calls == sum(v == "auto tag" for v in expected.values())


def test_auto_caption_without_a_loaded_tagger_is_a_config_error(tmp_path):
    write_image(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="autoCaption"):
        prepare(tmp_path, spec(autoCaption={"model": "file:///models/tagger"}))


def test_buckets_give_aspect_dependent_sizes(tmp_path):
    write_image(tmp_path / "wide.png", size=(300, 100))
    write_image(tmp_path / "tall.png", size=(100, 300))
    write_image(tmp_path / "square.png", size=(200, 200))
    dataset = spec(crop={"size": "128x128", "buckets": True, "bucketMinSide": 64, "bucketMaxSide": 256,
                         "bucketStep": 32, "mode": "center"})
    sizes = {s.key: s.target_size for s in prepare(tmp_path, dataset).train}
    assert sizes["square.png"] == (128, 128)
    assert sizes["wide.png"] == (64, 192) and sizes["tall.png"] == (192, 64)


def test_without_crop_size_the_family_standard_size_is_used(tmp_path):
    write_image(tmp_path / "a.png", size=(90, 60))
    dataset = Dataset.model_validate({"validationSplit": 0.0})
    sample = prepare_dataset(dataset, tmp_path, ModelFamily.SD15, seed=0).train[0]
    assert sample.target_size == (512, 768) and sample.decoded().size == (768, 512)
