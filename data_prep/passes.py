"""The two passes of a prep job, each one list of steps per shard, and the tasks that run them.

Pass one reads a shard's input and writes what it keeps, with the keys the dedup plan needs,
to _work/pass1/; between the passes the plan is made from every shard's keys; pass two reads
a shard's pass-one output back, drops what the plan marked and writes the shard's final
files. A list starts with a Source and ends with a Sink; between them run keep-or-drop
`Step`s and `DedupKeys` (data_prep.executors has the protocols and `run_shard`, which chains
a list and owns the shard's stats file and completion marker).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa

from countrytune.document import Document, Reject
from countrytune.errors import UserError
from countrytune.hashing import sha256_stream
from countrytune.parquet import row_group_batches
from countrytune.profiles import CountryProfile, load_profile
from data_prep.config import ExactDedupConfig, PrepConfig
from data_prep.dedup import ExactDedup, dedup_key
from data_prep.dedup_plan import read_shard_plan
from data_prep.executors import ShardStep, run_shard
from data_prep.langid import LanguageId
from data_prep.minhash import MinHasher, MinHashParams
from data_prep.near_dedup import NearDedup
from data_prep.normalize import Normalize
from data_prep.pii import PiiRedactor
from data_prep.quality import QualityFilter
from data_prep.readers import DocumentReader
from data_prep.shard_files import ShardFiles
from data_prep.step import ShardContext, StageStats, Step, batched
from data_prep.writers import DOC_SCHEMA, REJECT_SCHEMA, ParquetSink

# Written beside each document in pass one: what DedupKeys attaches and the dedup plan reads.
KEY_FIELDS = (pa.field("dedup_key", pa.binary(16)), pa.field("near_bands", pa.binary()),
              pa.field("near_signature", pa.binary()))
PASS1_SCHEMA = pa.schema([*DOC_SCHEMA, *KEY_FIELDS])
KEY_BATCH = 512  # documents keyed at once: MinHash pools their shingles into numpy blocks
READ_BATCH = 1024  # rows read back at once in pass two: ~3 MB of 3 KB web pages
PROGRESS_BATCH = 512  # documents per progress message: one message each would flood the queue


def pass_one_steps(cfg: PrepConfig, profile: CountryProfile, files: ShardFiles, path: str,
                   span: tuple[int, int] | None) -> list[ShardStep]:
    """Read, normalise, identify the language, filter, redact, key, write to _work/pass1/;
    the filters the run leaves out are left out of the list."""
    filters: dict[str, Callable[[], Step]] = {
        "normalize": lambda: Normalize(profile.normalize),
        "langid": lambda: LanguageId(profile),
        "quality": lambda: QualityFilter(profile),
        "pii": lambda: PiiRedactor(profile.pii),
    }
    hasher = MinHasher(MinHashParams(**cfg.near_dedup.model_dump(exclude={"verify_threshold"}))) \
        if "near_dedup" in cfg.stages else None
    return [
        InputReader(path, span, DocumentReader(cfg.reader, cfg.reader.default_lang or profile.main_language)),
        *[filters[name]() for name in cfg.stages_for(profile) if name in filters],
        DedupKeys(cfg.dedup, hasher, profile),
        Pass1Writer(files, cfg.rows_per_row_group),
    ]


def pass_two_steps(cfg: PrepConfig, files: ShardFiles) -> list[ShardStep]:
    """Read pass one's output back, drop the duplicates the plan marked, write the shard."""
    duplicates, near_drops, cluster_sizes = read_shard_plan(files.plan) if files.plan.exists() else ({}, {}, {})
    dedups: dict[str, Callable[[], Step]] = {
        "dedup": lambda: ExactDedup(duplicates),
        "near_dedup": lambda: NearDedup(near_drops, cluster_sizes),
    }
    return [
        Pass1Reader(files),
        *[dedups[name]() for name in cfg.stages if name in dedups],
        ShardWriter(files.data, files.rejects, cfg.rows_per_row_group),
    ]


def pass_one_shard(index: int, path: str, span: tuple[int, int] | None, cfg_data: dict,
                   progress: Any) -> None:
    """Pass one over shard `index` (`path`, or byte range `span` of it), in a worker."""
    started = time.process_time()
    cfg = PrepConfig.model_validate(cfg_data)
    profile = load_profile(cfg.country)
    files = ShardFiles(Path(cfg.output), index)
    steps = pass_one_steps(cfg, profile, files, path, span)
    run_shard(steps, files.pass1_done, files.pass1_stats, progress, started=started,
              spent={"setup (config, models)": time.process_time() - started})


def pass_two_shard(index: int, cfg_data: dict, progress: Any) -> None:
    """Pass two over shard `index`, in a worker."""
    started = time.process_time()
    cfg = PrepConfig.model_validate(cfg_data)
    files = ShardFiles(Path(cfg.output), index)
    run_shard(pass_two_steps(cfg, files), files.done, files.stats, progress, started=started)


def input_state(path: str) -> dict[str, Any]:
    """Size and modification time of an input: cheap to take again on every resume."""
    fs, _, (p,) = fsspec.core.get_fs_token_paths(path)
    info = fs.info(p)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("last_modified")
    return {"bytes": info.get("size"), "mtime": str(mtime) if mtime is not None else None}


def check_inputs_unchanged(plan: list, shards: list[ShardFiles]) -> None:
    """A finished shard read its input as it was then: an input changed since (documents
    appended to a file) would be silently missing from a resumed run, so it is refused."""
    checked: dict[str, dict] = {}
    for (path, _span), files in zip(plan, shards):
        if not files.pass1_done.exists():
            continue
        recorded = json.loads(files.pass1_stats.read_text(encoding="utf-8")).get("input_state")
        now = checked.setdefault(path, input_state(path))
        if recorded is not None and recorded != now:
            raise UserError(f"input {path} changed after prep processed it (size {recorded['bytes']:,} -> "
                            f"{now['bytes']:,} bytes, modified {recorded['mtime']} -> {now['mtime']}); "
                            f"the output would miss the change: rerun with --overwrite to prepare it again")


