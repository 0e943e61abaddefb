"""The records that flow through data_prep."""

from __future__ import annotations

from dataclasses import dataclass, field

UNKNOWN_LANG = "und"  # ISO 639-3 "undetermined", for records that never became documents


@dataclass
class Document:
    id: str
    text: str
    source: str
    lang: str
    lang_score: float | None = None
    """Language-ID confidence in `lang`; None when the language came with the input."""
    lang_second: str | None = None
    """Second language of a document that mixes languages (>= 20% of its text)."""
    cluster_size: int | None = None
    """Documents in this one's near-duplicate cluster (1: none); None when not measured."""
    meta: dict = field(default_factory=dict)
    """Values steps attach for later steps (e.g. the dedup key); not written to shards."""


@dataclass(frozen=True)
class Drop:
    """A step's decision to drop a document, with the reason counted in stats."""

    reason: str
    detail: str = ""
    duplicate_of: str | None = None
    lang: str | None = None
    """The language a step found, when it differs from the one the document came with."""


@dataclass
class Reject:
    """A dropped document or unreadable record, as written to `rejects/*.parquet`."""

    stage: str
    reason: str
    detail: str
    id: str
    source: str
    lang: str
    text: str | None
    raw: bytes | None = None
    duplicate_of: str | None = None
