"""sft-data recipes with several tasks: translation pairs line up by id both ways and a missing
pair is a counted reject; a held-out share of a classification task never reaches data/ and is
what recipes/id/heldout-rhetoric.yaml scores; every
instruction language a recipe names is used; the first recipe's records are unchanged."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from countrytune_cli import main
from data_prep.instructions import InstructionSet, build
from pipeline.scoring.heldout import prepare
from pipeline.scoring.suite import load_suite
from tests.conftest import ROOT

ANSWERS = {"narrative": "narasi", "persuasive": "persuasi"}


def _rows(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _spec(tmp_path) -> InstructionSet:
    (tmp_path / "ind.csv").write_text("id,text,label\n1,Saya senang,positive\n2,Tidak enak,negative\n"
                                      "3,Biasa saja,neutral\n5,,neutral\n", encoding="utf-8")
    (tmp_path / "jav.csv").write_text("id,text,label\n1,Aku seneng,positive\n2,Ora enak,negative\n"
                                      "4,Mung siji,neutral\n5,Kosong ing kana,neutral\n", encoding="utf-8")
    paragraphs = "".join(f"{i},Paragraf nomer {i},{'narrative' if i % 2 else 'persuasive'}\n" for i in range(40))
    (tmp_path / "para.csv").write_text("id,text,label\n" + paragraphs, encoding="utf-8")
    translate = [
        {"id": "en_tr", "prompt_language": "eng", "user": "Translate from {{source_language}} to {{target_language}}:\n{{text}}"},
        {"id": "id_tr", "prompt_language": "ind", "user": "Terjemahkan dari {{source_language}} ke {{target_language}}:\n{{text}}"},
        {"id": "jv_tr", "prompt_language": "jav", "languages": ["jav"],
         "user": "Terjemahna saka {{source_language}} menyang {{target_language}}:\n{{text}}"},
    ]
    rhetoric = [
        {"id": "id_rh", "prompt_language": "ind", "user": "Jenis paragraf?\n{{text}}", "answers": ANSWERS},
        {"id": "jv_rh", "prompt_language": "jav", "languages": ["jav"], "user": "Jinis paragraf?\n{{text}}",
         "answers": ANSWERS},
    ]
    return InstructionSet.model_validate({"name": "t", "country": "id", "tasks": [
        {"name": "translation", "kind": "translation",
         "sources": [{"files": {"ind": [str(tmp_path / "ind.csv")], "jav": [str(tmp_path / "jav.csv")]}}],
         "directions": [["ind", "jav"], ["jav", "ind"]],
         "language_names": {"ind": {"ind": "bahasa Indonesia", "jav": "bahasa Jawa"},
                            "jav": {"ind": "basa Indonesia", "jav": "basa Jawa"}},
         "templates": translate},
        {"name": "rhetoric", "kind": "classification", "templates": rhetoric,
         "hold_out": {"one_in": 5, "file": "heldout/rhetoric.jsonl"},
         "sources": [{"files": {"jav": [str(tmp_path / "para.csv")]}}]},
    ]})


def test_translation_pairs_line_up_by_id_both_ways_and_a_missing_pair_is_a_reject(tmp_path):
    stats = build(_spec(tmp_path), tmp_path / "out", log=lambda m: None)
    rows = [r for r in _rows(tmp_path / "out" / "data" / "train-00000.jsonl") if r["id"].startswith("translation:")]
    rejects = _rows(tmp_path / "out" / "rejects" / "rejects.jsonl")
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == ["translation:ind>jav:1", "translation:ind>jav:2",
                             "translation:jav>ind:1", "translation:jav>ind:2"]
    assert by_id["translation:ind>jav:1"]["messages"][-1]["content"] == "Aku seneng"
    assert by_id["translation:ind>jav:1"]["messages"][0]["content"].endswith("\nSaya senang")
    assert by_id["translation:jav>ind:2"]["messages"][-1]["content"] == "Tidak enak"
    assert by_id["translation:jav>ind:2"]["lang"] == "ind"
    # ids 3 and 4 are on one side only, id 5 is empty in Indonesian: rejects in each direction.
    assert Counter(r["reason"] for r in rejects) == {"missing_pair": 4, "empty_text": 2}
    assert all(".csv:" in r["where"] and r["detail"] for r in rejects)
    tasks = {lang: c["tasks"]["translation"] for lang, c in stats["languages"].items() if "translation" in c["tasks"]}
    assert tasks == {"jav": {"in": 5, "kept": 2, "rejected": 3, "held_out": 0},
                     "ind": {"in": 5, "kept": 2, "rejected": 3, "held_out": 0}}
    # Names are in the instruction's own language.
    for r in rows:
        prompt = r["messages"][0]["content"]
        assert {"en_tr": "Javanese", "id_tr": "bahasa Jawa", "jv_tr": "basa Jawa"}[r["template"]] in prompt


def test_the_held_out_part_never_reaches_training_and_records_balance(tmp_path):
    stats = build(_spec(tmp_path), tmp_path / "out", log=lambda m: None)
    train = _rows(tmp_path / "out" / "data" / "train-00000.jsonl")
    held = _rows(tmp_path / "out" / "heldout" / "rhetoric.jsonl")
    assert held and all(r["id"].startswith("rhetoric:jav:") for r in held)
    train_ids = {r["id"] for r in train}
    assert not train_ids & {r["id"] for r in held}
    train_texts = {m["content"] for r in train for m in r["messages"]}
    assert not train_texts & {m["content"] for r in held for m in r["messages"] if m["role"] == "user"}
    rhetoric = stats["languages"]["jav"]["tasks"]["rhetoric"]
    assert rhetoric["in"] == 40 == rhetoric["kept"] + rhetoric["rejected"] + rhetoric["held_out"]
    assert rhetoric["held_out"] == len(held) and 2 <= len(held) <= 16  # about 1 in 5
    assert stats["totals"]["records_in"] == stats["totals"]["docs_out"] + stats["totals"]["rejected"]
    # The split is stable: a rebuild holds out the same records.
    build(_spec(tmp_path), tmp_path / "out", overwrite=True, log=lambda m: None)
    assert _rows(tmp_path / "out" / "heldout" / "rhetoric.jsonl") == held
    assert "heldout/rhetoric.jsonl" in (tmp_path / "out" / "DATA_CARD.md").read_text()
    # The same records one file per language, as a suite's classification set reads them: the
    # paragraph as it was, its label; jav here, the only language of the task.
    rows = _rows(tmp_path / "out" / "heldout" / "rhetoric" / "jav.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in held] and [r["label"] for r in rows] == [r["label"] for r in held]
    assert all(r["text"].startswith("Paragraf nomer ") and r["text"] in h["messages"][-2]["content"]
               for r, h in zip(rows, held))


def test_a_regional_template_serves_only_its_language(tmp_path):
    build(_spec(tmp_path), tmp_path / "out", log=lambda m: None)
    train = _rows(tmp_path / "out" / "data" / "train-00000.jsonl")
    used = Counter(r["template"] for r in train)
    assert used["jv_rh"] and used["id_rh"]
    with pytest.raises(ValueError, match="directions name"):
        InstructionSet.model_validate({"name": "x", "country": "id", "tasks": [
            {"name": "tr", "kind": "translation", "sources": [{"files": {"ind": ["a.csv"]}}],
             "directions": [["ind", "sun"]], "templates": [{"id": "a", "prompt_language": "eng", "user": "{{text}}"}]}]})
    with pytest.raises(ValueError, match="either sources and templates"):
        InstructionSet.model_validate({"name": "x", "country": "id"})


def test_the_multitask_recipe_builds_all_three_tasks_from_the_real_data(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    mt = tmp_path / "out" / "sft-multitask"  # the folder recipes/id/heldout-rhetoric.yaml names
    assert main(["sft-data", "recipes/id/sft-data-multitask.yaml", "--output", str(mt)]) == 0
    stats = json.loads((mt / "stats.json").read_text())
    train = _rows(mt / "data" / "train-00000.jsonl")
    held = _rows(mt / "heldout" / "rhetoric.jsonl")
    tasks = Counter(r["id"].split(":")[0] for r in train)
    assert tasks["sentiment"] == 6000 and tasks["translation"] == 22 * 500 and tasks["rhetoric"] > 3000
    assert not {r["id"] for r in train} & {r["id"] for r in held} and len(held) > 500
    # Every NusaX id lines up in both directions, the answer being the other file's sentence.
    ind = {r["id"]: r for r in train if r["id"].startswith("translation:jav>ind:")}
    jav = {r["id"]: r for r in train if r["id"].startswith("translation:ind>jav:")}
    assert len(ind) == len(jav) == 500
    for key, r in list(jav.items())[:50]:
        back = ind[key.replace("ind>jav", "jav>ind")]
        assert r["messages"][-1]["content"] in back["messages"][0]["content"]
        assert back["messages"][-1]["content"] in r["messages"][0]["content"]
    prompts = {t["prompt_language"] for t in stats["templates"].values() if t["records"]}
    assert prompts == {"eng", "ind", "jav", "sun"}
    for task in ("sentiment", "translation", "rhetoric"):
        langs = {t["prompt_language"] for t in stats["templates"].values() if t["task"] == task and t["records"]}
        assert langs == {"eng", "ind", "jav", "sun"}, task
    assert stats["totals"]["rejected"] == 0
    # recipes/id/heldout-rhetoric.yaml scores those held-out paragraphs, every language of them.
    monkeypatch.chdir(tmp_path)
    sets = prepare(load_suite(ROOT / "recipes" / "id" / "heldout-rhetoric.yaml"), tmp_path / "eval", log=lambda m: None)
    scored = Counter(s.lang for s in sets if s.task == "nusaparagraph_rhetoric_chat")
    assert set(scored) == {r["lang"] for r in held}
    assert {s.lang: s.docs for s in sets if s.task == "nusaparagraph_rhetoric_chat"} == Counter(r["lang"] for r in held)
    assert not any(s.rejected for s in sets)


# SHA-256 of data/train-00000.jsonl built by recipes/id/sft-data-nusax.yaml before recipes had
# tasks (commit 3fa00d7): the first recipe's records must not change by a byte.
NUSAX_TRAIN_SHA256 = "7aaad342104876f809824f74c8e3ab0a3819a793151c20fc0b79aabb5bc2b54f"


def test_the_sentiment_recipe_writes_the_same_bytes_as_before(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["sft-data", "recipes/id/sft-data-nusax.yaml", "--output", str(tmp_path / "s")]) == 0
    data = (tmp_path / "s" / "data" / "train-00000.jsonl").read_bytes()
    assert hashlib.sha256(data).hexdigest() == NUSAX_TRAIN_SHA256
