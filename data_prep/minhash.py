"""Near-duplicate detection with MinHash signatures and LSH banding, vectorised with numpy.

It runs in two phases because of what each needs. A signature needs one document, so shard
workers compute `MinHasher.signatures` and `MinHasher.band_hashes` for their rows. Clustering
needs every document's band hashes, so the main process groups all shards' rows by band hash
(`find_clusters` in memory; `data_prep.dedup_plan` through disk partitions, then
`connect_verified_edges`), in input order; each row's cluster is named by its smallest row,
so the answer does not depend on how shards were spread over workers.

Hash family. Each shingle's UTF-8 is hashed once with xxh3_64 and cut to a 32-bit key x;
permutation i maps it to ((a_i * x + b_i) mod 2^64) >> 32, Dietzfelbinger's multiply-add-shift
scheme, strongly universal for 32-bit keys with 64-bit a and b. The wrap-around of uint64
multiplication is the "mod 2^64", not an overflow bug. We chose it over the classic
(a * x + b) mod p because it needs no division: on 2,000 x 112 blocks it took 1.8 ns per value
against 3.9 ns for mod (2^32 - 5), and mod 2^61 - 1 is slower still, as the product of a 61-bit
a and x overflows uint64 and must be split into 32-bit halves.
Values are 32-bit, so signatures are uint32 (448 bytes per document at 112 hashes): two
different shingles give the same value with probability 2^-32, far below the ~0.05 sampling
error of a 112-hash estimate.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

# Shingle rows permuted per numpy block: 4,096 x 112 uint64 is 3.7 MB, near cache size. On
# 100-word documents the permute-and-min step took 47, 30 and 45 us per document with blocks
# of 1,024 (numpy's per-call cost shows), 4,096 and 16,384 rows (memory bound).
_BLOCK_ROWS = 4096
# Documents per block when hashing bands: 16,384 x 112 x 8 bytes = 15 MB of uint64 copies.
_BAND_ROWS = 16384
# Candidate pairs compared per block when verifying: 65,536 x 112 x 4 bytes x 2 = 59 MB.
_VERIFY_PAIRS = 65536
_KEY_MASK = np.uint64(0xFFFFFFFF)
_EMPTY = np.uint32(0xFFFFFFFF)  # signature value of a document without words


@dataclass(frozen=True)
class MinHashParams:
    """MinHash and LSH settings; FineWeb-2's values by default."""

    ngram_size: int = 5
    """Words per shingle. Five words are rarely shared by chance but survive small edits."""
    bands: int = 14
    """LSH bands. With 8 rows a pair becomes a candidate with probability 1-(1-J^8)^14:
    0.92 at Jaccard 0.8, 0.57 at 0.7, 0.05 at 0.5; the midpoint is (1/14)^(1/8) = 0.72."""
    rows: int = 8
    """Signature values per band."""
    seed: int = 1
    """Seeds the permutations and band weights; only signatures of the same seed compare."""

    def __post_init__(self) -> None:
        if min(self.ngram_size, self.bands, self.rows) < 1:
            raise ValueError(f"ngram_size, bands and rows must be >= 1: {self}")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


def words(text: str, split: Callable[[str], list[str]] = str.split) -> list[str]:
    """Case-folded words (by the language's splitter, countrytune/words.py) with Unicode
    punctuation (categories P*) stripped from their edges.

    Inner punctuation stays (`don't`, `3.5`, `ber-main`), so do symbols and combining marks.
    Most tokens start and end with a letter or digit and skip the per-character check.
    """
    tokens = [token if token[0].isalnum() and token[-1].isalnum() else _strip_punctuation(token)
              for token in split(text.casefold())]
    return [token for token in tokens if token] if "" in tokens else tokens


def _strip_punctuation(token: str) -> str:
    start, end = 0, len(token)
    while start < end and unicodedata.category(token[start])[0] == "P":
        start += 1
    while end > start and unicodedata.category(token[end - 1])[0] == "P":
        end -= 1
    return token[start:end]


def shingles(text: str, ngram_size: int, split: Callable[[str], list[str]] = str.split) -> list[str]:
    """Word n-grams joined by spaces; a text shorter than n words is one shingle of all its words."""
    w = words(text, split)
    if len(w) <= ngram_size:
        return [" ".join(w)] if w else []
    return list(map(" ".join, zip(*(w[i:] for i in range(ngram_size)), strict=False)))


