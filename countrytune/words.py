"""Words, per language: what every word-based part of the pipeline counts.

Quality rules (words, mean word length, stop words, n-gram repetition), MinHash shingles and
the fertility report's tokens per word all need words, and a space is a word boundary only in
some scripts. Thai, Lao, Khmer and Burmese write no spaces between words; splitting them on
spaces makes a sentence one "word". So each language of a profile names its segmenter
(`word_segmenter`), as FineWeb-2 gives each language its own word tokenizer:

    whitespace   str.split: Latin, Arabic and other scripts that space their words (default)
    icu          ICU word boundaries (PyICU, the dictionary-based break iterator of ICU, which
                 covers Thai, Lao, Khmer, Burmese and CJK), keeping only word and number segments
    pythainlp    PyThaiNLP's `newmm` (maximal matching on its Thai dictionary): finer Thai
                 words than ICU's (ข้าวผัด "fried rice" stays one word)

A segmenter returns the words of a text with no white space or punctuation-only pieces;
callers strip edge punctuation and fold case as they always did.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

from countrytune.errors import UserError

WordSegmenterName = Literal["whitespace", "icu", "pythainlp"]
Segmenter = Callable[[str], list[str]]

# ICU's rule status of a segment: below 100 is "none" (spaces, punctuation); 100 numbers,
# 200 letters, 300 kana, 400 ideographs (UBRK_WORD_* in ubrk.h).
_ICU_WORD_STATUS = 100


def whitespace(text: str) -> list[str]:
    return text.split()


def _icu(language: str) -> Segmenter:
    try:
        import icu
    except ImportError:
        raise UserError("word_segmenter icu needs PyICU: pip install 'countrytune[data]' "
                        "(it builds against the system's ICU: apt-get install libicu-dev pkg-config)") from None
    iterator = icu.BreakIterator.createWordInstance(icu.Locale(language))

    def split(text: str) -> list[str]:
        # ICU counts UTF-16 code units: slice its own string, never the Python one.
        units = icu.UnicodeString(text)
        iterator.setText(units)
        out, start = [], iterator.first()
        for end in iterator:
            if iterator.getRuleStatus() >= _ICU_WORD_STATUS:
                out.append(str(units[start:end]))
            start = end
        return out

    return split


def _pythainlp() -> Segmenter:
    try:
        from pythainlp.tokenize import word_tokenize
    except ImportError:
        raise UserError("word_segmenter pythainlp needs PyThaiNLP: pip install 'countrytune[data]'") from None

    def split(text: str) -> list[str]:
        return [w for w in word_tokenize(text, engine="newmm", keep_whitespace=False)
                if any(c.isalnum() for c in w)]

    return split


@lru_cache(maxsize=None)
def dictionary(name: WordSegmenterName) -> frozenset[str] | None:
    """The words a dictionary segmenter knows (PyThaiNLP's Thai word list, ~62,000 words);
    None for segmenters without one. Text whose words it mostly does not know is garbled:
    the quality rule `min_known_word_fraction` uses it."""
    if name != "pythainlp":
        return None
    _pythainlp()  # the same clear error when PyThaiNLP is missing
    from pythainlp.corpus import thai_words

    return frozenset(thai_words())


@lru_cache(maxsize=None)
def segmenter(name: WordSegmenterName, language: str = "") -> Segmenter:
    """The word splitter `name` for `language` (an ISO 639 code, the ICU locale; ignored by the
    others). One per process and language: ICU's iterator and PyThaiNLP's dictionary load once."""
    if name == "whitespace":
        return whitespace
    if name == "icu":
        return _icu(language)
    if name == "pythainlp":
        return _pythainlp()
    raise UserError(f"unknown word_segmenter {name!r}: whitespace, icu or pythainlp")
