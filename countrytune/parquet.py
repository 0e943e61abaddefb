"""Reading Parquet files in bounded memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def row_group_batches(source: Any, batch_size: int, columns: list[str] | None = None,
                      use_threads: bool = True) -> Iterator[pa.RecordBatch]:
    """The record batches of a Parquet file (a path, a file object or a `pq.ParquetFile`),
    one row group at a time. A single `iter_batches` over a whole file keeps memory that
    grows with the file: reading a 62 MB prep shard of 34 row groups that way took a process
    from 72 to 116 MB of RSS, row group by row group to 86. Memory is still bounded by the
    largest row group, since Parquet is read a column chunk at a time."""
    pf = source if isinstance(source, pq.ParquetFile) else pq.ParquetFile(source)
    for group in range(pf.metadata.num_row_groups):
        yield from pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns,
                                   use_threads=use_threads)
