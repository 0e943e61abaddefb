"""The one contract of every data_prep step, and the counting it gets for free.

A step decides, one document at a time, keep (return the document, possibly changed) or
drop (return a `Drop` with a reason). `Step.run` does the rest: it counts documents and
characters in and out per language, counts drops by reason, and hands each drop to the
shard's reject sink, so no step can lose a document without a trace.
"""

from __future__ import annotations

import time
from abc import ABC
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar

from countrytune.document import Document, Drop, Reject


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` items (the last may be shorter)."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class BalanceError(AssertionError):
    """Documents in != documents out + documents rejected: a bug, never bad input."""


class StageStats:
    """Per-language counts of one stage, plus stage-specific counters (e.g. PII types)."""

    def __init__(self) -> None:
        self.by_lang: dict[str, dict] = {}
        self.counters: Counter[str] = Counter()

    def _lang(self, lang: str) -> dict:
        if lang not in self.by_lang:
            self.by_lang[lang] = {"docs_in": 0, "docs_out": 0, "chars_in": 0, "chars_out": 0,
                                  "rejected": Counter()}
        return self.by_lang[lang]

    def count_in(self, lang: str, chars: int) -> None:
        row = self._lang(lang)
        row["docs_in"] += 1
        row["chars_in"] += chars

    def count_out(self, lang: str, chars: int) -> None:
        row = self._lang(lang)
        row["docs_out"] += 1
        row["chars_out"] += chars

    def count_drop(self, lang: str, reason: str) -> None:
        self._lang(lang)["rejected"][reason] += 1

    def total(self, key: str) -> int:
        return sum(row[key] for row in self.by_lang.values())

    def rejected(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for row in self.by_lang.values():
            out.update(row["rejected"])
        return out

    def check_balance(self, stage: str) -> None:
        for lang, row in self.by_lang.items():
            dropped = sum(row["rejected"].values())
            if row["docs_in"] != row["docs_out"] + dropped:
                raise BalanceError(f"stage {stage}, language {lang}: {row['docs_in']} in != "
                                   f"{row['docs_out']} out + {dropped} rejected")

    def merge(self, other: "StageStats") -> None:
        for lang, row in other.by_lang.items():
            mine = self._lang(lang)
            for key in ("docs_in", "docs_out", "chars_in", "chars_out"):
                mine[key] += row[key]
            mine["rejected"].update(row["rejected"])
        self.counters.update(other.counters)

    def to_dict(self) -> dict:
        return {
            "by_lang": {lang: {**row, "rejected": dict(sorted(row["rejected"].items()))}
                        for lang, row in sorted(self.by_lang.items())},
            "counters": dict(sorted(self.counters.items())),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "StageStats":
        stats = cls()
        for lang, row in data["by_lang"].items():
            stats.by_lang[lang] = {**row, "rejected": Counter(row["rejected"])}
        stats.counters.update(data["counters"])
        return stats


class ShardContext:
    """What a step sees of the shard it runs in: its stats and where rejects go."""

    def __init__(self, reject_sink: Callable[[Reject], None],
                 progress: Callable[[int], None] | None = None) -> None:
        self.stats: dict[str, StageStats] = {}
        self.reject = reject_sink
        self.progress = progress
        self.cpu_seconds: Counter[str] = Counter()  # per stage: where a worker's time goes

    def stage(self, name: str) -> StageStats:
        return self.stats.setdefault(name, StageStats())

    def check_balance(self) -> None:
        for name, stats in self.stats.items():
            stats.check_balance(name)


class Step(ABC):
    """One data_prep stage. Subclasses set `name` and implement `process`, or, where a model
    is faster on many documents at once, `process_batch` with a `batch_size`."""

    name: ClassVar[str]
    batch_size: ClassVar[int] = 1

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def process(self, doc: Document) -> Document | Drop:
        """Keep the document (possibly changed) or drop it with a reason."""
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_batch")

    def process_batch(self, docs: list[Document]) -> list[Document | Drop]:
        """One decision per document, in order."""
        return [self.process(doc) for doc in docs]

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        stats = ctx.stage(self.name)
        self.counters = Counter()
        try:
            for batch in batched(docs, self.batch_size):
                # Counted under the language each document came in with, so that each
                # language balances even for a step that changes `lang`.
                langs = [doc.lang for doc in batch]
                for doc in batch:
                    stats.count_in(doc.lang, len(doc.text))
                started = time.process_time()
                results = self.process_batch(batch)
                ctx.cpu_seconds[self.name] += time.process_time() - started
                for doc, lang, result in zip(batch, langs, results):
                    yield from self._account(doc, lang, result, stats, ctx)
        finally:
            stats.counters.update(self.counters)

    def _account(self, doc: Document, lang: str, result: Document | Drop, stats: StageStats,
                 ctx: ShardContext) -> Iterator[Document]:
        if isinstance(result, Drop):
            stats.count_drop(lang, result.reason)
            ctx.reject(Reject(stage=self.name, reason=result.reason, detail=result.detail,
                              id=doc.id, source=doc.source, lang=result.lang or lang,
                              text=doc.text, duplicate_of=result.duplicate_of))
        else:
            stats.count_out(lang, len(result.text))
            yield result
