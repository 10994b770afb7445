"""dataset.autoCaption through a whole run: the tagger's captions are what the job trains on (captions.json)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import base_spec, job_prefix, write_job
from lora_operator.api import ExitCode
from lora_trainer.cli import main
from tinymodels import build_tiny_tagger

pytestmark = pytest.mark.trainer

TAGS = "black hair, ^_^, cat"
"""What the tagger below says about any image: sigmoid(2.0) > sigmoid(1.0) > sigmoid(0.5) > 0.35."""


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger"), {0: "cat", 1: "black_hair", 2: "dog", 3: "^_^"},
                             [0.5, 2.0, -3.0, 1.0])


@pytest.mark.parametrize("mode, captioned", [("missing", "own words"), ("replace", TAGS)])
def test_auto_captions_reach_the_training_run(tmp_path, tiny_models, tagger_dir, mode, captioned):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(data / "captioned.png")
    (data / "captioned.txt").write_text("own words")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(data / "bare.png")
    out = tmp_path / "out"
    spec = base_spec("sd15", tiny_models("sd15"), data, out, training={"steps": 1},
                     dataset={"autoCaption": {"model": tagger_dir.as_uri(), "mode": mode}})
    assert main(["run", str(write_job(tmp_path / "job.yaml", spec))]) == ExitCode.SUCCESS
    assert json.loads((job_prefix(out) / "captions.json").read_text()) == {"bare.png": TAGS, "captioned.png": captioned}
    assert (job_prefix(out) / "checkpoints/epoch-0001/kohya.safetensors").is_file()


def test_auto_captions_are_cached_by_content_for_the_namespace(tmp_path, tiny_models, tagger_dir):
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(data / "red.png")
    Image.new("RGB", (32, 32), (30, 30, 200)).save(data / "blue.png")
    tagger = tmp_path / "tagger"
    shutil.copytree(tagger_dir, tagger)
    out = tmp_path / "out"
    spec = base_spec("sd15", tiny_models("sd15"), data, out, training={"steps": 1},
                     dataset={"autoCaption": {"model": tagger.as_uri(), "mode": "replace"}})
    assert main(["run", str(write_job(tmp_path / "first.yaml", spec, name="first"))]) == ExitCode.SUCCESS
    cache = out / "team" / ".caption-cache"
    assert sorted(p.read_text() for p in cache.rglob("*.txt")) == [TAGS, TAGS]
    # Another job of the namespace with the same tagger reads the captions back: it never loads the
    # tagger, so a broken tagger folder does not matter...
    (tagger / "config.json").write_text("{broken")
    assert main(["run", str(write_job(tmp_path / "second.yaml", spec, name="second"))]) == ExitCode.SUCCESS
    assert json.loads((job_prefix(out, "second") / "captions.json").read_text()) == {"blue.png": TAGS, "red.png": TAGS}
    # ...until an image it has not captioned comes (new pixels: a cache miss).
    Image.new("RGB", (32, 32), (30, 200, 30)).save(data / "green.png")
    assert main(["run", str(write_job(tmp_path / "third.yaml", spec, name="third"))]) == ExitCode.BAD_MODEL
