"""Edit pairs (dataset.pairs): both naming layouts are found, both halves are cut and flipped alike, a
broken pair is skipped and named, and `lora-train upload` sends the control images with their targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lora_operator.api import Dataset, ExitCode
from lora_operator.api.families import edit_families, family_row
from lora_trainer.cli import main
from lora_trainer.data import prepare_dataset
from lora_trainer.encode import pixels

pytestmark = pytest.mark.trainer


def picture(path: Path, size: tuple[int, int], color: tuple[int, int, int], box: tuple[int, int, int, int]) -> Path:
    """A `size` (width, height) image: a gradient with a coloured box (so crops and flips show)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (30, 60, 90))
    ImageDraw.Draw(image).rectangle(box, fill=color)
    image.save(path)
    return path


def pair_folder(root: Path) -> Path:
    """a.png + a.control.png (beside), b.jpg + control/b.jpg (folder), both with instructions."""
    picture(root / "a.png", (64, 48), (200, 40, 40), (4, 4, 20, 30))
    picture(root / "a.control.png", (64, 48), (40, 40, 200), (4, 4, 20, 30))
    picture(root / "b.jpg", (48, 48), (200, 200, 40), (30, 10, 44, 40))
    picture(root / "control" / "b.jpg", (48, 48), (40, 200, 40), (30, 10, 44, 40))
    (root / "a.txt").write_text("make the box red")
    (root / "b.txt").write_text("make the box yellow")
    return root


def assert_loaded_the_trained_lora(pipe, recipe) -> None:
    """`pipe.transformer` (after load_lora_weights) holds exactly the run's trained LoRA weights."""
    import torch

    loaded = pipe.transformer.state_dict()
    trained = {k: v for k, v in recipe.parts.denoiser.state_dict().items() if "lora_" in k}
    assert trained and sum("lora_A" in k for k in loaded) == sum("lora_A" in k for k in trained)
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key.replace(".default.", ".default_0.")], value.to(torch.float32))


def assert_previews_edit_the_held_out_controls(recipe, guidance: float) -> None:
    """The run's previews edit its held-out pairs' controls, and a different control changes the edit."""
    import numpy as np
    from PIL import Image

    from lora_operator.api import Previews
    from lora_trainer.previews import generate, preview_controls
    from lora_trainer.textpark import text_encoders_held

    controls = preview_controls(recipe.data)
    held = recipe.data.held_out or recipe.data.validation
    assert controls and len(controls) == len(held)
    assert np.array_equal(np.asarray(controls[0]), np.asarray(held[0].decoded_control()))
    assert recipe.manifest.manifest.previews  # the run rendered its previews through the edit pipeline
    previews = Previews(steps=2, images_per_prompt=1, guidance=guidance)
    black, white = Image.new("RGB", (32, 32)), Image.new("RGB", (32, 32), (255, 255, 255))
    with text_encoders_held(recipe):  # as the loop's previews after a release
        first = generate(recipe.family, recipe.parts, previews, ["edit"], (32, 32), [black])[0][0]
        second = generate(recipe.family, recipe.parts, previews, ["edit"], (32, 32), [white])[0][0]
    assert np.abs(np.asarray(first, dtype=float) - np.asarray(second, dtype=float)).max() > 0


def prepared(root: Path, **dataset):
    dataset.setdefault("crop", {"mode": "center", "size": "32x32"})  # not the family's 1024 px
    settings = Dataset(uri="s3://d/x/", pairs=True, validation_split=0.0, **dataset)
    return prepare_dataset(settings, root, "flux-kontext", seed=0)


def test_both_layouts_pair_a_target_with_its_control_and_the_caption_is_the_instruction(tmp_path):
    data = prepared(pair_folder(tmp_path / "set"))
    by_key = {s.key: s for s in data.train}
    assert set(by_key) == {"a.png", "b.jpg"} and data.pairs and not data.skipped
    assert by_key["a.png"].control_path == tmp_path / "set/a.control.png"
    assert by_key["b.jpg"].control_path == tmp_path / "set/control/b.jpg"
    assert by_key["a.png"].caption == "make the box red"


def test_without_pairs_a_control_image_is_just_another_image(tmp_path):
    data = prepare_dataset(Dataset(uri="s3://d/x/", validation_split=0.0), pair_folder(tmp_path / "set"), "flux",
                           seed=0)
    assert {s.key for s in data.train} == {"a.png", "a.control.png", "b.jpg", "control/b.jpg"}
    assert all(s.control_path is None for s in data.train) and not data.pairs


@pytest.mark.parametrize("crop", [{"mode": "focus", "size": "32x32"}, {"mode": "center", "size": "32x24"},
                                  {"mode": "center", "buckets": True, "bucketMinSide": 64, "bucketMaxSide": 192,
                                   "bucketStep": 32, "size": "96x96"}])
