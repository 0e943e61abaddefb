"""Contrast pairs: a translation prompt's reference answer against the same sentence in another
language, taken from the parallel data (`PairsSpec.contrast_pairs`).

On-policy pairs teach a language's name only where a sample drifts, and an adapter that mixes
its regional languages writes one mixture whatever name the instruction says. A contrast pair
puts the asked language's reference against the same sentence's reference in the language the
adapter's worst sample drifted into (else one of the spec's languages, picked by hash): the two
answers differ in nothing but their language, which is what the pair is there to teach.
"""

from __future__ import annotations

import hashlib

from countrytune.artifacts.chat import parse_translation_record_id
from countrytune.artifacts.preference import Judgement
from pipeline.preference.verifier import Prompt, Ranked, same_words

CHOSEN_BECAUSE = "reference: against the same sentence in another language"
REJECTED_BECAUSE = "the same sentence in another language (its reference)"


class ParallelSentences:
    """Each sentence's text in every language the translation records hold it in."""

    def __init__(self, records: list[dict]) -> None:
        self.texts: dict[tuple[str, str], dict[str, str]] = {}  # (task, sentence id) -> {lang: text}
        for rec in records:
            parsed = parse_translation_record_id(rec["id"])
            if parsed is not None:
                task, _, tgt, sentence = parsed
                self.texts.setdefault((task, sentence), {})[tgt] = rec["messages"][-1]["content"]

    def others(self, prompt: Prompt) -> dict[str, str]:
        """The prompt's sentence in the languages other than the one asked for."""
        parsed = parse_translation_record_id(prompt.id)
        if parsed is None:
            return {}
        task, _, tgt, sentence = parsed
        return {lang: text for lang, text in self.texts.get((task, sentence), {}).items() if lang != tgt}


def contrast(prompt: Prompt, ranked: Ranked, parallel: ParallelSentences, languages: list[str] | None,
             seed: int) -> tuple[str | None, Ranked]:
    """(the rejected side's language, the pair) for one translation prompt, or (None, why not).
    ranked: the prompt's on-policy ranking, whose rejected side names where the samples drifted."""
    from pipeline.scoring.generative import chrf_documents

    others = parallel.others(prompt)
    drifted = ranked.rejected[1] if ranked.rejected is not None else None
    drifted_to = drifted.language if drifted is not None and not drifted.language_ok else None
    if drifted_to in others:
        other = drifted_to
    else:
        candidates = sorted(lang for lang in others if languages is None or lang in languages)
        if not candidates:
            return None, Ranked(None, None, reason="no_parallel_sentence")
        other = min(candidates, key=lambda lang: hashlib.blake2b(f"{seed}:{prompt.id}:{lang}".encode(),
                                                                 digest_size=8).digest())
    if same_words(prompt.reference, others[other]):  # a name or a number: the same in both languages
        return None, Ranked(None, None, reason="same_answers")
    (score,), _ = chrf_documents([others[other]], [prompt.reference])
    chosen = Judgement(origin="reference", language=prompt.lang, language_ok=True, score=100.0,
                       why="the reference answer")
    rejected = Judgement(origin="parallel", language=other, language_ok=False, score=round(score, 2),
                         why=f"the same sentence in {other}, asked {prompt.lang}, chrF++ {score:.1f}")
    return other, Ranked((prompt.reference, chosen), (others[other], rejected), CHOSEN_BECAUSE, REJECTED_BECAUSE)
