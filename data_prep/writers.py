"""Parquet shard writers that never leave a half-written file under its final name."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from countrytune.document import Document, Reject

DOC_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                        ("lang", pa.string()), ("lang_score", pa.float32()),
                        ("lang_second", pa.string()), ("cluster_size", pa.int32())])
REJECT_SCHEMA = pa.schema([("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                           ("id", pa.string()), ("source", pa.string()), ("lang", pa.string()),
                           ("text", pa.string()), ("raw", pa.binary()),
                           ("duplicate_of", pa.string())])


# A row group is also closed once its strings and bytes reach this size: 10,000 rows of 3 KB
# web pages held ~30 MB of Python strings plus their Arrow copy in every writer of a worker.
# Pass one over three 6 MB shards of 3 KB documents peaked at 208, 193 and 191 MB of worker
# RSS with 4, 2 and 1 MB groups.
ROW_GROUP_BYTES = 2 << 20


class ParquetSink:
    """Buffers rows and writes them in row groups to `<path>.tmp`; `commit` renames it.
    A group holds `rows_per_group` rows or ROW_GROUP_BYTES of text, whichever comes first."""

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int = 10_000) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.schema = schema
        self.rows_per_group = rows_per_group
        self.columns: dict[str, list] = {name: [] for name in schema.names}
        self.rows = 0
        self.buffered_bytes = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def add(self, row: dict) -> None:
        for name, values in self.columns.items():
            value = row.get(name)
            values.append(value)
            if isinstance(value, (str, bytes)):
                self.buffered_bytes += len(value)
        self.rows += 1
        if len(self.columns[self.schema.names[0]]) >= self.rows_per_group or \
                self.buffered_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def add_document(self, doc: Document, **extra) -> None:
        self.add({"id": doc.id, "text": doc.text, "source": doc.source, "lang": doc.lang,
                  "lang_score": doc.lang_score, "lang_second": doc.lang_second,
                  "cluster_size": doc.cluster_size, **extra})

    def add_reject(self, reject: Reject) -> None:
        self.add(reject.__dict__)

    def _flush(self) -> None:
        if self.columns[self.schema.names[0]]:
            self.writer.write_table(pa.Table.from_pydict(self.columns, schema=self.schema))
            self.columns = {name: [] for name in self.schema.names}
            self.buffered_bytes = 0

    def commit(self) -> None:
        """Close, read the footer back (the row count must be every row added), sync to disk,
        then rename: a shard marked done after this is whole, also after a power cut."""
        self._flush()
        self.writer.close()
        written = pq.read_metadata(self.tmp).num_rows
        if written != self.rows:
            raise RuntimeError(f"{self.tmp}: {written} rows read back, {self.rows} written")
        with self.tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
