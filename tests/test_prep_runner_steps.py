"""Each prep pass is one list of steps, and `run_shard` (not the steps) owns what says a shard
ran: its stats file and its done-marker, written only after its files are in place."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator

import pyarrow.parquet as pq
import pytest

from countrytune.document import Document
from countrytune.errors import UserError
from countrytune.profiles import load_profile
from data_prep.config import PrepConfig
from data_prep.executors import run_shard
from data_prep.passes import InputReader, ShardWriter, pass_one_shard, pass_one_steps, pass_two_shard, pass_two_steps
from data_prep.readers import DocumentReader
from data_prep.shard_files import ShardFiles
from data_prep.step import BalanceError, ShardContext
from tests.conftest import SAMPLE_CORPUS


class Messages:
    """A progress queue that keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def put(self, message: tuple[str, int]) -> None:
        self.sent.append(message)


def _cfg(out, stages=("normalize", "langid", "quality", "pii", "dedup", "near_dedup")) -> PrepConfig:
    # as run_prep hands it to the workers: the stages resolved
    return PrepConfig(country="id", inputs=[str(SAMPLE_CORPUS / "stories.txt")], output=str(out),
                      stages=list(stages))


def test_each_pass_reads_as_one_list_of_steps(tmp_path):
    cfg, profile, files = _cfg(tmp_path), load_profile("id"), ShardFiles(tmp_path, 0)
    steps = pass_one_steps(cfg, profile, files, str(SAMPLE_CORPUS / "stories.txt"), None)
    assert [type(s).__name__ for s in steps] == ["InputReader", "Normalize", "LanguageId", "QualityFilter",
                                                "PiiRedactor", "DedupKeys", "Pass1Writer"]
    subset = pass_one_steps(_cfg(tmp_path, ["pii"]), profile, files, str(SAMPLE_CORPUS / "stories.txt"), None)
    assert [type(s).__name__ for s in subset] == ["InputReader", "PiiRedactor", "DedupKeys", "Pass1Writer"]

    pass_one_shard(0, str(SAMPLE_CORPUS / "stories.txt"), None, cfg.model_dump(mode="json"), Messages())
    steps = pass_two_steps(cfg, files)
    assert [type(s).__name__ for s in steps] == ["Pass1Reader", "ExactDedup", "NearDedup", "ShardWriter"]


def test_a_shard_through_both_passes_is_marked_after_its_stats(tmp_path):
    cfg, files = _cfg(tmp_path), ShardFiles(tmp_path, 0)
    one, two = Messages(), Messages()
    pass_one_shard(0, str(SAMPLE_CORPUS / "stories.txt"), None, cfg.model_dump(mode="json"), one)
    pass_two_shard(0, cfg.model_dump(mode="json"), two)

    kept = pq.read_table(files.pass1_docs).num_rows
    assert one.sent[-1] == ("shard", 1) and sum(n for kind, n in one.sent if kind == "docs") == kept
    assert two.sent == [("shard", 1)]  # documents are counted once, in pass one
    first, final = (json.loads(p.read_text()) for p in (files.pass1_stats, files.stats))
    assert first["input"]["path"].endswith("stories.txt") and first["input_state"]["bytes"] > 0
    assert set(first["cpu_seconds"]) >= {"setup (config, models)", "keys (exact, MinHash)", "read, write, other"}
    assert final["input"] == first["input"]
    assert set(final["stages"]) == set(first["stages"]) | {"dedup", "near_dedup"}
    assert {k: v for k, v in final["stages"].items() if k in first["stages"]} == first["stages"]
    assert pq.read_table(files.data).num_rows == kept
    assert pq.read_table(files.rejects).num_rows == pq.read_table(files.pass1_rejects).num_rows
    assert files.pass1_done.exists() and files.done.exists()


class Listed:
    """A source of the given texts."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def read(self, ctx: ShardContext) -> Iterator[Document]:
        for i, text in enumerate(self.texts):
            ctx.stage("read").count_in("ind", len(text))
            ctx.stage("read").count_out("ind", len(text))
            yield Document(id=str(i), text=text, source="test", lang="ind")

    def input_record(self) -> dict:
        return {"input": None}


class LosesOne:
    """A broken step: counts every document in and lets one vanish without a reject."""

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        stats = ctx.stage("broken")
        for i, doc in enumerate(docs):
            stats.count_in(doc.lang, len(doc.text))
            if i:
                stats.count_out(doc.lang, len(doc.text))
                yield doc


def test_a_shard_that_does_not_balance_writes_nothing_and_is_not_marked(tmp_path):
    marker, stats = tmp_path / "part.done", tmp_path / "part.stats.json"
    writer = ShardWriter(tmp_path / "part.parquet", tmp_path / "part.rejects.parquet", 100)
    with pytest.raises(BalanceError, match="stage broken"):
        run_shard([Listed(["satu", "dua"]), LosesOne(), writer], marker, stats, Messages(), started=0.0)
    assert not (tmp_path / "part.parquet").exists() and not stats.exists() and not marker.exists()


class AppendsToInput:
    """Appends a document to the input once the reader has read all of it."""

    def __init__(self, path) -> None:
        self.path = path

    def run(self, docs: Iterable[Document], ctx: ShardContext) -> Iterator[Document]:
        yield from docs
        with self.path.open("a", encoding="utf-8") as f:
            f.write("Cerita yang ditambahkan ketika prep sedang membaca berkas ini.\n")


def test_an_input_changed_while_read_leaves_the_shard_unmarked(tmp_path):
    source = tmp_path / "stories.txt"
    shutil.copyfile(SAMPLE_CORPUS / "stories.txt", source)
    cfg = _cfg(tmp_path)
    reader = InputReader(str(source), None, DocumentReader(cfg.reader, "ind"))
    writer = ShardWriter(tmp_path / "part.parquet", tmp_path / "part.rejects.parquet", 100)
    marker, stats = tmp_path / "part.done", tmp_path / "part.stats.json"
    with pytest.raises(UserError, match="changed while prep read it"):
        run_shard([reader, AppendsToInput(source), writer], marker, stats, Messages(), started=0.0)
    assert not stats.exists() and not marker.exists()
