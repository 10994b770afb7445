"""Captions: sidecar files, prefix and batch tags, shuffling with kept tokens, dropout."""

from __future__ import annotations

import random

import pytest

from lora_operator.api import Dataset, Training
from lora_trainer.data import MAX_CAPTION_CHARS, CaptionBuilder, read_caption, split_tags

pytestmark = pytest.mark.trainer


def builder(dataset: dict | None = None, **training) -> CaptionBuilder:
    return CaptionBuilder(Dataset.model_validate(dataset or {}), Training(**training))


def test_composition_order_is_prefix_prepend_caption_append():
    b = builder({"captionPrefix": "TKXW, ", "tags": {"prepend": ["photo"], "append": ["high quality"]}})
    assert b.build("black cat, sofa", random.Random(0)) == "TKXW, photo, black cat, sofa, high quality"
    assert b.deterministic


def test_multi_word_tags_stay_whole():
    assert split_tags(" black cat ,, sitting on a sofa ,") == ["black cat", "sitting on a sofa"]


def test_shuffle_keeps_the_first_keep_tokens_tags_in_place():
    b = builder({"captionPrefix": "TKXW"}, shuffle_tags=True, keep_tokens=2)
    caption = "black cat, sofa, window, lamp, rug, plant"
    rng = random.Random(1)
    seen = set()
    for _ in range(50):
        tags = b.build(caption, rng).split(", ")
        assert tags[:2] == ["TKXW", "black cat"]
        assert sorted(tags[2:]) == sorted(["sofa", "window", "lamp", "rug", "plant"])
        seen.add(tuple(tags))
    assert len(seen) > 10
    assert not b.deterministic


def test_the_caption_prefix_is_never_shuffled_even_with_keep_tokens_zero():
    b = builder({"captionPrefix": "TKXW, "}, shuffle_tags=True, keep_tokens=0)
    rng = random.Random(3)
    assert all(b.build("a, b, c, d", rng).startswith("TKXW, ") for _ in range(30))


def test_caption_dropout_empties_the_whole_caption_trigger_included():
    b = builder({"captionPrefix": "TKXW"}, caption_dropout=0.5)
    rng = random.Random(0)
    texts = [b.build("black cat", rng) for _ in range(400)]
    empty = texts.count("")
    assert 150 < empty < 250
    assert set(texts) == {"", "TKXW, black cat"}


def test_caption_dropout_keeps_the_first_keep_tokens_tags():
    b = builder({"captionPrefix": "TKXW", "tags": {"prepend": ["photo"]}}, caption_dropout=0.5, keep_tokens=2,
                shuffle_tags=True)
    rng = random.Random(0)
    texts = [b.build("black cat, sofa, lamp", rng) for _ in range(400)]
    dropped = texts.count("TKXW, photo")
    assert 150 < dropped < 250 and "" not in texts
    assert all(t.startswith("TKXW, photo") for t in texts)


def test_same_seed_gives_the_same_captions():
    b = builder(shuffle_tags=True, caption_dropout=0.2)
    first = [b.build("a, b, c, d, e", random.Random(7)) for _ in range(5)]
    second = [b.build("a, b, c, d, e", random.Random(7)) for _ in range(5)]
    assert first == second


def test_sidecar_caption_is_read_as_utf8_and_stripped(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.txt").write_text("  café, 猫,\n  sofa \n", encoding="utf-8")
    assert read_caption(tmp_path / "a.png") == ("café, 猫, sofa", None)


def test_a_caption_sidecar_is_read_and_txt_wins_over_it_with_a_warning(tmp_path):
    (tmp_path / "a.caption").write_text("kohya style, cat", encoding="utf-8")
    assert read_caption(tmp_path / "a.png") == ("kohya style, cat", None)
    (tmp_path / "a.txt").write_text("from txt", encoding="utf-8")
    caption, warning = read_caption(tmp_path / "a.png")
    assert caption == "from txt" and warning == "a.caption is ignored: a.txt is its caption"


def test_missing_sidecar_means_no_caption(tmp_path):
    assert read_caption(tmp_path / "none.png") == (None, None)


def test_a_100kb_caption_is_cut_with_a_warning(tmp_path):
    (tmp_path / "big.txt").write_text(", ".join(f"tag{i}" for i in range(20000)), encoding="utf-8")
    caption, warning = read_caption(tmp_path / "big.png")
    assert len(caption) <= MAX_CAPTION_CHARS
    assert not caption.endswith(",")
    assert "big.txt" in warning and "cut" in warning


def test_invalid_utf8_caption_is_kept_with_a_warning(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"caf\xe9, cat")
    caption, warning = read_caption(tmp_path / "x.png")
    assert caption.endswith(", cat")
    assert "UTF-8" in warning
