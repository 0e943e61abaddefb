"""Words per language (countrytune/words.py): what the quality rules, the dedup shingles and
fertility count, for scripts with and without spaces between words."""

from __future__ import annotations

import pytest

from countrytune.errors import UserError
from countrytune.words import dictionary, segmenter

THAI = "ผมชอบกินข้าวผัดกับไข่ดาวทุกวัน"  # "I like eating fried rice with a fried egg every day"


def test_whitespace_is_str_split():
    assert segmenter("whitespace")("a  b\tc\n") == ["a", "b", "c"]


def test_thai_splits_into_words_by_icu_and_by_pythainlp():
    icu_words = segmenter("icu", "tha")(THAI + " 2024, ok!")
    assert icu_words[:3] == ["ผม", "ชอบ", "กิน"] and icu_words[-2:] == ["2024", "ok"]
    assert "," not in icu_words and " " not in icu_words  # spaces and punctuation are not words
    newmm = segmenter("pythainlp")(THAI)
    assert "ข้าวผัด" in newmm and len(newmm) == 7  # a dictionary keeps "fried rice" one word


def test_icu_covers_other_scripts_and_astral_characters():
    assert segmenter("icu", "lao")("ຂ້ອຍຢາກໄປຕະຫຼາດ") == ["ຂ້ອຍ", "ຢາກ", "ໄປ", "ຕະຫຼາດ"]
    # ICU counts UTF-16 units: an emoji before a word must not shift the slices.
    assert segmenter("icu", "tha")("😀 ผมชอบ") == ["ผม", "ชอบ"]


def test_the_dictionary_is_the_segmenters_own():
    assert dictionary("whitespace") is None and dictionary("icu") is None
    assert {"ข้าวผัด", "ไข่ดาว"} <= dictionary("pythainlp")


def test_an_unknown_segmenter_is_refused():
    with pytest.raises(UserError, match="unknown word_segmenter"):
        segmenter("spaces")
