"""Near-duplicate removal: MinHash + LSH (data_prep.minhash) wired into the two passes.

Pass one stores each kept document's LSH band hashes. Between the passes the main process
clusters the rows of all shards that exact dedup keeps (in input order, so the first
document of a cluster is its representative wherever shards ran); pass two drops the
others, naming the kept document, and the kept one records its cluster's size.
A run plans with `data_prep.dedup_plan`, which streams the band hashes through disk
partitions; `plan_near_duplicates` holds them all and is its reference in the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from countrytune.document import Document, Drop
from data_prep.minhash import cluster_sizes, find_clusters
from data_prep.step import Step


def candidate_mask(bands: np.ndarray) -> np.ndarray:
    """Rows that share at least one band hash with another row (the only ones that can join)."""
    mask = np.zeros(len(bands), dtype=bool)
    for column in bands.T:
        _, inverse, counts = np.unique(column, return_inverse=True, return_counts=True)
        mask |= counts[inverse] > 1
    return mask


def plan_near_duplicates(shard_bands: list[np.ndarray], shard_ids: list[list[str]],
                         exact_plans: list[dict[int, str]],
                         load_signatures: Callable[[int, np.ndarray], np.ndarray] | None = None,
                         threshold: float | None = None,
                         ) -> tuple[list[dict[int, str]], list[dict[int, int]]]:
    """Per shard: {row: id of the kept document} for rows to drop, and {row: cluster size}
    for kept rows whose cluster has more than one member. Rows exact dedup drops are left out.

    With `threshold`, a candidate pair joins only if its signatures' estimated Jaccard reaches
    it; `load_signatures(shard, rows)` is asked only for rows in some candidate pair, so the
    main process never holds every document's signature (448 bytes each)."""
    rows = [np.array([r for r in range(len(ids)) if r not in exact], dtype=np.int64)
            for ids, exact in zip(shard_ids, exact_plans)]
    owner = np.concatenate([np.full(len(r), s, dtype=np.int64) for s, r in enumerate(rows)])
    local = np.concatenate(rows)
    drops: list[dict[int, str]] = [{} for _ in shard_ids]
    sizes: list[dict[int, int]] = [{} for _ in shard_ids]
    if not len(local):
        return drops, sizes
    bands = np.concatenate([b[r] for b, r in zip(shard_bands, rows)])
    # Only rows sharing a bucket can join: cluster those, in input order, and map back.
    candidates = np.flatnonzero(candidate_mask(bands))
    signatures = None
    if threshold is not None and len(candidates):
        signatures = np.concatenate([load_signatures(s, local[candidates[owner[candidates] == s]])
                                     for s in range(len(shard_ids))])
    sub = find_clusters(bands[candidates], signatures, threshold) if len(candidates) else candidates
    representative = np.arange(len(bands))
    representative[candidates] = candidates[sub]
    size = cluster_sizes(representative)
    for g in np.flatnonzero(size > 1):
        shard, row = int(owner[g]), int(local[g])
        rep = int(representative[g])
        if rep == g:
            sizes[shard][row] = int(size[g])
        else:
            drops[shard][row] = shard_ids[int(owner[rep])][int(local[rep])]
    return drops, sizes


class NearDedup(Step):
    name = "near_dedup"

    def __init__(self, duplicates: dict[int, str], cluster_sizes: dict[int, int]) -> None:
        super().__init__()
        self.duplicates = duplicates
        self.cluster_sizes = cluster_sizes

    def process(self, doc: Document) -> Document | Drop:
        row = doc.meta["row"]
        kept = self.duplicates.get(row)
        if kept is not None:
            return Drop("near_duplicate", f"MinHash cluster of {kept}", duplicate_of=kept)
        doc.cluster_size = self.cluster_sizes.get(row, 1)
        if doc.cluster_size > 1:
            self.counters["clusters"] += 1
        return doc
