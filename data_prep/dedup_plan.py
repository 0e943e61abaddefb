"""The dedup plan between the passes, with memory that does not grow with the corpus.

Pass one leaves, per shard, each kept document's 128-bit exact-dedup key, its LSH band
hashes and its MinHash signature (`_work/pass1/part-N.parquet`). Held whole, a national
crawl's keys and bands are tens of GB, so the plan streams them instead:

1. Keys are read shard by shard and spilled to disk in hash partitions of at most
   PARTITION_RECORDS records, each record tagged with its document's place in input order.
   One partition at a time is sorted; in each run of equal keys every document but the
   first is an exact duplicate of the first.
2. Band hashes of documents exact dedup keeps are spilled the same way, keyed by (band,
   hash); sorting a partition puts each LSH bucket together, and each member is joined to
   the bucket's first document (FineWeb's and `minhash.find_clusters`' edges).
3. Only documents in some bucket of two or more are looked at again: their signatures
   verify each edge, and connected components name each cluster by its first document.
4. Ids of the documents kept are read back by shard, and each shard's plan ({row: kept id}
   per stage, {row: cluster size}) is written to `_work/plan/part-N.json` for pass two.
   (JSON, not Parquet: building an Arrow array from Python objects makes pyarrow import
   pandas and pyarrow.compute, 54 MB more RSS in a process that needs neither.)

What stays in memory grows with the number of duplicates and candidates (16-40 bytes
each, plus the kept ids), not with the number of documents; a partition is bounded by
PARTITION_RECORDS. The result is the one `dedup.plan_duplicates` and
`near_dedup.plan_near_duplicates` give on the same rows (tests/test_dedup_plan.py).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from countrytune.atomic import atomic_write
from countrytune.parquet import row_group_batches
from data_prep.minhash import connect_verified_edges

# Records per spill partition: 2^19 x 24 bytes = 12.6 MB, ~40 MB with the sort's temporaries,
# while the workers of the pool sit idle with what they hold.
PARTITION_RECORDS = 1 << 19
# Open spill files at most: past 512 x 2^19 records (19M documents' 14 bands) partitions grow
# instead, ~13 MB more for every 19M documents, rather than run into the open-file limit.
MAX_PARTITIONS = 512
READ_ROWS = 16_384  # rows of one column read back at once: 7 MB of 448-byte signatures
_KEY = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("g", "<i8")])
_BAND = np.dtype([("band", "<u8"), ("hash", "<u8"), ("g", "<i8")])


def _partitions(records: int) -> int:
    return min(MAX_PARTITIONS, max(1, math.ceil(records / PARTITION_RECORDS)))


class _Spill:
    """Records appended to one of `parts` files by a hash, read back one file at a time."""

    def __init__(self, folder: Path, name: str, parts: int, dtype: np.dtype) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = [folder / f"{name}-{i:05d}.bin" for i in range(parts)]
        self.files = [p.open("wb") for p in self.paths]
        self.dtype = dtype

    def add(self, records: np.ndarray, by: np.ndarray) -> None:
        part = by % np.uint64(len(self.files))
        order = np.argsort(part, kind="stable")
        cuts = np.searchsorted(part[order], np.arange(len(self.files) + 1, dtype=np.uint64))
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            if b > a:
                records[order[a:b]].tofile(self.files[i])

    def partitions(self):
        for f in self.files:
            f.close()
        for path in self.paths:
            yield np.fromfile(path, dtype=self.dtype)
            path.unlink()


def _column_batches(path: Path, column: str):
    for batch in row_group_batches(path, READ_ROWS, columns=[column]):
        yield batch.column(0)


def _binary_rows(array: pa.Array, dtype: str) -> np.ndarray:
    """(len(array), n) view of a binary column whose values all have the same length, each
    value read as n numbers of `dtype`; straight from Arrow's buffers, no Python objects."""
    if pa.types.is_fixed_size_binary(array.type):
        width = array.type.byte_width
        data = np.frombuffer(array.buffers()[1], np.uint8)[array.offset * width:(array.offset + len(array)) * width]
    else:
        offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset:array.offset + len(array) + 1]
        data = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
        if len(array) and (np.diff(offsets) != len(data) // len(array)).any():
            raise ValueError("values of unequal length")
    return data.view(dtype).reshape(len(array), -1)


def _take(path: Path, column: str, rows: np.ndarray, dtype: str | None = None) -> list | np.ndarray:
    """Values of `column` at sorted `rows` of one shard, read batch by batch: a list, or with
    `dtype` an array as `_binary_rows` reads them. (Not Array.take: it loads pyarrow.compute,
    56 MB more RSS in a process that never needed it.)"""
    out, start = [], 0
    for array in _column_batches(path, column):
        stop = start + len(array)
        lo, hi = np.searchsorted(rows, [start, stop])
        if hi > lo:
            picked = rows[lo:hi] - start
            if dtype:
                out.append(_binary_rows(array, dtype)[picked])
            else:
                values = array.to_pylist()
                out += [values[i] for i in picked]
        start = stop
    return np.concatenate(out) if dtype else out


def plan_dedup(pass1: list[Path], plan_dir: Path, *, exact: bool, near: bool, bands: int,
               threshold: float | None) -> list[Path]:
    """Write each shard's plan; returns the plan paths, in shard order."""
    plan_dir.mkdir(parents=True, exist_ok=True)  # also when no document reached dedup
    counts = [pq.ParquetFile(p).metadata.num_rows for p in pass1]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    spill = plan_dir / "spill"
    shutil.rmtree(spill, ignore_errors=True)
    empty = np.empty(0, dtype=np.int64)
    dup, dup_of = (_exact_duplicates(pass1, offsets, spill) if exact and total else (empty, empty))
    near_dup, near_rep, rep, size = empty, empty, empty, empty
    if near and total:
        near_dup, near_rep, rep, size = _near_duplicates(pass1, offsets, spill, dup, bands, threshold)
    if len(near_dup):
        # An exact copy names the document finally kept, even when its own original fell to
        # near dedup.
        where = np.minimum(np.searchsorted(near_dup, dup_of), len(near_dup) - 1)
        dup_of = np.where(near_dup[where] == dup_of, near_rep[where], dup_of)
    shutil.rmtree(spill, ignore_errors=True)
    ids = _ids_of(pass1, offsets, np.unique(np.concatenate([dup_of, near_rep])))
    paths = []
    for s, path in enumerate(pass1):
        lo, hi = offsets[s], offsets[s + 1]
        plan: dict[str, dict[int, str | int]] = {}
        for stage, g, other in (("dedup", dup, dup_of), ("near_dedup", near_dup, near_rep)):
            a, b = np.searchsorted(g, [lo, hi])
            plan[stage] = {row: ids[kept] for row, kept in zip((g[a:b] - lo).tolist(), other[a:b].tolist())}
        a, b = np.searchsorted(rep, [lo, hi])
        plan["cluster_sizes"] = dict(zip((rep[a:b] - lo).tolist(), size[a:b].tolist()))
        out = plan_dir / f"{path.stem}.json"
        atomic_write(out, json.dumps(plan, ensure_ascii=False))
        paths.append(out)
    return paths


def read_shard_plan(path: Path) -> tuple[dict[int, str], dict[int, str], dict[int, int]]:
    """(exact drops {row: kept id}, near drops {row: kept id}, kept clusters {row: size})."""
    plan = json.loads(path.read_text(encoding="utf-8"))
    return tuple({int(row): value for row, value in plan[part].items()}  # type: ignore[return-value]
                 for part in ("dedup", "near_dedup", "cluster_sizes"))


def _exact_duplicates(pass1: list[Path], offsets: np.ndarray, spill: Path) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate, first document with its key), both as places in input order, sorted by duplicate."""
    keys = _Spill(spill, "keys", _partitions(int(offsets[-1])), _KEY)
    for s, path in enumerate(pass1):
        g = int(offsets[s])
        for array in _column_batches(path, "dedup_key"):
            halves = _binary_rows(array, "<u8")
            records = np.empty(len(array), dtype=_KEY)
            records["hi"], records["lo"] = halves[:, 0], halves[:, 1]
            records["g"] = np.arange(g, g + len(array))
            keys.add(records, records["lo"])
            g += len(array)
    first, dup = _repeats(keys, ("hi", "lo"))
    order = np.argsort(dup)
    return dup[order], first[order]


def _repeats(spill: _Spill, key: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Every record whose `key` (two fields) an earlier record in input order also has, over
    all partitions of `spill` (equal keys share a partition): (the first record's place, its
    place), in no particular order."""
    firsts, repeats = [], []
    for part in spill.partitions():
        part = part[np.lexsort((part["g"], part[key[1]], part[key[0]]))]
        same = (part[key[0]][1:] == part[key[0]][:-1]) & (part[key[1]][1:] == part[key[1]][:-1])
        starts = np.flatnonzero(np.r_[True, ~same])
        first = part["g"][starts[np.searchsorted(starts, np.arange(len(part)), side="right") - 1]]
        repeat = np.r_[False, same]
        firsts.append(first[repeat])
        repeats.append(part["g"][repeat])
    return np.concatenate(firsts), np.concatenate(repeats)


