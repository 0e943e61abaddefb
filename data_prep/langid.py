"""Language identification stage: every document gets its language, or is dropped with why.

The decision (a generic model spots foreign text, the country's model decides among the
country's languages) is `countrytune.langid.LanguageIdentifier`, shared with the scoring
library; this step applies the thresholds and the profile's keep list.
"""

from __future__ import annotations

from countrytune.document import Document, Drop
from countrytune.errors import UserError
from countrytune.langid import (ISO639_1_TO_3, MODELS_DIR, SECOND_LANGUAGE_SHARE, GenericLangId,
                                LanguageIdentifier, resolve_model_path, segments, to_iso639_3)
from countrytune.profiles import CountryProfile, LangIdSpec
from data_prep.step import Step

__all__ = ["ISO639_1_TO_3", "MODELS_DIR", "SECOND_LANGUAGE_SHARE", "GenericLangId", "LanguageId",
           "LanguageIdentifier", "resolve_model_path", "segments", "to_iso639_3"]


class LanguageId(Step):
    name = "langid"
    batch_size = 256  # the country model scores a batch in one pass; 256 measured ~2x 32

    def __init__(self, profile: CountryProfile) -> None:
        super().__init__()
        if profile.langid is None:
            raise UserError(f"the {profile.name} profile has no `langid` section; add one "
                            f"(see recipes/countries/id.yaml) or leave langid out of --stages")
        self.identifier = LanguageIdentifier(profile)
        self.profile = profile
        self.spec: LangIdSpec = profile.langid
        self.model, self.generic = self.identifier.model, self.identifier.generic

    def classify(self, texts: list[str]) -> list[tuple[str, float, str | None]]:
        """(language, confidence, second language or None) per text, by the country model."""
        return self.identifier.classify(texts)

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        calls = self.identifier.identify([doc.text for doc in docs])
        by_generic = sum(call[3] for call in calls)
        if by_generic:
            self.counters["decided_by_generic_model"] += by_generic
        return [self._decide(doc, lang, score, second) for doc, (lang, score, second, _) in zip(docs, calls)]

    def _decide(self, doc: Document, lang: str, score: float, second: str | None) -> Document | Drop:
        spec = self.profile.language(lang)
        threshold = self.spec.default_threshold
        if spec is not None and spec.langid_threshold is not None:
            threshold = spec.langid_threshold
        # An unsure call is reported as unsure, whatever language it leans to.
        if score < threshold:
            self.counters[f"dropped:{lang}:lang_low_score"] += 1
            return Drop("lang_low_score", f"{lang} {score:.2f} < {threshold}", lang=lang)
        if spec is None or not spec.keep:
            self.counters[f"dropped:{lang}:lang_not_kept"] += 1
            return Drop("lang_not_kept", f"{lang} ({score:.2f})", lang=lang)
        self.counters[f"tagged:{lang}"] += 1
        if second:
            self.counters["mixed_language_docs"] += 1
        doc.lang, doc.lang_score, doc.lang_second = lang, round(score, 4), second
        return doc
