"""Prep never corrupts its own output (issue 24, items 5-7): one run per output folder, workers
that die with the run, shards marked done only when whole, --overwrite that keeps a user's
files, and zero documents as a valid run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from fault_injection import ROOT, children, prep_command, prep_env, write_corpus

from countrytune_cli import main
from countrytune.errors import UserError
from data_prep.runner import JOB_FILE
from tests.conftest import SAMPLE_CORPUS


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def corpus(tmp_path):
    write_corpus(tmp_path / "corpus", files=6, docs=1500)
    return tmp_path / "corpus"


def test_a_second_run_into_the_same_folder_is_refused_and_the_first_finishes(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    first = subprocess.Popen(prep_command(corpus, out), cwd=ROOT, env=prep_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait(lambda: (out / JOB_FILE).exists(), 60, "the first run never claimed the folder")
    assert main(["prep", "--country", "id", "--input", str(corpus), "--output", str(out),
                 "--no-progress"]) == 2
    assert "in use by another prep run (pid" in capsys.readouterr().err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["totals"]["records_in"] == 9000


def test_killing_the_main_process_takes_its_workers_and_a_rerun_ends_whole(corpus, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(prep_command(corpus, out), cwd=ROOT, env=prep_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(lambda: len(children(proc.pid)) >= 2 and (out / "_work" / "pass1").is_dir(), 120,
          "no worker started")
    workers = children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the main process alone, as the probe did
    proc.wait()
    _wait(lambda: not any(os.path.exists(f"/proc/{w}") and
                          open(f"/proc/{w}/stat").read().split()[2] != "Z" for w in workers),
          10, f"workers {workers} outlived the run")
    assert main(["prep", "--country", "id", "--input", str(corpus), "--output", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "stats.json").read_text())["totals"]["records_in"] == 9000


def test_a_shard_marked_done_with_a_damaged_file_is_done_again(run_prep, tmp_path, capsys):
    first, out = run_prep([SAMPLE_CORPUS])
    shard = sorted((out / "data").glob("part-*.parquet"))[0]
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])  # what a racing run left, marked done
    again, _ = run_prep([SAMPLE_CORPUS])
    assert "marked done had unreadable files and are done again" in capsys.readouterr().err
    assert shard.read_bytes() == whole
    assert again["totals"] == first["totals"]


def test_overwrite_keeps_and_names_a_users_files_among_the_shards(run_prep, tmp_path):
    _, out = run_prep([SAMPLE_CORPUS / "reviews.csv"])
    (out / "data" / "user.parquet.bak").write_text("mine")
    (out / "data" / "extra").mkdir()
    (out / "data" / "extra" / "keep.txt").write_text("mine too")
    with pytest.raises(UserError, match=r"did not write.*data/extra/keep.txt, data/user.parquet.bak"):
        run_prep([SAMPLE_CORPUS / "stories.txt"], overwrite=True)
    assert (out / "data" / "user.parquet.bak").read_text() == "mine"
    assert (out / "data" / "extra" / "keep.txt").read_text() == "mine too"
    assert list((out / "data").glob("part-*.parquet")), "nothing was deleted"
    (out / "data" / "user.parquet.bak").unlink()
    (out / "data" / "extra" / "keep.txt").unlink()
    (out / "data" / "extra").rmdir()
    stats, _ = run_prep([SAMPLE_CORPUS / "stories.txt"], overwrite=True)
    assert stats["inputs"][0]["path"].endswith("stories.txt")


@pytest.mark.parametrize("content", ["", '{"text": "\\u0000"}\n{"txt": "no text field"}\n'])
def test_zero_documents_is_a_run_that_says_so(tmp_path, capsys, content):
    # Empty or fully rejected input with dedup on crashed on a plan folder nobody made.
    source = tmp_path / "in.jsonl"
    source.write_text(content)
    out = tmp_path / "out"
    assert main(["prep", "--country", "id", "--input", str(source), "--output", str(out),
                 "--no-progress"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["totals"]["docs_out"] == 0
    assert stats["totals"]["records_in"] == stats["totals"]["rejected"] == content.count("\n")
    assert "**0** documents kept" in (out / "DATA_CARD.md").read_text()
    assert "Traceback" not in capsys.readouterr().err
