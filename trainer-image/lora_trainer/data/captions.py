"""Captions: reading sidecar .txt files and composing the text a sample is trained with.

Composition, in order: the caption prefix (trigger), ``tags.prepend``, the image's own
caption, ``tags.append``, all joined as comma-separated tags. A tag is everything between
two commas, so "black cat" is one tag.

Choices (documented in the API docstrings' spirit):
- Shuffling keeps the first ``keep_tokens`` tags of the composed caption in place, and
  always keeps the caption prefix's tags, which are a prefix by definition.
- Caption dropout trains with an entirely empty caption, trigger included (kohya's
  behaviour and what ``captionDropout`` says): that is the unconditional case
  classifier-free guidance needs.
"""

from __future__ import annotations

import random
from pathlib import Path

from lora_operator.api import Dataset, Training

MAX_CAPTION_CHARS = 2048
"""Captions longer than this are cut (at a comma where possible) with a warning. Text
encoders read at most 77 (CLIP) or 512 (T5) tokens, about 2000 characters; a longer
file is almost always a mistake (a pasted log, a binary renamed .txt)."""


def split_tags(text: str) -> list[str]:
    """Comma-separated tags, stripped, empty ones dropped."""
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def read_caption(image: Path) -> tuple[str | None, str | None]:
    """The sidecar caption of an image (``name.txt`` or ``name.TXT``).

    Returns:
        ``(caption, warning)``: caption None when there is no file; warning set when the
        file was not valid UTF-8 or was truncated.
    """
    for suffix in (".txt", ".TXT"):
        path = image.with_suffix(suffix)
        if path.is_file():
            break
    else:
        return None, None
    raw = path.read_bytes()
    warning = None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        warning = f"{path.name} is not valid UTF-8; undecodable bytes were replaced"
    text = " ".join(text.split())  # newlines and runs of spaces become single spaces
    if len(text) > MAX_CAPTION_CHARS:
        cut = text.rfind(",", 0, MAX_CAPTION_CHARS + 1)
        keep = cut if cut > MAX_CAPTION_CHARS // 2 else MAX_CAPTION_CHARS
        warning = f"{path.name} has {len(text)} characters; cut to {keep} (limit {MAX_CAPTION_CHARS})"
        text = text[:keep].rstrip(" ,")
    return text, warning


class CaptionBuilder:
    """Turns an image's base caption into the text of one training draw.

    Attributes:
        deterministic: True when every draw of a caption gives the same text (no shuffle,
            no dropout), so text embeddings may be cached.
    """

    def __init__(self, dataset: Dataset, training: Training):
        self.prefix = split_tags(dataset.caption_prefix)
        self.prepend = [t for tag in dataset.tags.prepend for t in split_tags(tag)]
        self.append = [t for tag in dataset.tags.append for t in split_tags(tag)]
        self.shuffle = training.shuffle_tags
        self.keep = max(training.keep_tokens, len(self.prefix))
        self.dropout = training.caption_dropout
        self.deterministic = not self.shuffle and self.dropout == 0.0

    def tags(self, caption: str) -> list[str]:
        """The composed tags before shuffling: prefix, prepend, caption, append."""
        return [*self.prefix, *self.prepend, *split_tags(caption), *self.append]

    def build(self, caption: str, rng: random.Random) -> str:
        """The training text for one draw of a sample.

        Args:
            caption: The image's base caption (sidecar or auto caption).
            rng: The loop's random source; it is drawn from only when dropout or shuffling
                is on, so deterministic settings leave the loop's random stream untouched.
        """
        if self.dropout > 0.0 and rng.random() < self.dropout:
            return ""
        tags = self.tags(caption)
        if self.shuffle and len(tags) > self.keep + 1:
            head, tail = tags[:self.keep], tags[self.keep:]
            rng.shuffle(tail)
            tags = head + tail
        return ", ".join(tags)
