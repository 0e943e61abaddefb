"""Prep's reader: input files to documents, counting the `read` stage and writing every
record that cannot be read as a reject with its reason (countrytune/records.py reads them)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from countrytune.document import UNKNOWN_LANG, Document, Drop, Reject
from countrytune.records import (
    ReaderConfig,
    RecordReader,
    expand_inputs,
    strip_compression,
    unreadable_errors,
    until_unreadable,
)
from data_prep.step import ShardContext

__all__ = ["DocumentReader", "ReaderConfig", "expand_inputs", "unreadable_errors"]

STAGE = "read"


class DocumentReader(RecordReader):
    """Turns one input file into documents, counting the `read` stage and its rejects."""

    def read(self, path: str, ctx: ShardContext, span: tuple[int, int] | None = None
             ) -> Iterator[Document]:
        """Documents of `path`, or of the lines (Parquet row groups) starting inside byte range
        `span` of it."""
        stats = ctx.stage(STAGE)
        name = os.path.basename(strip_compression(path))
        if span and span[0] > 0:
            name = f"{name}@{span[0]}"  # record numbers count from the range's first record
        if span and not self.splittable(path):
            raise ValueError(f"{path} cannot be read by byte range")
        for ordinal, record, raw in until_unreadable(self.records(path, span)):
            if isinstance(record, Drop):
                doc_or_drop: Document | Drop = record
            else:
                doc_or_drop = self._document(record, f"{name}:{ordinal}", path)
            if isinstance(doc_or_drop, Drop):
                if raw is None:  # Parquet rows are serialised only when rejected
                    raw = json.dumps(record, ensure_ascii=False, default=repr).encode()
                lang = record.get(self.cfg.lang_field) if isinstance(record, dict) else None
                lang = lang if isinstance(lang, str) and lang else UNKNOWN_LANG
                stats.count_in(lang, len(raw))
                stats.count_drop(lang, doc_or_drop.reason)
                text = record.get(self.cfg.text_field) if isinstance(record, dict) else None
                ctx.reject(Reject(stage=STAGE, reason=doc_or_drop.reason, detail=doc_or_drop.detail,
                                  id=f"{name}:{ordinal}", source=path, lang=lang,
                                  text=text if isinstance(text, str) else None,
                                  raw=raw[: self.cfg.raw_keep_bytes]))
                continue
            stats.count_in(doc_or_drop.lang, len(doc_or_drop.text))
            stats.count_out(doc_or_drop.lang, len(doc_or_drop.text))
            yield doc_or_drop

    def _document(self, record: dict[str, Any], fallback_id: str, source: str) -> Document | Drop:
        cfg = self.cfg
        text = self.text_of(record)
        if isinstance(text, Drop):
            return text
        doc_id = record.get(cfg.id_field)
        lang = record.get(cfg.lang_field)
        return Document(id=str(doc_id) if doc_id not in (None, "") else fallback_id, text=text,
                        source=source, lang=lang if isinstance(lang, str) and lang else self.default_lang)
