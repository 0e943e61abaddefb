"""The verifier that ranks a model's answers to one prompt, for preference pairs.

Its order, most important first:
  1. the answer is in the language asked for (translations: prep's own language identifier,
     the country model after the generic one, as `countrytune eval` judges consistency);
  2. the answer ended its turn within max_new_tokens (a cut-off answer is never chosen);
  3. the answer is right: the label word the task expects (classification), or closer to the
     reference translation by sentence chrF++ (translation).
The best answer is chosen and the worst rejected; two answers with the same words (case and
punctuation aside), or translations in the same standing whose chrF++ differ by less than
`min_chrf_gap`, give no pair: the preference would be noise. When no sample passes steps 1, 2 and (for
labels) 3, the task's own reference answer may stand as the chosen one
(`chosen_fallback: reference`), so that prompts where the model always drifts into another
language, the ones a country most needs fixed, still give a pair.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from countrytune.artifacts.preference import Judgement

ORDER = ("the answer is in the language asked for (prep's language identifier; translations)",
         "the answer ended within max_new_tokens (a cut-off answer is never chosen)",
         "the right label word (classification) or the higher chrF++ against the reference translation")


def _words(text: str) -> list[str]:
    """Lower-cased words, in one Unicode composition, without punctuation."""
    return re.findall(r"[^\W_]+", unicodedata.normalize("NFC", text).lower())


def label_word(text: str) -> str:
    """The first word of an answer: `Positif.` and `positif` are the same label."""
    words = _words(text)
    return words[0] if words else ""


def same_words(a: str, b: str) -> bool:
    """Two answers that differ only in case, punctuation or spacing: a pair of them would teach
    punctuation, not the task."""
    return _words(a) == _words(b)


@dataclass(frozen=True)
class Prompt:
    """One SFT record, as the verifier needs it."""

    id: str
    lang: str  # the language the answer must be in
    kind: str  # translation or classification
    prompt: list[dict[str, str]]
    reference: str  # the record's own answer
    template: str


@dataclass(frozen=True)
class Ranked:
    chosen: tuple[str, Judgement] | None
    rejected: tuple[str, Judgement] | None
    chosen_because: str = ""
    rejected_because: str = ""
    reason: str | None = None  # why there is no pair


class Verifier:
    def __init__(self, country: str, chosen_fallback: str, min_chrf_gap: float = 0.0) -> None:
        from pipeline.scoring.generative import LanguageJudge

        self.judge = LanguageJudge(country)
        self.fallback = chosen_fallback
        self.min_chrf_gap = min_chrf_gap

    def judge_answers(self, prompt: Prompt, answers: list[str], finished: list[bool]) -> list[Judgement]:
        cut = [("" if f else ", cut off at max_new_tokens") for f in finished]
        if prompt.kind == "classification":  # one word: no language to judge
            right = label_word(prompt.reference)
            return [Judgement(origin="sample", language_ok=True, score=float(label_word(a) == right), finished=f,
                              why=("right label" if label_word(a) == right else f"wrong label ({label_word(a) or 'none'!r})")
                              + c)
                    for a, f, c in zip(answers, finished, cut)]
        from pipeline.scoring.generative import chrf_documents

        languages = self.judge.languages(answers)
        scores, _ = chrf_documents(answers, [prompt.reference] * len(answers))
        return [Judgement(origin="sample", language=lang, language_ok=lang == prompt.lang, score=round(score, 2),
                          finished=f, why=(f"{lang} as asked" if lang == prompt.lang else f"{lang}, asked {prompt.lang}")
                          + f", chrF++ {score:.1f}" + c)
                for lang, score, f, c in zip(languages, scores, finished, cut)]

    def rank(self, prompt: Prompt, answers: list[str], finished: list[bool] | None = None) -> Ranked:
        """The pair to keep from these samples, or why there is none. Empty answers (the model
        ended its turn at once) are no chat to train on: they are left out of the ranking.
        finished: per answer, whether it ended its turn (default: all did)."""
        kept = [(a, f) for a, f in zip(answers, finished or [True] * len(answers)) if a.strip()]
        answers, finished = [a for a, _ in kept], [f for _, f in kept]
        if len(answers) < 2 and self.fallback != "reference" or not answers:
            return Ranked(None, None, reason="empty_samples")
        judged = self.judge_answers(prompt, answers, finished)

        def key(i: int):
            j = judged[i]
            return (j.language_ok, j.finished, j.score, -i)  # ties: the earlier sample wins

        order = sorted(range(len(answers)), key=key)
        best, worst = order[-1], order[0]
        passes = (judged[best].language_ok and judged[best].finished
                  and (prompt.kind == "translation" or judged[best].score == 1.0))
        rejected = (answers[worst], judged[worst])
        if not passes:
            if self.fallback != "reference":
                return Ranked(None, None, reason="no_sample_passed")
            reference = Judgement(origin="reference", language=prompt.lang if prompt.kind == "translation" else None,
                                  language_ok=True, score=100.0 if prompt.kind == "translation" else 1.0,
                                  why="the reference answer: no sample passed")
            if same_words(prompt.reference, answers[worst]):
                return Ranked(None, None, reason="same_answers")
            return Ranked((prompt.reference, reference), rejected, _why_fallback(prompt, judged[best]),
                          _why_rejected(prompt, judged[worst]))
        if same_words(answers[best], answers[worst]):
            return Ranked(None, None, reason="same_answers")
        if key(best)[:3] == key(worst)[:3]:
            return Ranked(None, None, reason="no_preference")
        if (prompt.kind == "translation" and key(best)[:2] == key(worst)[:2]
                and judged[best].score - judged[worst].score < self.min_chrf_gap):
            return Ranked(None, None, reason="chrf_too_close")
        chosen_because = ("right label" if prompt.kind == "classification"
                          else "in the language asked, highest chrF++")
        return Ranked((answers[best], judged[best]), rejected, chosen_because, _why_rejected(prompt, judged[worst]))


def _why_fallback(prompt: Prompt, best: Judgement) -> str:
    """Why the reference answer stands as the chosen side (best: the best sample)."""
    if not best.language_ok:
        return "reference: no sample in the language asked"
    if prompt.kind == "classification" and best.score != 1.0:
        return "reference: no sample with the right label"
    return "reference: every passing sample cut off at max_new_tokens"


def _why_rejected(prompt: Prompt, j: Judgement) -> str:
    if not j.language_ok:
        return f"wrong language ({j.language})"
    if not j.finished:
        return "cut off at max_new_tokens"
    if prompt.kind == "classification":
        return "right label, but the worst sample" if j.score == 1.0 else "wrong label"
    return "in the language asked, lowest chrF++"