def _near_duplicates(pass1: list[Path], offsets: np.ndarray, spill: Path, exact_dups: np.ndarray,
                     bands: int, threshold: float | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(near duplicate, its cluster's first document) sorted by duplicate, and (first document,
    cluster size) of clusters of two or more, sorted; exact duplicates take no part."""
    records_total = (int(offsets[-1]) - len(exact_dups)) * bands
    buckets = _Spill(spill, "bands", _partitions(records_total), _BAND)
    for s, path in enumerate(pass1):
        g = int(offsets[s])
        for array in _column_batches(path, "near_bands"):
            hashes = _binary_rows(array, "<u8")
            places = np.arange(g, g + len(array))
            keep = np.ones(len(array), dtype=bool)
            a, b = np.searchsorted(exact_dups, [g, g + len(array)])
            keep[exact_dups[a:b] - g] = False
            records = np.empty((int(keep.sum()), bands), dtype=_BAND)
            records["band"] = np.arange(bands, dtype=np.uint64)
            records["hash"] = hashes[keep]
            records["g"] = places[keep][:, None]
            records = records.ravel()
            buckets.add(records, records["hash"])
            g += len(array)
    first, member = _repeats(buckets, ("band", "hash"))
    empty = np.empty(0, dtype=np.int64)
    if not len(first):
        return empty, empty, empty, empty
    pairs = np.unique(np.stack([first, member], axis=1), axis=0)
    candidates = np.unique(pairs)  # sorted places in input order: index order is input order
    a, b = np.searchsorted(candidates, pairs[:, 0]), np.searchsorted(candidates, pairs[:, 1])
    signatures = _signatures_of(pass1, offsets, candidates) if threshold is not None else None
    smallest = connect_verified_edges(len(candidates), a, b, signatures, threshold)
    size = np.bincount(smallest, minlength=len(candidates))
    dropped = smallest != np.arange(len(candidates))
    in_cluster = np.flatnonzero((size > 1) & ~dropped)
    return (candidates[dropped], candidates[smallest[dropped]],
            candidates[in_cluster], size[in_cluster].astype(np.int64))


def _shard_rows(offsets: np.ndarray, places: np.ndarray):
    """(shard, sorted rows within it, slice of `places`) for each shard holding some of `places`."""
    bounds = np.searchsorted(places, offsets)
    for s in range(len(offsets) - 1):
        a, b = bounds[s], bounds[s + 1]
        if b > a:
            yield s, places[a:b] - offsets[s], slice(a, b)


def _signatures_of(pass1: list[Path], offsets: np.ndarray, places: np.ndarray) -> np.ndarray:
    parts = [_take(pass1[s], "near_signature", rows, "<u4") for s, rows, _ in _shard_rows(offsets, places)]
    return np.concatenate(parts)


def _ids_of(pass1: list[Path], offsets: np.ndarray, places: np.ndarray) -> dict[int, str]:
    ids: dict[int, str] = {}
    for s, rows, where in _shard_rows(offsets, places):
        ids.update(zip(places[where].tolist(), _take(pass1[s], "id", rows)))
    return ids
