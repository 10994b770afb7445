"""Captions: reading sidecar .txt / .caption files and composing the text a sample is trained with.

Composition, in order: the caption prefix (trigger), ``tags.prepend``, the image's own
caption, ``tags.append``, all joined as comma-separated tags. A tag is everything between
two commas, so "black cat" is one tag.

Choices (documented in the API docstrings' spirit):
- Shuffling keeps the first ``keep_tokens`` tags of the composed caption in place, and
  always keeps the caption prefix's tags, which are a prefix by definition.
- Caption dropout keeps the first ``keep_tokens`` tags of the composed caption (the trigger)
  and drops the rest, as ``keepTokens`` says; with ``keep_tokens`` 0 (the default) the
  caption is entirely empty, the unconditional case classifier-free guidance needs. kohya's
  ``caption_dropout_rate`` empties the caption whatever ``keep_tokens`` is; its per-tag
  ``caption_tag_dropout_rate`` keeps them. Keeping the trigger makes a dropped draw teach
  "trigger alone means the concept", the point of a trigger.
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


CAPTION_SUFFIXES = (".txt", ".TXT", ".caption", ".CAPTION")
"""Sidecar caption files, in the order they win: ``.txt`` (ours and most tools') before ``.caption``
(kohya's other extension)."""


def read_caption(image: Path) -> tuple[str | None, str | None]:
    """The sidecar caption of an image: ``name.txt``, else ``name.caption`` (either letter case).

    When both a ``.txt`` and a ``.caption`` exist, the ``.txt`` is read and the warning says
    the other was ignored.

    Returns:
        ``(caption, warning)``: caption None when there is no file; warning set when the
        file was not valid UTF-8, was truncated, or a second caption file was ignored.
    """
    by_kind: dict[str, Path] = {}
    for suffix in CAPTION_SUFFIXES:
        if image.with_suffix(suffix).is_file():
            by_kind.setdefault(suffix.lower(), image.with_suffix(suffix))
    found = list(by_kind.values())
    if not found:
        return None, None
    path = found[0]
    text, warning = _read_text(path)
    if len(found) > 1:
        ignored = f"{found[1].name} is ignored: {path.name} is its caption"
        warning = f"{warning}; {ignored}" if warning else ignored
    return text, warning


def _read_text(path: Path) -> tuple[str, str | None]:
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
        self.keep_on_dropout = training.keep_tokens
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
        tags = self.tags(caption)
        if self.dropout > 0.0 and rng.random() < self.dropout:
            return ", ".join(tags[: self.keep_on_dropout])
        if self.shuffle and len(tags) > self.keep + 1:
            head, tail = tags[:self.keep], tags[self.keep:]
            rng.shuffle(tail)
            tags = head + tail
        return ", ".join(tags)
