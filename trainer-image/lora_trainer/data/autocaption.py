"""Auto-captioning with a multi-label image-classification model (a tagger).

Any transformers image-classification folder works (``config.json`` with ``id2label``,
an image-processor config, weights), e.g. a WD14-style tagger exported to transformers.
Each label is an independent tag: its probability is the sigmoid of its logit.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ..errors import ModelError

log = logging.getLogger(__name__)
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


class CachedCaptioner:
    """A captioner whose captions are kept by image content in an object store and read back first.

    A retry, a retrain or another job of the namespace with the same tagger and threshold then takes
    the captions from the store, and loads the tagger (`load`) only for an image it has not seen.
    Keys: ``<prefix><fingerprint>/<sha256 of the image's pixels>.txt``.
    """

    def __init__(self, load: Callable[[], Captioner], store, fingerprint: str, prefix: str = ""):
        """
        Args:
            load: Loads the tagger (called at the first image without a cached caption).
            store: An ObjectStore (get_bytes / put_bytes) holding the cache.
            fingerprint: Names the tagger and its settings (`caption_fingerprint`).
            prefix: Key prefix of the cache in `store`.
        """
        self.load = load
        self.store = store
        self.fingerprint = f"{prefix}{fingerprint}"
        self.tagger: Captioner | None = None
        self.hits = 0

    def caption(self, image: Image.Image) -> str:
        """The cached caption of an image with these pixels, else the tagger's (then cached)."""
        digest = hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).hexdigest()
        key = f"{self.fingerprint}/{digest}.txt"
        cached = self.store.get_bytes(key)
        if cached is not None:
            self.hits += 1
            return cached.decode()
        if self.tagger is None:
            self.tagger = self.load()
        text = self.tagger.caption(image)
        self.store.put_bytes(key, text.encode(), "text/plain")
        return text


def caption_fingerprint(model_uri: str, threshold: float) -> str:
    """What makes two jobs' auto captions interchangeable: the tagger's URI and the threshold."""
    return hashlib.sha256(f"{model_uri}|{threshold!r}|{MAX_TAGS}".encode()).hexdigest()[:16]