def jaccard(text_a: str, text_b: str, ngram_size: int = 5, split: Callable[[str], list[str]] = str.split) -> float:
    """Exact Jaccard similarity of the two texts' shingle sets; 1.0 for two texts without words."""
    a, b = set(shingles(text_a, ngram_size, split)), set(shingles(text_b, ngram_size, split))
    return len(a & b) / len(a | b) if a | b else 1.0


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """MinHash estimate of Jaccard similarity: the fraction of equal signature values."""
    return float(np.mean(sig_a == sig_b))


def _stable_uint64s(seed: int, salt: bytes, count: int) -> np.ndarray:
    """Random-looking constants from xxhash, the same in every numpy version and process."""
    return np.array([xxhash.xxh3_64_intdigest(salt + i.to_bytes(4, "little"), seed)
                     for i in range(count)], dtype=np.uint64)


class MinHasher:
    """Computes MinHash signatures and LSH band hashes for one set of parameters."""

    def __init__(self, params: MinHashParams = MinHashParams()) -> None:
        self.params = params
        self._a = _stable_uint64s(params.seed, b"a", params.num_perm)
        self._b = _stable_uint64s(params.seed, b"b", params.num_perm)
        self._band_weights = _stable_uint64s(params.seed, b"band", params.rows)

    def shingle_keys(self, text: str, split: Callable[[str], list[str]] = str.split) -> np.ndarray:
        """32-bit keys (in uint64) of the text's shingles, one unseeded xxh3_64 per shingle.

        The seed enters through the permutations only, which lets `map` call xxhash directly.
        """
        found = shingles(text, self.params.ngram_size, split)
        keys = np.fromiter(map(xxhash.xxh3_64_intdigest, map(str.encode, found)),
                           dtype=np.uint64, count=len(found))
        return keys & _KEY_MASK

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint32 signature; all 0xFFFFFFFF for a text without words."""
        return self.signatures([text])[0]

    def signatures(self, texts: Sequence[str],
                   splits: Sequence[Callable[[str], list[str]]] | None = None) -> np.ndarray:
        """(len(texts), num_perm) uint32 signatures, computed over blocks of many documents;
        `splits`: each text's word splitter (its language's), default white space.

        Small documents are pooled so numpy's per-call cost is paid per block, not per document,
        and a long document is cut over several blocks so memory stays bounded.
        """
        out = np.full((len(texts), self.params.num_perm), _EMPTY, dtype=np.uint32)
        pending_keys: list[np.ndarray] = []
        pending_rows: list[int] = []
        pooled = 0
        for row, text in enumerate(texts):
            keys = self.shingle_keys(text, splits[row] if splits is not None else str.split)
            if len(keys):
                pending_keys.append(keys)
                pending_rows.append(row)
                pooled += len(keys)
            if pooled >= _BLOCK_ROWS:
                self._fill(out, pending_keys, pending_rows)
                pending_keys, pending_rows, pooled = [], [], 0
        if pending_keys:
            self._fill(out, pending_keys, pending_rows)
        return out

    def _fill(self, out: np.ndarray, keys: list[np.ndarray], rows: list[int]) -> None:
        """Writes into `out` the minima over permuted keys of the documents at `rows`."""
        all_keys = np.concatenate(keys)
        row_of_key = np.repeat(np.asarray(rows), [len(k) for k in keys])
        for start in range(0, len(all_keys), _BLOCK_ROWS):
            block = all_keys[start:start + _BLOCK_ROWS]
            block_rows = row_of_key[start:start + _BLOCK_ROWS]
            permuted = np.multiply(block[:, None], self._a)  # (keys, num_perm), wraps mod 2^64
            permuted += self._b
            firsts = np.flatnonzero(np.diff(block_rows, prepend=-1))
            # min(v) >> 32 == min(v >> 32), so shifting the minima saves a pass over the block.
            minima = (np.minimum.reduceat(permuted, firsts, axis=0) >> np.uint64(32)).astype(np.uint32)
            doc_rows = block_rows[firsts]
            # A document cut by a block boundary takes the smaller of its two parts' minima.
            out[doc_rows] = np.minimum(out[doc_rows], minima)

    def band_hashes(self, signatures: np.ndarray) -> np.ndarray:
        """(N, bands) uint64: one hash of the `rows` values of each band.

        A weighted sum with random 64-bit weights, wrapping mod 2^64: two different bands of
        random values collide with probability about 2^-64, so bucket-mates share the band.
        Done as an integer matmul over row blocks: 0.27 s for 1e6 rows, against 5.9 s for one
        broadcast multiply and sum over all rows (which also needs 2 GB of temporaries).
        """
        p = self.params
        if signatures.ndim != 2 or signatures.shape[1] != p.num_perm:
            raise ValueError(f"signatures of shape {signatures.shape}, expected (N, {p.num_perm})")
        out = np.empty((len(signatures), p.bands), dtype=np.uint64)
        for start in range(0, len(signatures), _BAND_ROWS):
            block = signatures[start:start + _BAND_ROWS].reshape(-1, p.bands, p.rows).astype(np.uint64)
            out[start:start + _BAND_ROWS] = block @ self._band_weights
        return out


def find_clusters(band_hashes: np.ndarray, signatures: np.ndarray | None = None,
                  threshold: float | None = None) -> np.ndarray:
    """For each row, the smallest row of its cluster (itself when it has no near-duplicate).

    Rows sharing a band hash are candidates; in each bucket every member is joined to the
    bucket's smallest row, which links the bucket with one edge per member instead of all
    pairs. With `threshold`, an edge is kept only if the signatures' estimated Jaccard is at
    least `threshold`, which removes LSH false positives. Clusters are connected components.
    """
    if threshold is not None and (signatures is None or len(signatures) != len(band_hashes)):
        raise ValueError("threshold needs the signatures of the same rows to verify candidate pairs")
    first, member = _bucket_edges(band_hashes)
    return connect_verified_edges(len(band_hashes), first, member, signatures, threshold)


def connect_verified_edges(n: int, first: np.ndarray, member: np.ndarray,
                           signatures: np.ndarray | None, threshold: float | None) -> np.ndarray:
    """For each of n rows, the smallest row of its connected component over the edges
    (first[i], member[i]) whose estimated Jaccard reaches `threshold` (all edges without one)."""
    if threshold is not None:
        keep = _estimated_jaccards(signatures, first, member) >= threshold
        first, member = first[keep], member[keep]
    return _smallest_row_of_component(n, first, member)


def cluster_sizes(representatives: np.ndarray) -> np.ndarray:
    """For each row, the number of rows in its cluster (1 for a row without near-duplicates)."""
    return np.bincount(representatives, minlength=len(representatives))[representatives]


def _bucket_edges(band_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (bucket's smallest row, other member) pairs over all bands, by sorting each band."""
    n = len(band_hashes)
    pair_keys = []
    for column in np.ascontiguousarray(band_hashes.T):
        order = np.argsort(column, kind="stable")  # stable: a bucket's first entry is its smallest row
        ordered = column[order]
        starts_bucket = np.ones(n, dtype=bool)
        starts_bucket[1:] = ordered[1:] != ordered[:-1]
        bucket_start = np.maximum.accumulate(np.where(starts_bucket, np.arange(n), 0))
        members = ~starts_bucket
        pair_keys.append(order[bucket_start[members]] * n + order[members])
    unique = np.unique(np.concatenate(pair_keys))
    return unique // max(n, 1), unique % max(n, 1)


def _estimated_jaccards(signatures: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of each pair (a[i], b[i]), in blocks to bound memory."""
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), _VERIFY_PAIRS):
        stop = start + _VERIFY_PAIRS
        out[start:stop] = (signatures[a[start:stop]] == signatures[b[start:stop]]).mean(axis=1)
    return out


def _smallest_row_of_component(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components by hooking and pointer jumping, vectorised over all edges.

    Every row points at a row no larger than itself in its component; each round hooks the
    larger of an edge's two roots under the smaller, then jumps pointers until every row
    points at a root. When no edge joins two roots, each root is its component's smallest row.
    """
    labels = np.arange(n)
    while True:
        label_a, label_b = labels[a], labels[b]
        apart = label_a != label_b
        if not apart.any():
            return labels
        a, b, label_a, label_b = a[apart], b[apart], label_a[apart], label_b[apart]
        np.minimum.at(labels, np.maximum(label_a, label_b), np.minimum(label_a, label_b))
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
