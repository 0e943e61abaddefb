"""Quality filters in the style of Gopher (Rae et al. 2021) and FineWeb-2, per language.

Every threshold comes from the country profile, per language; a language without stop
words in its profile is not held to a stop-word rule, so no English list ever judges
Javanese. The first rule a document breaks is its reason.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import regex

from countrytune.profiles import CountryProfile, QualityThresholds
from countrytune.document import Document, Drop
from data_prep.charlm import CharModel
from data_prep.step import Step

# Edge punctuation stripped from words: ASCII and the typographic marks of web text.
# str.strip with a fixed set is ~5x faster than a regular expression per token.
_PUNCT = string.punctuation + "“”‘’«»‹›„…–—•·¡¿"
_BULLETS = ("•", "●", "○", "▪", "‣", "◦", "- ", "* ", "– ")
_ELLIPSES = ("...", "…")


@dataclass(frozen=True)
class TextMetrics:
    """What the rules look at, computed once per document."""

    words: list[str]
    """Lower-cased words with edge punctuation stripped (empty tokens dropped)."""
    lines: list[str]
    """Non-empty lines."""
    chars: int


def measure(text: str, split: Callable[[str], list[str]] = str.split) -> TextMetrics:
    """The document's words by its language's segmenter (countrytune/words.py), and lines."""
    words = [w for w in (tok.strip(_PUNCT).lower() for tok in split(text)) if w]
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return TextMetrics(words=words, lines=lines, chars=len(text))


def duplicate_line_fractions(lines: list[str]) -> tuple[float, float]:
    """Share of lines, and of line characters, that repeat an earlier line."""
    seen: set[str] = set()
    dup_lines = dup_chars = total_chars = 0
    for line in lines:
        total_chars += len(line)
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        seen.add(line)
    return (dup_lines / len(lines) if lines else 0.0,
            dup_chars / total_chars if total_chars else 0.0)


def top_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters covered by the most frequent n-gram (if it repeats), over all word characters."""
    if len(words) < n:
        return 0.0
    counts = Counter(zip(*(words[i:] for i in range(n))))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(map(len, gram)) / sum(map(len, words))


def duplicate_ngram_char_fraction(words: list[str], n: int) -> float:
    """Characters of words inside any n-gram that occurs more than once, over all word characters."""
    if len(words) < n:
        return 0.0
    grams = list(zip(*(words[i:] for i in range(n))))
    counts = Counter(grams)
    if len(counts) == len(grams):
        return 0.0
    covered = [False] * len(words)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i:i + n] = [True] * n
    total = sum(map(len, words))
    return sum(len(w) for w, c in zip(words, covered) if c) / total if total else 0.0


@lru_cache(maxsize=None)
def script_letters(script: str) -> regex.Pattern:
    # Script_Extensions: a letter shared by scripts (e.g. Arabic's used in Persian) counts for each.
    return regex.compile(rf"(?V1)[\p{{L}}&&\p{{scx={script}}}]")


_LETTERS = regex.compile(r"\p{L}")


def script_fraction(text: str, script: str) -> float:
    """Share of the letters of `text` written in `script` (ISO 15924, e.g. Thai); 1.0 without letters."""
    letters = len(_LETTERS.findall(text))
    return len(script_letters(script).findall(text)) / letters if letters else 1.0


def known_word_fraction(words: list[str], known: frozenset[str], script: str) -> float:
    """Share of the words written in `script` that `known` holds (1.0 when there are none)."""
    pattern = script_letters(script)
    own = [w for w in words if pattern.search(w)]
    return sum(w in known for w in own) / len(own) if own else 1.0


@dataclass(frozen=True)
class LanguageRules:
    """What judges one language: its thresholds, stop words, word splitter and script."""

    thresholds: QualityThresholds
    stop_words: frozenset[str]
    split: Callable[[str], list[str]]
    script: str | None
    known: frozenset[str] | None
    """The segmenter's dictionary, for `min_known_word_fraction`."""
    char_model: CharModel | None = None
    """The language's character model, for `max_char_bits`."""


