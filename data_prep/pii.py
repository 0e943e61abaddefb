"""PII redaction with the country profile's recognisers.

Each rule of the profile is a candidate pattern, optional context words (one must stand
just before), optional excluding context (`Rp` before a number makes it a price) and an
optional validator (structure, check digits). Matches of earlier rules win overlaps; each
is replaced by a typed placeholder such as `<NIK>` and counted by type.

Rules see Thai (๐-๙), Arabic-Indic (٠-٩) and Extended Arabic-Indic (۰-۹) digits as ASCII
digits, whatever the profile's `normalize.fold_digits` says: the patterns and validators run on
a folded copy of the text, and since folding maps one character to one, every span found there
is the same span of the original text, which keeps its own digits outside the placeholders.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from countrytune.errors import UserError
from countrytune.profiles import PiiRule
from countrytune.document import Document, Drop
from data_prep.normalize import DIGITS_TO_ASCII
from data_prep.pii_validators import VALIDATORS
from data_prep.step import Step


def _words_re(words: list[str]) -> re.Pattern[str] | None:
    """Any of `words`, lowercased. A Latin edge of a word must not touch another letter or digit
    ("v" is not the end of "dev"); a Thai or Arabic edge may, since Thai glues words to words and
    numbers ("บาร์โค้ด8851234567890") and Arabic its clitics (و, ب, ال) to the next word."""
    if not words:
        return None

    def bounded(word: str) -> str:
        left = r"(?<!\w)" if word[0].isascii() else ""
        right = r"(?!\w)" if word[-1].isascii() else ""
        return left + re.escape(word) + right

    return re.compile("|".join(bounded(w.lower()) for w in sorted(words, key=len, reverse=True)))


@dataclass(frozen=True)
class Recogniser:
    type: str
    placeholder: str
    pattern: re.Pattern[str]
    validate: Callable[[str], bool] | None
    context: re.Pattern[str] | None
    exclude: re.Pattern[str] | None
    window: int
    requires_any: str

    @classmethod
    def from_rule(cls, rule: PiiRule) -> "Recogniser":
        validate = None
        if rule.validator:
            if rule.validator not in VALIDATORS:
                raise UserError(f"PII rule {rule.type}: unknown validator {rule.validator!r}; "
                                f"known: {', '.join(sorted(VALIDATORS))}")
            fn = VALIDATORS[rule.validator]
            try:
                inspect.signature(fn).bind("", **rule.validator_args)
            except TypeError as e:
                raise UserError(f"PII rule {rule.type}: validator_args do not fit "
                                f"{rule.validator}: {e}") from None
            validate = functools.partial(fn, **rule.validator_args)
        return cls(type=rule.type, placeholder=rule.placeholder or f"<{rule.type}>",
                   pattern=re.compile(rule.pattern), validate=validate,
                   context=_words_re(rule.context_words), exclude=_words_re(rule.exclude_context_words),
                   window=rule.context_window, requires_any=rule.requires_any)

    def find(self, text: str) -> list[tuple[int, int]]:
        if self.requires_any and not any(c in text for c in self.requires_any):
            return []
        spans = []
        lowered: str | None = None
        for m in self.pattern.finditer(text):
            start, end = m.span()
            if self.context or self.exclude:
                lowered = lowered if lowered is not None else text.lower()
                before = lowered[max(0, start - self.window):start]
                if self.context and not self.context.search(before):
                    continue
                # Excluding words must stand right before the candidate (e.g. "Rp 150.000").
                if self.exclude and self.exclude.search(before.rstrip()[-12:]):
                    continue
            if self.validate and not self.validate(m.group(0)):
                continue
            spans.append((start, end))
        return spans


class PiiRedactor(Step):
    name = "pii"

    def __init__(self, rules: list[PiiRule]) -> None:
        super().__init__()
        self.recognisers = [Recogniser.from_rule(rule) for rule in rules]

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        seen = text if text.isascii() else text.translate(DIGITS_TO_ASCII)
        taken: list[tuple[int, int, Recogniser]] = []
        for rec in self.recognisers:  # priority order: an earlier rule keeps an overlap
            for start, end in rec.find(seen):
                if all(end <= s or start >= e for s, e, _ in taken):
                    taken.append((start, end, rec))
        found: Counter[str] = Counter()
        for start, end, rec in sorted(taken, key=lambda t: t[0], reverse=True):
            text = text[:start] + rec.placeholder + text[end:]
            found[rec.type] += 1
        return text, found

    def process(self, doc: Document) -> Document | Drop:
        redacted, found = self.redact(doc.text)
        if found:
            self.counters.update(found)
            self.counters["docs_with_pii"] += 1
            doc.text = redacted
        return doc
