"""Records of input files (JSONL, Parquet, plain text, CSV; local or fsspec URLs), read by the
rules every stage that reads text follows: prep's readers (data_prep/readers.py turns these
records into documents), sft-data's labelled files and eval's held-out sets.

A reader never stops on a bad record: bad UTF-8, a broken JSON line, a missing text field,
NUL bytes, an absurdly long line each become a `Drop` carrying the reason, with the raw bytes
(up to `raw_keep_bytes`) for the reject, and reading goes on with the next record.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal

import fsspec

from pydantic import Field

from countrytune.document import Drop
from countrytune.errors import UserError
from countrytune.schema import Schema

COMPRESSIONS = (".gz", ".zst")
FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
                    ".txt": "text", ".text": "text", ".csv": "csv", ".tsv": "csv"}


class ReaderConfig(Schema):
    """How input files become documents."""

    format: Literal["auto", "jsonl", "parquet", "text", "csv"] = "auto"
    """Input format; `auto` goes by the file name (.jsonl/.json/.ndjson, .parquet, .txt, .csv/.tsv,
    each optionally .gz or .zst)."""
    text_field: str = "text"
    """Field (JSONL, Parquet) or column (CSV) holding the text."""
    id_field: str = "id"
    """Field holding the document id; missing ids become `<file name>:<record number>`."""
    lang_field: str = "lang"
    """Field holding an ISO 639-3 language code; missing: `default_lang`."""
    default_lang: str | None = None
    """Language of documents that carry none (e.g. a folder known to be Javanese); default:
    the profile's main language."""
    text_unit: Literal["line", "paragraph", "file"] = "line"
    """For plain text: one document per line, per blank-line-separated paragraph, or per file."""
    csv_delimiter: str | None = None
    """CSV delimiter; default `,` (tab for .tsv)."""
    max_record_bytes: int = Field(default=1_000_000, gt=0)
    """Records longer than this (bytes) are rejected as absurdly long, without being parsed."""
    raw_keep_bytes: int = Field(default=65_536, gt=0)
    """How many bytes of an unreadable record its reject keeps."""


