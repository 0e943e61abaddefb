"""Readers: every format, compressed or not, local or URL; bad records become rejects."""

from __future__ import annotations

import gzip
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from countrytune.errors import UserError
from data_prep.config import ReaderConfig
from countrytune.records import detect_format, expand_inputs
from data_prep.readers import DocumentReader
from data_prep.step import ShardContext

GOOD = [{"id": "a", "text": "Sugeng enjing sedaya", "lang": "jav"},
        {"id": "b", "text": "Wilujeng enjing sadayana"}]


def read(path, **cfg):
    rejects = []
    ctx = ShardContext(rejects.append)
    docs = list(DocumentReader(ReaderConfig(**cfg), "ind").read(str(path), ctx))
    ctx.check_balance()
    return docs, rejects, ctx.stats["read"]


def jsonl_bytes(rows):
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.mark.parametrize("name, write", [
    ("c.jsonl", lambda p: p.write_bytes(jsonl_bytes(GOOD))),
    ("c.jsonl.gz", lambda p: p.write_bytes(gzip.compress(jsonl_bytes(GOOD)))),
    ("c.jsonl.zst", lambda p: p.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(GOOD)))),
    ("c.parquet", lambda p: pq.write_table(pa.Table.from_pylist(
        [{"id": r["id"], "text": r["text"], "lang": r.get("lang")} for r in GOOD]), p)),
    ("c.csv", lambda p: p.write_text("id,text,lang\na,Sugeng enjing sedaya,jav\nb,Wilujeng enjing sadayana,\n")),
    ("c.tsv.gz", lambda p: p.write_bytes(gzip.compress(
        b"id\ttext\tlang\na\tSugeng enjing sedaya\tjav\nb\tWilujeng enjing sadayana\t\n"))),
])
def test_each_format_reads_the_same_documents(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    docs, rejects, _ = read(path)
    assert rejects == []
    assert [(d.id, d.text, d.lang) for d in docs] == [
        ("a", "Sugeng enjing sedaya", "jav"), ("b", "Wilujeng enjing sadayana", "ind")]
    assert all(d.source == str(path) for d in docs)


def test_plain_text_units(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("satu baris\ndua baris\n\nparagraf kedua\n")
    assert [d.text for d in read(path)[0]] == ["satu baris", "dua baris", "paragraf kedua"]
    assert [d.text for d in read(path, text_unit="paragraph")[0]] == ["satu baris\ndua baris", "paragraf kedua"]
    assert [d.id for d in read(path, text_unit="paragraph")[0]] == ["t.txt:1", "t.txt:4"]
    assert len(read(path, text_unit="file")[0]) == 1


def test_malformed_jsonl_records_are_rejected_with_reason_and_raw_bytes(tmp_path):
    long_line = b'{"text": "' + b"x" * 5000 + b'"}'
    lines = [
        json.dumps(GOOD[0]).encode(),
        b'{"id": "broken", "text": "no end',
        b'{"id": "u", "text": "caf\xe9"}',
        b'{"id": "m", "body": "wrong field"}',
        b'{"id": "n", "text": "nul\\u0000here"}',
        b"[1, 2, 3]",
        b'{"id": "num", "text": 42}',
        b'{"id": "e", "text": "   "}',
        long_line,
        b"",
        json.dumps(GOOD[1]).encode(),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, rejects, stats = read(path, max_record_bytes=1000, raw_keep_bytes=100)
    assert [d.id for d in docs] == ["a", "b"]
    assert [r.reason for r in rejects] == ["invalid_json", "invalid_utf8", "missing_text", "nul_bytes",
                                           "not_an_object", "text_not_string", "empty_text", "line_too_long"]
    assert rejects[1].raw == lines[2] + b"\n"
    assert rejects[7].raw == long_line[:100] and f"{len(long_line) + 1} bytes" in rejects[7].detail
    assert all(r.stage == "read" and r.source == str(path) for r in rejects)
    assert stats.total("docs_in") == 10 and stats.total("docs_out") == 2  # the blank line is no record


def test_bad_csv_row_does_not_end_the_file(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"id,text\n1,Sugeng enjing sedaya\n2,caf\xe9 rusak\n3,Wilujeng enjing\n4,\n")
    docs, rejects, _ = read(path)
    assert [d.id for d in docs] == ["1", "3"]
    assert [(r.id, r.reason) for r in rejects] == [("c.csv:2", "invalid_utf8"), ("c.csv:4", "empty_text")]
    assert rejects[0].raw == b"2,caf\xe9 rusak"


def test_parquet_row_without_text_is_rejected_with_the_row(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "1", "text": None}, {"id": "2", "text": "Sugeng enjing sedaya"}]), path)
    docs, rejects, _ = read(path)
    assert [d.id for d in docs] == ["2"]
    assert rejects[0].reason == "missing_text" and json.loads(rejects[0].raw) == {"id": "1", "text": None}


def test_parquet_of_many_row_groups_reads_every_row_once_in_order(tmp_path):
    path = tmp_path / "p.parquet"
    rows = [{"id": str(i), "text": f"Dokumen nomer {i} ing basa Jawa"} for i in range(25)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)  # 7 groups, the last short
    assert pq.ParquetFile(path).metadata.num_row_groups == 7
    docs, rejects, _ = read(path)
    assert [d.id for d in docs] == [r["id"] for r in rows] and not rejects


def test_fsspec_url_inputs(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus/a.jsonl", jsonl_bytes(GOOD))
    fs.pipe("/corpus/notes.md", b"not an input")
    files = expand_inputs(["memory://corpus"])
    assert len(files) == 1 and files[0].startswith("memory://") and files[0].endswith("/corpus/a.jsonl")
    assert [d.text for d in read(files[0])[0]] == [r["text"] for r in GOOD]


def test_inputs_expand_folders_and_globs_and_refuse_nothing(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jsonl", "sub/b.csv", "sub/c.txt.gz", "skip.md"):
        (tmp_path / name).write_text("x")
    assert [p.rsplit("/", 1)[1] for p in expand_inputs([str(tmp_path)])] == ["a.jsonl", "b.csv", "c.txt.gz"]
    assert len(expand_inputs([str(tmp_path / "sub" / "*.csv")])) == 1
    with pytest.raises(UserError, match="matches no readable file"):
        expand_inputs([str(tmp_path / "missing*.jsonl")])
    with pytest.raises(UserError, match="cannot tell the format"):
        detect_format("corpus.xml")
