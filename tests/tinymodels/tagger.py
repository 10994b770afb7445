"""A tiny image tagger for the auto-caption tests."""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_tagger(path: Path, labels: dict[int, str], biases: list[float], image_size: int = 32) -> Path:
    """Write a tiny ViT tagger (a transformers image classifier) whose logits are `biases` for any image.

    The classifier weights are zero, so each label's probability is ``sigmoid(bias)``
    whatever the image: tests know exactly which tags `data.autocaption` keeps.

    Args:
        path: Destination folder (created).
        labels: id2label of the tags, e.g. ``{0: "cat", 1: "black_hair"}``.
        biases: One logit per label.
        image_size: Input side of the image processor.

    Returns:
        `path`.
    """
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    config = ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, id2label=dict(labels),
                       label2id={v: k for k, v in labels.items()}, problem_type="multi_label_classification")
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(biases))
    model.save_pretrained(path)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return Path(path)