class InputReader:
    """Source of pass one: the documents of an input file, or of byte range `span` of it."""

    def __init__(self, path: str, span: tuple[int, int] | None, reader: DocumentReader) -> None:
        self.path = path
        self.span = span
        self.reader = reader
        self.state: dict[str, Any] | None = None

    def read(self, ctx: ShardContext) -> Iterator[Document]:
        self.state = input_state(self.path)
        yield from self.reader.read(self.path, ctx, self.span)

    def input_record(self) -> dict[str, Any]:
        if input_state(self.path) != self.state:
            raise UserError(f"input {self.path} changed while prep read it; rerun once it is complete")
        # A split file's digest is taken once, by the shard holding its first byte.
        digest = _file_digest(self.path) if self.span is None or self.span[0] == 0 else None
        return {"input": digest, "input_state": self.state}


def _file_digest(path: str) -> dict[str, Any]:
    with fsspec.open(path, "rb") as f:
        digest, size = sha256_stream(f)
    return {"path": path, "sha256": digest, "bytes": size}


class DedupKeys:
    """Attaches to each document, in `meta`, its exact-dedup key and, with near dedup on, its
    MinHash signature and LSH band hashes: what the dedup plan between the passes reads."""

    name = "keys (exact, MinHash)"

    def __init__(self, exact: ExactDedupConfig, hasher: MinHasher | None, profile: CountryProfile) -> None:
        self.exact = exact
        self.hasher = hasher
        self.profile = profile  # shingles are word n-grams of each document's language

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        for batch in batched(docs, KEY_BATCH):
            started = time.process_time()
            signatures = self.hasher.signatures([doc.text for doc in batch],
                                                [self.profile.words_of(doc.lang) for doc in batch]) \
                if self.hasher else None
            bands = self.hasher.band_hashes(signatures) if self.hasher else None
            keys = [dedup_key(doc.text, self.exact) for doc in batch]
            ctx.cpu_seconds[self.name] += time.process_time() - started
            for i, doc in enumerate(batch):
                doc.meta.update(dedup_key=keys[i],
                                near_bands=bands[i].tobytes() if bands is not None else None,
                                near_signature=signatures[i].tobytes() if signatures is not None else None)
                yield doc


class ShardWriter:
    """Sink: kept documents to `docs`, rejects to `rejects`, under temporary names until
    `commit` has read both back and synced them to disk."""

    def __init__(self, docs: Path, rejects: Path, rows_per_group: int, schema: pa.Schema = DOC_SCHEMA) -> None:
        self.rejects = ParquetSink(rejects, REJECT_SCHEMA, rows_per_group)
        self.kept = ParquetSink(docs, schema, rows_per_group)

    def reject(self, reject: Reject) -> None:
        self.rejects.add_reject(reject)

    def write(self, docs: Iterable[Document], ctx: ShardContext) -> None:
        for doc in docs:
            self.kept.add_document(doc)

    def commit(self) -> None:
        self.kept.commit()
        self.rejects.commit()


class Pass1Writer(ShardWriter):
    """Sink of pass one: documents with the keys `DedupKeys` attached, to _work/pass1/. The
    progress bar counts documents here, once: pass two writes the same ones again."""

    def __init__(self, files: ShardFiles, rows_per_group: int) -> None:
        super().__init__(files.pass1_docs, files.pass1_rejects, rows_per_group, PASS1_SCHEMA)

    def write(self, docs: Iterable[Document], ctx: ShardContext) -> None:
        written = 0
        for doc in docs:
            self.kept.add_document(doc, **{key.name: doc.meta[key.name] for key in KEY_FIELDS})
            written += 1
            if ctx.progress and written % PROGRESS_BATCH == 0:
                ctx.progress(PROGRESS_BATCH)
        if ctx.progress and written % PROGRESS_BATCH:
            ctx.progress(written % PROGRESS_BATCH)


class Pass1Reader:
    """Source of pass two: what pass one left of the shard. Its counts and rejects go on from
    there (the shard's final stats and rejects file hold both passes); its documents come
    READ_BATCH rows at a time, each with its row number in `meta["row"]`, which the plan names."""

    def __init__(self, files: ShardFiles) -> None:
        self.files = files
        self.pass1 = json.loads(files.pass1_stats.read_text(encoding="utf-8"))

    def read(self, ctx: ShardContext) -> Iterator[Document]:
        for name, counts in self.pass1["stages"].items():
            ctx.stage(name).merge(StageStats.from_dict(counts))
        for batch in row_group_batches(self.files.pass1_rejects, READ_BATCH):
            for row in batch.to_pylist():
                ctx.reject(Reject(**row))
        yield from _pass1_documents(self.files.pass1_docs)

    def input_record(self) -> dict[str, Any]:
        return {"input": self.pass1["input"]}


def _pass1_documents(path: Path) -> Iterator[Document]:
    """A shard's pass-one documents in order, READ_BATCH rows at a time. Read whole and
    turned into Python rows, 6 MB shards of 3 KB documents took pass-two workers to 280 MB
    (240 MB so); a 128 MB shard would have taken them past a GB."""
    row = 0
    for batch in row_group_batches(path, READ_BATCH, columns=DOC_SCHEMA.names):
        for values in batch.to_pylist():
            yield Document(**values, meta={"row": row})
            row += 1