def test_crops_and_buckets_cut_the_control_exactly_like_its_target(tmp_path, crop):
    """The control differs from its target only in colour: after the cut its box sits on the same pixels."""
    root = tmp_path / "set"
    picture(root / "t.png", (160, 100), (250, 250, 250), (100, 16, 140, 80))
    picture(root / "control" / "t.png", (320, 200), (0, 0, 0), (200, 32, 280, 160))  # twice as large
    sample = prepared(root, crop=crop).train[0]
    target, control = np.asarray(sample.decoded()), np.asarray(sample.decoded_control())
    assert target.shape == control.shape == (*sample.target_size, 3)
    box_target = target.mean(axis=2) > 200
    box_control = control.mean(axis=2) < 15
    assert box_target.any() and (box_target == box_control).mean() > 0.97


def test_a_flip_mirrors_both_images_of_a_pair(tmp_path):
    sample = prepared(pair_folder(tmp_path / "set")).train[0]
    target, control = pixels(sample.decoded(), True), pixels(sample.decoded_control(), True)
    assert (target[0] > 0.3).nonzero()[:, 1].float().mean() > 0.5 * target.shape[2]  # the box moved right
    assert ((target[0] > 0.3) == (control[2] > 0.3)).float().mean() > 0.97


def test_a_broken_pair_is_skipped_and_named_like_a_corrupt_file(tmp_path):
    root = pair_folder(tmp_path / "set")
    picture(root / "lonely.png", (32, 32), (1, 2, 3), (1, 1, 5, 5))
    picture(root / "orphan.control.png", (32, 32), (1, 2, 3), (1, 1, 5, 5))
    picture(root / "c.png", (32, 32), (1, 2, 3), (1, 1, 5, 5))
    (root / "c.control.webp").write_bytes(b"not a picture")
    data = prepared(root)
    assert {s.key for s in data.train} == {"a.png", "b.jpg"}
    reasons = {s.file: s.reason for s in data.skipped}
    assert set(reasons) == {"lonely.png", "orphan.control.png", "c.png"}
    assert reasons["lonely.png"].startswith("no control image (lonely.control.png or control/lonely.png")
    assert reasons["orphan.control.png"] == "control image without a target image (orphan.png)"
    assert reasons["c.png"].startswith("control image c.control.webp: not a readable image")


def test_upload_checks_pairs_and_sends_each_control_with_its_target(tmp_path, capsys):
    root = pair_folder(tmp_path / "set")
    picture(root / "lonely.png", (32, 32), (1, 2, 3), (1, 1, 5, 5))
    storage = tmp_path / "buckets"
    code = main(["upload", str(root), "s3://data/edits/", "--family", "flux-kontext", "--pairs",
                 "--storage", str(storage)])
    out = capsys.readouterr().out
    assert code == ExitCode.SUCCESS, out
    sent = sorted(p.relative_to(storage / "data/edits").as_posix() for p in storage.rglob("*") if p.is_file())
    assert sent == ["a.control.png", "a.png", "a.txt", "b.jpg", "b.txt", "control/b.jpg"]
    assert "2 usable image(s) for a flux-kontext job, 1 file(s) skipped" in out
    assert "skipped lonely.png: no control image" in out


def test_upload_refuses_a_pair_folder_without_one_complete_pair(tmp_path, capsys):
    root = tmp_path / "set"
    picture(root / "x.png", (32, 32), (1, 2, 3), (1, 1, 5, 5))
    code = main(["upload", str(root), "s3://data/edits/", "--pairs", "--storage", str(tmp_path / "buckets")])
    assert code == ExitCode.BAD_DATASET
    assert "x.png (no control image" in capsys.readouterr().err
    assert not (tmp_path / "buckets").exists()


@pytest.mark.parametrize("family", edit_families())
def test_an_edit_familys_prediction_reads_the_control_and_keeps_the_targets_shape(family, tiny_models):
    import torch

    from lora_trainer.families import get_family

    edit = get_family(family)
    parts = edit.load(tiny_models(family), torch.float32)
    cond = edit.encode_prompts(parts, ["make it red"])
    row = family_row(family)
    frames = (1,) * (row.latent_dims - 2)  # a video VAE's one frame (Qwen-Image: (B, C, 1, H, W))
    noisy = torch.randn(1, row.latent_channels, *frames, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5])
    with torch.no_grad():
        plain = edit.predict(parts, noisy, t, cond, [])
        one = edit.predict(parts, noisy, t, cond, [], control=torch.zeros_like(noisy))
        other = edit.predict(parts, noisy, t, cond, [], control=torch.ones_like(noisy))
    assert plain.shape == one.shape == noisy.shape
    assert (one - other).abs().max() > 1e-4 and (one - plain).abs().max() > 1e-4