def check(text: str, rules: LanguageRules) -> Drop | None:
    """The first rule the document breaks, or None."""
    t, stop_words, script, known = rules.thresholds, rules.stop_words, rules.script, rules.known
    metrics = measure(text, rules.split)
    words, lines = metrics.words, metrics.lines
    n = len(words)
    if n < t.min_words:
        return Drop("too_few_words", f"{n} < {t.min_words}")
    if n > t.max_words:
        return Drop("too_many_words", f"{n} > {t.max_words}")
    mean_len = sum(map(len, words)) / n if n else 0.0
    if not t.min_mean_word_length <= mean_len <= t.max_mean_word_length:
        return Drop("mean_word_length", f"{mean_len:.2f} outside "
                    f"[{t.min_mean_word_length}, {t.max_mean_word_length}]")
    joined = "\n".join(lines)
    symbols = joined.count("#") + joined.count("...") + joined.count("…")
    if n and symbols / n > t.max_symbol_word_ratio:
        return Drop("symbol_ratio", f"{symbols / n:.3f} > {t.max_symbol_word_ratio}")
    if lines:
        bullets = sum(line.startswith(_BULLETS) for line in lines) / len(lines)
        if bullets > t.max_bullet_lines_ratio:
            return Drop("bullet_lines", f"{bullets:.2f} > {t.max_bullet_lines_ratio}")
        ellipses = sum(line.endswith(_ELLIPSES) for line in lines) / len(lines)
        if ellipses > t.max_ellipsis_lines_ratio:
            return Drop("ellipsis_lines", f"{ellipses:.2f} > {t.max_ellipsis_lines_ratio}")
    # isalpha() answers for most words in one C call; the scan is for the rest ("ke-2", "i'm").
    alpha = sum(w.isalpha() or any(c.isalpha() for c in w) for w in words) / n if n else 0.0
    if alpha < t.min_alpha_words_ratio:
        return Drop("alpha_words_ratio", f"{alpha:.2f} < {t.min_alpha_words_ratio}")
    if t.min_known_word_fraction and known and script:
        share = known_word_fraction(words, known, script)
        if share < t.min_known_word_fraction:
            return Drop("unknown_words", f"{share:.2f} of words in the dictionary < {t.min_known_word_fraction}")
    if t.min_script_fraction and script:
        share = script_fraction(text, script)
        if share < t.min_script_fraction:
            return Drop("wrong_script", f"{share:.2f} of letters in {script} < {t.min_script_fraction}")
    if t.max_char_bits and rules.char_model is not None:
        bits = rules.char_model.bits_per_char(text, script_letters(script) if script else None)
        if bits > t.max_char_bits:
            return Drop("implausible_text", f"{bits:.2f} bits per character > {t.max_char_bits}")
    if stop_words and t.min_stop_words and n >= t.stop_words_min_doc_words:
        found = sum(w in stop_words for w in words)
        if found < t.min_stop_words:
            return Drop("few_stop_words", f"{found} < {t.min_stop_words}")
    dup_lines, dup_line_chars = duplicate_line_fractions(lines)
    if dup_lines > t.max_duplicate_line_fraction:
        return Drop("duplicate_lines", f"{dup_lines:.2f} > {t.max_duplicate_line_fraction}")
    if dup_line_chars > t.max_duplicate_line_char_fraction:
        return Drop("duplicate_line_chars", f"{dup_line_chars:.2f} > {t.max_duplicate_line_char_fraction}")
    if n < t.repetition_min_doc_words:
        return None
    for size, limit in sorted(t.max_top_ngram_char_fraction.items()):
        frac = top_ngram_char_fraction(words, size)
        if frac > limit:
            return Drop(f"top_{size}gram", f"{frac:.2f} > {limit}")
    for size, limit in sorted(t.max_duplicate_ngram_char_fraction.items()):
        # No n-gram repeats where no shorter one does: one set test spares most documents.
        if len(set(zip(*(words[i:] for i in range(size))))) == len(words) - size + 1:
            break
        frac = duplicate_ngram_char_fraction(words, size)
        if frac > limit:
            return Drop(f"duplicate_{size}gram", f"{frac:.2f} > {limit}")
    return None


def load_char_model(name: str) -> CharModel:
    """A character model by file name under data_prep/models/ or by path."""
    from data_prep.langid import resolve_model_path

    return CharModel.load(resolve_model_path(name, "character model", "countrytune charlm train"))


class QualityFilter(Step):
    name = "quality"

    def __init__(self, profile: CountryProfile) -> None:
        super().__init__()
        self.profile = profile
        self._rules: dict[str, LanguageRules] = {}

    def rules_for(self, lang: str) -> LanguageRules:
        if lang not in self._rules:
            spec = self.profile.language(lang)
            stop = frozenset(w.lower() for w in spec.stop_words) if spec else frozenset()
            thresholds = self.profile.thresholds_for(lang)
            self._rules[lang] = LanguageRules(
                thresholds, stop, self.profile.words_of(lang), spec.script if spec else None,
                self.profile.dictionary_of(lang) if thresholds.min_known_word_fraction else None,
                load_char_model(spec.char_model) if spec and spec.char_model and thresholds.max_char_bits else None)
        return self._rules[lang]

    def process(self, doc: Document) -> Document | Drop:
        if self.profile.language(doc.lang) is None:
            # Judged by the profile's defaults, without stop words: say so in the stats.
            self.counters[f"lang_not_in_profile:{doc.lang}"] += 1
        return check(doc.text, self.rules_for(doc.lang)) or doc
