"""Auto-captioning with a tiny random-weight tagger built here (never downloaded)."""

from __future__ import annotations

import pytest
from PIL import Image

from lora_operator.api import Dataset, ModelFamily
from lora_trainer.data import load_captioner, prepare_dataset
from lora_trainer.errors import ModelError

pytestmark = pytest.mark.trainer

LABELS = {0: "cat", 1: "black_hair", 2: "dog", 3: "^_^"}
BIASES = [0.5, 2.0, -3.0, 1.0]  # sigmoid: 0.62, 0.88, 0.05, 0.73


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    """A ViT image classifier whose logits are its biases (zero weights), saved like a real tagger."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    folder = tmp_path_factory.mktemp("tagger")
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                       problem_type="multi_label_classification")
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(BIASES))
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_tags_above_the_threshold_most_likely_first(tagger_dir):
    captioner = load_captioner(tagger_dir, threshold=0.35, device="cpu")
    assert captioner.caption(Image.new("RGB", (50, 40))) == "black hair, ^_^, cat"
    assert load_captioner(tagger_dir, threshold=0.8, device="cpu").caption(Image.new("L", (8, 8))) == "black hair"


def test_a_folder_without_a_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match=str(tmp_path)):
        load_captioner(tmp_path, device="cpu")


@pytest.mark.parametrize("mode, own", [("missing", "own words"), ("replace", "black hair, ^_^, cat")])
def test_prepare_dataset_with_a_real_tagger(tmp_path, tagger_dir, mode, own):
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "captioned.png")
    (tmp_path / "captioned.txt").write_text("own words")
    Image.new("RGB", (40, 40)).save(tmp_path / "bare.png")
    dataset = Dataset.model_validate({"crop": {"size": "32x32"}, "validationSplit": 0,
                                      "autoCaption": {"model": f"file://{tagger_dir}", "mode": mode}})
    captioner = load_captioner(tagger_dir, threshold=dataset.auto_caption.threshold, device="cpu")
    prepared = prepare_dataset(dataset, tmp_path, ModelFamily.SD15, seed=0, captioner=captioner)
    captions = {s.key: s.caption for s in prepared.train}
    assert captions == {"bare.png": "black hair, ^_^, cat", "captioned.png": own}
