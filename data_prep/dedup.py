"""Exact deduplication across every shard of a run, in two passes.

Pass one (in each shard's worker) attaches a 128-bit key of the normalised text. Between
the passes the main process reads only the keys of all shards and decides, in input order,
which document of each group is kept: the first one. Pass two drops the others, naming
the kept document, so the result does not depend on how shards were spread over workers.
A run plans with `data_prep.dedup_plan`, which streams the keys through disk partitions;
`plan_duplicates` holds them all and is its reference in the tests.
"""

from __future__ import annotations

import re

import xxhash

from data_prep.config import ExactDedupConfig
from countrytune.document import Document, Drop
from data_prep.step import Step

_WHITESPACE = re.compile(r"\s+")


def dedup_key(text: str, cfg: ExactDedupConfig) -> bytes:
    if cfg.collapse_whitespace:
        text = _WHITESPACE.sub(" ", text).strip()
    if cfg.casefold:
        text = text.casefold()
    return xxhash.xxh3_128_digest(text.encode("utf-8"))


def plan_duplicates(shard_keys: list[list[bytes]], shard_ids: list[list[str]]
                    ) -> list[dict[int, str]]:
    """For each shard, {row: id of the kept document} for rows that repeat an earlier one."""
    first: dict[bytes, str] = {}
    plans: list[dict[int, str]] = []
    for keys, ids in zip(shard_keys, shard_ids):
        plan: dict[int, str] = {}
        for row, (key, doc_id) in enumerate(zip(keys, ids)):
            kept = first.get(key)
            if kept is None:
                first[key] = doc_id
            else:
                plan[row] = kept
        plans.append(plan)
    return plans


class ExactDedup(Step):
    """Drops the rows `plan_duplicates` marked; documents carry their row in `meta["row"]`."""

    name = "dedup"

    def __init__(self, duplicates: dict[int, str]) -> None:
        super().__init__()
        self.duplicates = duplicates

    def process(self, doc: Document) -> Document | Drop:
        kept = self.duplicates.get(doc.meta["row"])
        if kept is None:
            return doc
        return Drop("exact_duplicate", f"same normalised text as {kept}", duplicate_of=kept)