def strip_compression(path: str) -> str:
    for ext in COMPRESSIONS:
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def detect_format(path: str, configured: str = "auto") -> str:
    if configured != "auto":
        return configured
    suffix = os.path.splitext(strip_compression(path))[1].lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise UserError(f"{path}: cannot tell the format from the name; name it with one of "
                        f"{sorted(FORMAT_BY_SUFFIX)} (optionally + .gz/.zst) or set reader.format")
    return FORMAT_BY_SUFFIX[suffix]


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files named by `inputs` (files, folders searched recursively, globs), sorted, unique."""
    if not inputs:
        raise UserError("no input given: pass --input PATH (a file, a folder or a glob)")
    files: list[str] = []
    for spec in inputs:
        fs, _, paths = fsspec.core.get_fs_token_paths(spec)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        found: list[str] = []
        for p in paths:
            if fs.isdir(p):
                found += [f for f in fs.find(p) if _known(f)]
            elif fs.exists(p):
                found.append(p)
        if not found:
            raise UserError(f"input {spec!r} matches no readable file")
        files += [p if protocol in ("file", "local") else fs.unstrip_protocol(p) for p in found]
    return sorted(set(files))


def _known(path: str) -> bool:
    return os.path.splitext(strip_compression(path))[1].lower() in FORMAT_BY_SUFFIX


@contextlib.contextmanager
def open_binary(path: str) -> Iterator[BinaryIO]:
    """Open a local path or URL for reading bytes, decompressing .gz and .zst by name."""
    with fsspec.open(path, "rb") as raw:
        if path.endswith(".gz"):
            yield gzip.GzipFile(fileobj=raw)
        elif path.endswith(".zst"):
            import zstandard

            # BufferedReader gives the zstd stream the readline() the line readers need.
            yield io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
        else:
            yield raw


class RecordReader:
    """Reads one input file's records (`records`) and their text (`text_of`)."""

    def __init__(self, cfg: ReaderConfig, default_lang: str) -> None:
        self.cfg = cfg
        self.default_lang = default_lang

    def splittable(self, path: str) -> bool:
        """Whether byte ranges of this file can be read on their own: one record per line, or
        Parquet (whose row groups are read on their own)."""
        fmt = detect_format(path, self.cfg.format)
        return strip_compression(path) == path and (
            fmt in ("jsonl", "parquet") or fmt == "text" and self.cfg.text_unit == "line")

    def spans(self, path: str, size: int, shard_bytes: int) -> list[tuple[int, int]]:
        """Byte ranges of about `shard_bytes` covering a splittable file of `size` bytes. A line
        belongs to the range it starts in; a Parquet row group to the range its first page
        starts in, so ranges end where row groups begin and none is empty."""
        if detect_format(path, self.cfg.format) != "parquet":
            bounds = list(range(0, size, shard_bytes)) + [size]
            return list(zip(bounds, bounds[1:]))
        bounds = [0]
        for start in _row_group_starts(path)[1:]:
            if start - bounds[-1] >= shard_bytes:
                bounds.append(start)
        return list(zip(bounds, bounds[1:] + [size]))

    def records(self, path: str, span: tuple[int, int] | None = None
                ) -> Iterator[tuple[int, dict[str, Any] | Drop, bytes | None]]:
        """Raw records of `path`: (record number, the record's fields or a Drop saying why it
        could not be read, its raw bytes or None for Parquet). For readers that need fields
        other than the text (labels of an evaluation set)."""
        fmt = detect_format(path, self.cfg.format)
        readers = {"jsonl": self._jsonl, "parquet": self._parquet, "text": self._text, "csv": self._csv}
        return readers[fmt](path, span) if span else readers[fmt](path)

    def text_of(self, record: dict[str, Any]) -> str | Drop:
        """The record's text under the rules every reader of text follows (prep, and eval's
        held-out sets): present, UTF-8, a string, no NUL bytes, not absurdly long, not blank."""
        cfg = self.cfg
        text = record.get(cfg.text_field)
        if text is None:
            return Drop("missing_text", f"no field {cfg.text_field!r}; fields: {sorted(map(str, record))[:20]}")
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                return Drop("invalid_utf8", str(e))
        if not isinstance(text, str):
            return Drop("text_not_string", f"{cfg.text_field!r} is {type(text).__name__}")
        if "\x00" in text:
            return Drop("nul_bytes", f"NUL at character {text.index(chr(0))}")
        if len(text) > cfg.max_record_bytes:
            return Drop("record_too_long", f"{len(text)} characters > {cfg.max_record_bytes}")
        if not text.strip():
            return Drop("empty_text")
        return text

    # Each format yields (record number, record dict or Drop, raw bytes of the record or None).

    def _lines(self, f: BinaryIO, span: tuple[int, int] | None = None
               ) -> Iterator[tuple[int, bytes | Drop, bytes]]:
        """Lines of a binary stream, never holding more than max_record_bytes of one line.
        With `span`, the lines that start inside that byte range."""
        limit = self.cfg.max_record_bytes
        end = span[1] if span else None
        if span and span[0] > 0:
            f.seek(span[0] - 1)
            while (part := f.readline(1 << 20)) and not part.endswith(b"\n"):
                pass  # the line running into the range belongs to the range before
        lineno = 0
        while (end is None or f.tell() < end) and (line := f.readline(limit + 1)):
            lineno += 1
            if len(line) > limit and not line.endswith(b"\n"):
                head, total = line, len(line)
                while line and not line.endswith(b"\n"):
                    line = f.readline(1 << 20)
                    total += len(line)
                yield lineno, Drop("line_too_long", f"{total} bytes > {limit}"), head
                continue
            yield lineno, line.rstrip(b"\r\n"), line

    def _jsonl(self, path: str, span: tuple[int, int] | None = None) -> Iterator[tuple[int, Any, bytes]]:
        with open_binary(path) as f:
            for lineno, line, raw in self._lines(f, span):
                if isinstance(line, Drop):
                    yield lineno, line, raw
                    continue
                if not line.strip():
                    continue  # a blank line separates nothing and holds no record
                try:
                    decoded = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield lineno, Drop("invalid_utf8", str(e)), raw
                    continue
                try:
                    record = json.loads(decoded)
                except json.JSONDecodeError as e:
                    yield lineno, Drop("invalid_json", str(e)), raw
                    continue
                if not isinstance(record, dict):
                    yield lineno, Drop("not_an_object", f"a JSON {type(record).__name__}"), raw
                    continue
                yield lineno, record, raw

    def _text(self, path: str, span: tuple[int, int] | None = None) -> Iterator[tuple[int, Any, bytes]]:
        unit = self.cfg.text_unit
        with open_binary(path) as f:
            if unit == "file":
                data = f.read(self.cfg.max_record_bytes + 1)
                if len(data) > self.cfg.max_record_bytes:
                    yield 1, Drop("record_too_long", f"file over {self.cfg.max_record_bytes} bytes"), data
                else:
                    yield 1, *self._decode_text(data)
                return
            para: list[bytes] = []
            start = 0
            for lineno, line, raw in self._lines(f, span):
                if isinstance(line, Drop):
                    yield lineno, line, raw
                    continue
                if unit == "line":
                    if line.strip():
                        yield lineno, *self._decode_text(line)
                    continue
                if line.strip():
                    start = start or lineno
                    para.append(line)
                elif para:
                    yield start, *self._decode_text(b"\n".join(para))
                    para, start = [], 0
            if para:
                yield start, *self._decode_text(b"\n".join(para))

    def _decode_text(self, data: bytes) -> tuple[Any, bytes]:
        try:
            return {self.cfg.text_field: data.decode("utf-8")}, data
        except UnicodeDecodeError as e:
            return Drop("invalid_utf8", str(e)), data

    def _csv(self, path: str) -> Iterator[tuple[int, Any, bytes]]:
        delimiter = self.cfg.csv_delimiter or ("\t" if ".tsv" in path else ",")
        csv.field_size_limit(self.cfg.max_record_bytes)
        with open_binary(path) as f:
            # surrogateescape keeps bad bytes recoverable, so one bad row does not end the file.
            text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
            reader = csv.DictReader(text, delimiter=delimiter)
            row_no = 0
            while True:
                row_no += 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield row_no, Drop("invalid_csv", str(e)), str(e).encode()
                    continue
                extra = row.pop(None, None)  # csv puts fields beyond the header under None
                raw = delimiter.join(v or "" for v in [*row.values(), *(extra or [])] if isinstance(v, str))
                raw_bytes = raw.encode("utf-8", "surrogateescape")
                if extra:
                    yield row_no, Drop("csv_extra_fields", f"{len(extra)} field(s) beyond the header's "
                                       f"{len(row)}: a comma inside an unquoted text?"), raw_bytes
                    continue
                if any(_has_surrogates(v) for v in row.values() if isinstance(v, str)):
                    yield row_no, Drop("invalid_utf8", "bytes that are not UTF-8"), raw_bytes
                    continue
                yield row_no, row, raw_bytes

    def _parquet(self, path: str, span: tuple[int, int] | None = None) -> Iterator[tuple[int, Any, bytes]]:
        import pyarrow.parquet as pq

        from countrytune.parquet import row_group_batches

        with fsspec.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            groups = None
            if span:
                groups = [g for g, start in enumerate(_row_group_starts(pf)) if span[0] <= start < span[1]]
            row_no = 0
            for batch in row_group_batches(pf, 2048, row_groups=groups):
                for row in batch.to_pylist():
                    row_no += 1
                    yield row_no, row, None


