"""Auto-captioning with a multi-label image-classification model (a tagger).

Any transformers image-classification folder works (``config.json`` with ``id2label``,
an image-processor config, weights), e.g. a WD14-style tagger exported to transformers.
Each label is an independent tag: its probability is the sigmoid of its logit.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..errors import ModelError

DEFAULT_THRESHOLD = 0.35
MAX_TAGS = 64
"""At most this many tags per caption (the most likely first)."""


def tag_text(label: str) -> str:
    """A label as caption text: ``black_hair`` -> ``black hair``; short emoticons like ``^_^`` kept."""
    return label.replace("_", " ") if len(label) > 3 else label


class Captioner:
    """Writes comma-separated tags for an image.

    Attributes:
        threshold: Tags with a probability above this are kept.
    """

    def __init__(self, model, processor, *, threshold: float = DEFAULT_THRESHOLD, device: str = "cpu"):
        self.model = model
        self.processor = processor
        self.threshold = threshold
        self.device = device
        labels = model.config.id2label
        self.labels = [tag_text(labels[i]) for i in range(len(labels))]

    def caption(self, image: Image.Image) -> str:
        """Tags whose sigmoid probability exceeds the threshold, most likely first, comma-joined."""
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0].float()
        probs = torch.sigmoid(logits).cpu().tolist()
        kept = [(p, i) for i, p in enumerate(probs) if p > self.threshold]
        ranked = sorted(kept, key=lambda pair: (-pair[0], pair[1]))
        return ", ".join(self.labels[i] for _, i in ranked[:MAX_TAGS])


def load_captioner(model_dir: Path, *, threshold: float = DEFAULT_THRESHOLD,
                   device: str | None = None) -> Captioner:
    """Load a tagger from a local transformers folder.

    Args:
        model_dir: Folder written by ``save_pretrained`` (model and image processor).
        threshold: Probability above which a tag is kept. Default: 0.35.
        device: Torch device. Default: cuda when available, else cpu.

    Raises:
        ModelError: The folder holds no loadable image-classification model.
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        processor = AutoImageProcessor.from_pretrained(model_dir)
        model = AutoModelForImageClassification.from_pretrained(model_dir).to(device).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"auto-caption model {model_dir} cannot be loaded: {exc}") from exc
    if not getattr(model.config, "id2label", None):
        raise ModelError(f"auto-caption model {model_dir} has no id2label (tag names) in config.json")
    return Captioner(model, processor, threshold=threshold, device=device)
