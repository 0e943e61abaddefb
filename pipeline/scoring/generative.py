"""Scores of written answers: chrF++ of translations, and whether an answer is in the
language that was asked for.

chrF++ is sacrebleu's CHRF(word_order=2). Each document keeps its sentence-level chrF++
(to read) and its n-gram statistics (sacrebleu's own per-sentence counts): a corpus's chrF++
is computed from the summed statistics, so a bootstrap over documents re-sums them, as
sacrebleu's paired bootstrap does, instead of averaging sentence scores.
"""

from __future__ import annotations

import numpy as np

CHRF_WORD_ORDER = 2  # chrF++: character 1-6-grams and word 1-2-grams
NO_LANGUAGE = "und"  # an answer with no letters is in no language


def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=CHRF_WORD_ORDER)


def chrf_documents(hypotheses: list[str], references: list[str]) -> tuple[list[float], list[list[int]]]:
    """(sentence-level chrF++, n-gram statistics) per document."""
    metric = _chrf()
    stats = metric._extract_corpus_statistics(hypotheses, [references])
    return [float(metric._compute_score_from_stats(s).score) for s in stats], [list(map(int, s)) for s in stats]


def corpus_chrf(stats: np.ndarray) -> np.ndarray:
    """Corpus chrF++ of documents' statistics (n_docs, n_stats), or of each row of resamples
    (n_resamples, n_docs, n_stats)."""
    metric = _chrf()
    summed = stats.sum(axis=-2)
    if summed.ndim == 1:
        return np.float64(metric._compute_score_from_stats(list(summed)).score)
    return np.array([metric._compute_score_from_stats(list(row)).score for row in summed])


class LanguageJudge:
    """The country's language identifier, as prep runs it (generic model, then the country
    model), asked which language each answer is in."""

    def __init__(self, country: str) -> None:
        from countrytune.langid import LanguageIdentifier
        from countrytune.profiles import load_profile

        self.identifier = LanguageIdentifier(load_profile(country))

    def languages(self, texts: list[str]) -> list[str]:
        import re

        has_letters = [bool(re.search(r"[^\W\d_]", t)) for t in texts]
        todo = [t for t, ok in zip(texts, has_letters) if ok]
        calls = iter(self.identifier.identify(todo) if todo else [])
        return [next(calls)[0] if ok else NO_LANGUAGE for ok in has_letters]


def consistent(languages: list[str], target: str) -> list[float]:
    """1.0 for each answer in the target language, else 0.0."""
    return [float(lang == target) for lang in languages]