def unreadable_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged file raises: OSError (a bad or truncated gzip is one), EOFError,
    Arrow's errors (a file that is not Parquet), zstandard's."""
    import pyarrow as pa

    errors: tuple[type[BaseException], ...] = (OSError, EOFError, pa.ArrowException)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def until_unreadable(records: Iterator) -> Iterator:
    """The records of a file until it cannot be read further; then one Drop for the rest of the
    file, saying why, so a junk file beside good ones is a counted reject, not the end of the run."""
    errors = unreadable_errors()
    ordinal = 0
    while True:
        try:
            item = next(records)
        except StopIteration:
            return
        except errors as e:
            detail = f"{type(e).__name__}: {e}"
            yield ordinal + 1, Drop("unreadable_file", f"the file cannot be read from record {ordinal + 1} "
                                    f"on: {detail}"[:500]), detail.encode()
            return
        ordinal = item[0]
        yield item


def _row_group_starts(source: Any) -> list[int]:
    """Where each row group of a Parquet file (a path or a `pq.ParquetFile`) begins: the
    offset of its first column chunk's first page (dictionary page if it has one)."""
    import pyarrow.parquet as pq

    if not isinstance(source, pq.ParquetFile):
        with fsspec.open(source, "rb") as f:
            return _row_group_starts(pq.ParquetFile(f))
    starts = []
    for g in range(source.metadata.num_row_groups):
        chunk = source.metadata.row_group(g).column(0)
        offsets = [chunk.data_page_offset]
        if chunk.has_dictionary_page and chunk.dictionary_page_offset:
            offsets.append(chunk.dictionary_page_offset)
        starts.append(min(offsets))
    return starts


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True
