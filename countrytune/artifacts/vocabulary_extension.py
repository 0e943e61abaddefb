"""`vocabulary_extension.json`: what `countrytune tokenizer extend` added to a base (written
beside its weights), read by training (`lora.train_new_tokens`) and copied into packages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from countrytune.atomic import atomic_write
from countrytune.schema import Schema, read_json

RECORD_NAME = "vocabulary_extension.json"


class NewToken(Schema):
    id: int
    token: str
    merge: list[str]
    """The BPE merge that makes it."""
    frequency: int
    """How often the merge occurred in the corpus it was learnt from."""
    old_pieces: list[int]
    """The parent's token ids for the same text (the rows its embedding starts from)."""


class VocabularyExtension(Schema):
    format_version: int = 1
    parent: str
    """The base it extends."""
    added_tokens: int
    first_new_id: int
    vocab_size: int
    min_frequency: int
    corpus: dict[str, Any]
    """Characters per language and the prep shards (path, sha256) the merges were learnt from."""
    fertility_on_heldout: dict[str, dict[str, Any]]
    """Per language: tokens per word and per byte before and after, on held-out text."""
    new_tokens: list[NewToken]

    def new_ids(self) -> list[int]:
        return list(range(self.first_new_id, self.first_new_id + self.added_tokens))


def write_extension(model_dir: Path, record: VocabularyExtension) -> Path:
    return atomic_write(Path(model_dir) / RECORD_NAME,
                        json.dumps(record.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n")


def read_extension(model_dir: Path | str) -> VocabularyExtension | None:
    """The record of an extended base; None for a base that was not extended."""
    path = Path(model_dir) / RECORD_NAME
    if not path.is_file():
        return None
    return read_json(path, VocabularyExtension, "; run `countrytune tokenizer extend` again")
