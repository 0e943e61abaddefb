"""End to end: the sample corpus through every stage, counts balanced, resumable after a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pytest

from countrytune.errors import UserError
from data_prep.runner import JOB_FILE
from tests.conftest import ROOT, SAMPLE_CORPUS

PLANTED = json.loads((SAMPLE_CORPUS.parent / "planted.json").read_text())
SAMPLE_SETTINGS = {"reader": {"max_record_bytes": 20_000}}


def table(folder):
    return ds.dataset(str(folder), format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    from data_prep.config import PrepConfig
    from data_prep.runner import run_prep

    out = tmp_path_factory.mktemp("sample") / "out"
    cfg = PrepConfig(country="id", inputs=[str(SAMPLE_CORPUS)], output=str(out), workers=2, **SAMPLE_SETTINGS)
    return run_prep(cfg, show_progress=False), out


def test_every_record_is_accounted_for(sample_run):
    stats, out = sample_run
    data, rejects = table(out / "data"), table(out / "rejects")
    t = stats["totals"]
    assert t["records_in"] == PLANTED["records"]
    assert len(data) == t["docs_out"] and len(rejects) == t["rejected"]
    assert len(data) + len(rejects) == PLANTED["records"]
    for name, stage in stats["stages"].items():
        assert stage["docs_in"] == stage["docs_out"] + sum(stage["rejected"].values()), name
    assert {r["stage"] for r in rejects} <= {"read", "normalize", "langid", "quality", "pii", "dedup", "near_dedup"}
    assert all(r["reason"] for r in rejects)


def test_shards_load_with_datasets(sample_run):
    from datasets import load_dataset

    _, out = sample_run
    dataset = load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert {"id", "text", "source", "lang"} <= set(dataset.column_names)
    assert len(dataset) == sample_run[0]["totals"]["docs_out"]
    assert set(dataset["lang"]) >= {"ind", "jav", "sun", "min", "ban", "bjn", "ace", "bug", "mad"}


def test_malformed_records_rejected_with_reasons(sample_run):
    _, out = sample_run
    read = [r for r in table(out / "rejects") if r["stage"] == "read"]
    assert sorted(r["reason"] for r in read) == sorted(
        ["invalid_json", "invalid_utf8", "missing_text", "nul_bytes", "not_an_object",
         "text_not_string", "line_too_long"])
    assert all(r["raw"] for r in read)


def test_planted_pii_is_redacted_and_counted(sample_run):
    stats, out = sample_run
    planted = {k.split(":")[1]: v for k, v in PLANTED.items() if k.startswith("pii:")}
    assert {k: stats["pii"][k] for k in planted} == planted
    texts = {r["id"]: r["text"] for r in table(out / "data")}
    for doc_id, text in texts.items():
        if doc_id.startswith("pii-"):
            assert re.search(r"<(NIK|NPWP|PHONE|EMAIL|CARD|IP)>", text), text
        assert not re.search(r"\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}", text), text
        assert "@" not in text
    from data_prep.sample import KEEP_NUMBERS

    assert set(KEEP_NUMBERS) <= set(texts.values())


def test_duplicates_removed_naming_the_kept_document(sample_run):
    _, out = sample_run
    data, rejects = table(out / "data"), table(out / "rejects")
    dups = [r for r in rejects if r["reason"] == "exact_duplicate"]
    # Planted copies, plus the mojibake copies, which normalisation turns back into the original.
    assert len(dups) == PLANTED["exact_duplicates"] + PLANTED["mojibake"]
    kept_ids = {r["id"] for r in data}
    assert all(r["duplicate_of"] in kept_ids for r in dups)
    assert len({" ".join(r["text"].casefold().split()) for r in data}) == len(data)


def test_near_duplicates_clustered_one_kept(sample_run):
    _, out = sample_run
    data, rejects = table(out / "data"), table(out / "rejects")
    near = [r for r in rejects if r["reason"] == "near_duplicate"]
    kept = {r["id"]: r for r in data}
    assert all(r["duplicate_of"] in kept and kept[r["duplicate_of"]]["cluster_size"] >= 2 for r in near)
    sizes = {}
    for r in near:
        sizes[r["duplicate_of"]] = sizes.get(r["duplicate_of"], 1) + 1
    assert all(kept[k]["cluster_size"] == n for k, n in sizes.items())
    # every planted copy with one word changed is gone, or is the one kept of its cluster
    planted = [r for r in data + rejects if r["id"].startswith("near-")]
    assert len(planted) == PLANTED["near_duplicates"]
    for r in planted:
        assert r.get("reason") == "near_duplicate" or r.get("cluster_size", 0) >= 2, r["id"]


def test_mojibake_repaired_and_junk_dropped(sample_run):
    stats, out = sample_run
    assert stats["stages"]["normalize"]["counters"]["mojibake_repaired"] == PLANTED["mojibake"]
    data = table(out / "data")
    assert not any("Ã" in r["text"] or "â€" in r["text"] for r in data)
    junk_texts = {r["text"] for r in table(out / "rejects") if r["stage"] in ("langid", "quality")}
    from data_prep.normalize import normalize_whitespace
    from data_prep.sample import JUNK

    assert all(normalize_whitespace(j) in junk_texts for j in JUNK)


def test_data_card(sample_run):
    stats, out = sample_run
    card = (out / "DATA_CARD.md").read_text()
    for heading in ("## Stages", "## Languages", "## Personal data redacted", "## Inputs"):
        assert heading in card
    assert f"**{stats['totals']['docs_out']:,}** documents kept" in card
    assert "| Javanese | jav |" in card


def test_cpu_seconds_per_stage_kept_out_of_stats(sample_run):
    stats, out = sample_run
    cpu = json.loads((out / "_work" / "cpu_seconds.json").read_text())
    assert set(cpu["pass 1"]) == {"setup (config, models)", "normalize", "langid", "quality", "pii",
                                  "keys (exact, MinHash)", "read, write, other"}
    assert set(cpu["pass 2"]) == {"dedup", "near_dedup", "read, write, other"}
    assert "dedup plan" in cpu["between the passes"]
    assert all(s >= 0 for stages in cpu.values() for s in stages.values())
    assert "cpu" not in json.dumps(stats)  # stats.json stays the same from run to run


def test_parallel_output_equals_serial(sample_run, run_prep):
    _, parallel = sample_run
    _, serial = run_prep([SAMPLE_CORPUS], workers=1, **SAMPLE_SETTINGS)
    for folder in ("data", "rejects"):
        assert table(serial / folder) == table(parallel / folder)


def test_stage_subset_runs_only_those(run_prep):
    stats, out = run_prep([SAMPLE_CORPUS], stages=["pii"], **SAMPLE_SETTINGS)
    assert list(stats["stages"]) == ["read", "pii"]
    assert stats["totals"]["rejected"] == PLANTED["malformed"]
    assert sum(v for k, v in stats["pii"].items() if k != "docs_with_pii") >= 9


def test_other_job_in_same_folder_is_refused(run_prep, tmp_path):
    run_prep([SAMPLE_CORPUS / "reviews.csv"])
    with pytest.raises(UserError, match="other inputs or settings"):
        run_prep([SAMPLE_CORPUS / "stories.txt"])
    stats, _ = run_prep([SAMPLE_CORPUS / "stories.txt"], overwrite=True)
    assert stats["inputs"][0]["path"].endswith("stories.txt")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a prep output folder"):
        run_prep([SAMPLE_CORPUS / "stories.txt"], output=tmp_path / "busy")


def test_overwrite_removes_only_what_prep_wrote(run_prep, tmp_path):
    home = tmp_path / "home"  # `--output ~ --overwrite` must not delete a home folder
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret")
    with pytest.raises(UserError, match="nothing was deleted"):
        run_prep([SAMPLE_CORPUS / "stories.txt"], output=home, overwrite=True)
    assert (home / ".ssh" / "id_ed25519").read_text() == "secret"
    # A prep output holding a file of the user's: the run is replaced, the file stays.
    _, out = run_prep([SAMPLE_CORPUS / "reviews.csv"], output=tmp_path / "prep")
    (out / "README-team.md").write_text("our notes")
    stats, _ = run_prep([SAMPLE_CORPUS / "stories.txt"], output=out, overwrite=True)
    assert stats["inputs"][0]["path"].endswith("stories.txt")
    assert (out / "README-team.md").read_text() == "our notes"


def test_an_input_changed_after_prep_read_it_is_refused_not_silently_missed(run_prep, tmp_path):
    import shutil

    source = tmp_path / "in" / "reviews.csv"
    source.parent.mkdir()
    shutil.copyfile(SAMPLE_CORPUS / "reviews.csv", source)
    first, out = run_prep([source], output=tmp_path / "out")
    with source.open("a", encoding="utf-8") as f:  # documents appended after the shard finished
        f.write('ind-999,ind,"Ulasan baru yang ditambahkan setelah prep selesai membaca berkas ini."\n')
    with pytest.raises(UserError, match="changed after prep processed it.*--overwrite"):
        run_prep([source], output=out)
    again, _ = run_prep([source], output=out, overwrite=True)
    assert again["totals"]["records_in"] == first["totals"]["records_in"] + 1


def test_output_outside_allowed_storage_is_refused(run_prep):
    with pytest.raises(UserError, match="outside the storage locations"):
        run_prep([SAMPLE_CORPUS], output="s3://somewhere-else/prep")


def write_big_corpus(folder, files=6, docs=2500):
    """Enough work that a run can be killed between shards."""
    from tests.fault_injection import write_corpus

    write_corpus(folder, files, docs, seed=7)


def prep_command(inputs, output):
    return [sys.executable, "-m", "countrytune", "prep", "--country", "id", "--input", str(inputs),
            "--output", str(output), "--workers", "1", "--no-progress"]


def test_killed_run_resumes_to_identical_output(tmp_path):
    corpus = tmp_path / "corpus"
    write_big_corpus(corpus)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(prep_command(corpus, killed), cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while not (killed / "_work" / "pass1" / "part-00001.done").exists():
        assert proc.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "stats.json").exists()
    assert not (killed / "_work" / "pass1" / "part-00005.done").exists()

    subprocess.run(prep_command(corpus, killed), cwd=ROOT, env=env, check=True)
    straight = tmp_path / "straight"
    subprocess.run(prep_command(corpus, straight), cwd=ROOT, env=env, check=True)
    for folder in ("data", "rejects"):
        assert table(killed / folder) == table(straight / folder)
    a, b = (json.loads((d / "stats.json").read_text()) for d in (killed, straight))
    for stats in (a, b):
        stats.pop("created"), stats["config"].pop("output")
    assert a == b
    assert a["totals"]["records_in"] == 6 * 2500
    assert not list(killed.rglob("*.tmp"))


def test_big_files_split_into_byte_ranges_read_every_line_once(run_prep, tmp_path):
    source = SAMPLE_CORPUS / "web-news.jsonl"  # with malformed and over-long lines
    whole, _ = run_prep([source], output=tmp_path / "whole", **SAMPLE_SETTINGS)
    split, out = run_prep([source], output=tmp_path / "split", shard_bytes=997, **SAMPLE_SETTINGS)
    assert len(list((out / "data").glob("*.parquet"))) > 40
    assert split["totals"] == whole["totals"]
    assert split["stages"]["read"]["rejected"] == whole["stages"]["read"]["rejected"]
    assert [r["text"] for r in table(out / "data")] == [r["text"] for r in table(tmp_path / "whole" / "data")]
    assert len(split["inputs"]) == 1 and split["inputs"] == whole["inputs"]


def test_big_parquet_files_split_by_row_groups_read_every_row_once(run_prep, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = (SAMPLE_CORPUS / "web-news.jsonl").read_text(errors="replace").splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
    source = tmp_path / "web-news.parquet"
    rows = [{"id": str(r.get("id")), "text": r["text"]} for r in rows if isinstance(r.get("text"), str)]
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=7)
    whole, _ = run_prep([source], output=tmp_path / "whole", **SAMPLE_SETTINGS)
    split, out = run_prep([source], output=tmp_path / "split", shard_bytes=2500, **SAMPLE_SETTINGS)
    plan = json.loads((out / JOB_FILE).read_text())["shards"]
    assert len(plan) > 5 and plan[0][1][0] == 0 and plan[-1][1][1] == source.stat().st_size
    assert all(a[1][1] == b[1][0] for a, b in zip(plan, plan[1:]))  # ranges cover the file
    assert split["totals"] == whole["totals"] and split["totals"]["records_in"] == len(rows)
    assert [r["text"] for r in table(out / "data")] == [r["text"] for r in table(tmp_path / "whole" / "data")]
    assert split["inputs"] == whole["inputs"]


def test_language_id_tags_the_sample_corpus(sample_run):
    stats, out = sample_run
    assert "langid" in stats["stages_run"]
    data = table(out / "data")
    labelled = [r for r in data if r["id"][:3] in {"ind", "jav", "sun", "min", "ban", "bjn", "ace", "bug", "mad"}]
    assert len(labelled) > 150
    right = sum(r["lang"] == r["id"][:3] for r in labelled)
    assert right / len(labelled) >= 0.97, [(r["id"], r["lang"]) for r in labelled if r["lang"] != r["id"][:3]]
    assert all(0.5 <= r["lang_score"] <= 1.0 for r in data)
    assert stats["languages"]["eng"]["rejected"]["langid"]["lang_not_kept"] >= 1
