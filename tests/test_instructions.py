"""`countrytune sft-data`: labelled records become checked chat records; nothing is dropped
silently; the trainer reads the output and applies the same chat checks."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from countrytune_cli import main
from countrytune.errors import UserError
from countrytune.schema import read_yaml
from data_prep.instructions import InstructionSet, build, check_chat
from tests.conftest import ROOT

TEMPLATES = [
    {"id": "en", "prompt_language": "eng", "user": "Sentiment of this {{language}} text?\n{{text}}",
     "answers": {"positive": "positive", "negative": "negative", "neutral": "neutral"}},
    {"id": "id", "prompt_language": "ind", "system": "Jawab singkat.", "user": "Sentimen teks ini?\n{{text}}",
     "answers": {"positive": "positif", "negative": "negatif", "neutral": "netral"}},
]


def _spec(tmp_path, **over) -> InstructionSet:
    jav = tmp_path / "jav.csv"
    jav.write_text("id,text,label\n1,Aku seneng banget,positive\n2,Ora enak,negative\n3,Biasa wae,neutral\n"
                   "4,,positive\n5,Apik tenan,amazing\n6," + "dawa " * 100 + ",positive\n", encoding="utf-8")
    sun = tmp_path / "sun.jsonl"
    sun.write_text('{"id": 1, "text": "Abdi resep pisan", "label": "positive"}\nnot json\n'
                   '{"id": 2, "text": "Teu raos", "label": " negative "}\n', encoding="utf-8")
    data = {"name": "t", "country": "id", "max_turn_chars": 300, "templates": TEMPLATES,
            "sources": [{"files": {"jav": [str(jav)], "sun": [str(sun)]}}]}
    return InstructionSet.model_validate({**data, **over})


def test_labelled_records_become_chats_and_every_reject_is_written(tmp_path):
    stats = build(_spec(tmp_path), tmp_path / "out", log=lambda m: None)
    out = tmp_path / "out"
    rows = [json.loads(x) for x in (out / "data" / "train-00000.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (out / "rejects" / "rejects.jsonl").read_text().splitlines()]
    assert stats["totals"] == {"records_in": 9, "docs_out": len(rows), "rejected": len(rejects)} and len(rows) == 5
    assert Counter(r["reason"] for r in rejects) == {"empty_text": 1, "unknown_label": 1,
                                                     "turn_too_long": 1, "invalid_json": 1}
    assert stats["rejected"] == dict(Counter(r["reason"] for r in rejects))
    assert all(r["where"] and r["lang"] for r in rejects)
    by_id = {r["id"]: r for r in rows}
    assert sorted(by_id) == ["jav:1", "jav:2", "jav:3", "sun:1", "sun:2"]
    for r in rows:
        assert check_chat(r["messages"]) is None
        template = next(t for t in TEMPLATES if t["id"] == r["template"])
        assert r["messages"][-1] == {"role": "assistant", "content": template["answers"][r["label"]]}
        user = next(m["content"] for m in r["messages"] if m["role"] == "user")
        assert user.endswith({"jav:1": "Aku seneng banget", "sun:2": "Teu raos"}.get(r["id"], user[-3:]))
    assert "Javanese" in by_id["jav:1"]["messages"][0]["content"] or by_id["jav:1"]["template"] == "id"
    assert by_id["sun:2"]["label"] == "negative"  # labels are stripped before matching
    # Both wordings are used, and a rebuild gives the same records (the choice is a stable hash).
    assert {r["template"] for r in rows} == {"en", "id"}
    again = build(_spec(tmp_path), tmp_path / "out", overwrite=True, log=lambda m: None)
    assert again["templates"] == stats["templates"]
    assert [json.loads(x) for x in (out / "data" / "train-00000.jsonl").read_text().splitlines()] == rows
    # Inputs are hashed for the trainer's held-out check, and the data card says what was kept.
    assert {i["lang"] for i in stats["inputs"]} == {"jav", "sun"} and all(len(i["sha256"]) == 64 for i in stats["inputs"])
    card = (out / "DATA_CARD.md").read_text()
    assert "| jav | Javanese | 6 | 3 | 3 |" in card and "turn_too_long 1" in card


@pytest.mark.parametrize("messages, reason", [
    ([], "not_a_chat"),
    ("hello", "not_a_chat"),
    ([{"role": "user", "content": "hi"}], "role_order"),
    ([{"role": "assistant", "content": "hi"}], "role_order"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}], "role_order"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "system", "content": "c"}], "role_order"),
    ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "b"}], "empty_turn"),
    ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "bad_turn"),
    ([{"role": "user", "content": "a"}, {"role": "assistant"}], "bad_turn"),
    ([{"role": "user", "content": "a" * 11}, {"role": "assistant", "content": "b"}], "turn_too_long"),
])
def test_chat_checks_name_the_problem(messages, reason):
    assert check_chat(messages, max_turn_chars=10)[0] == reason


def test_good_chats_pass():
    assert check_chat([{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                       {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                       {"role": "assistant", "content": "d"}]) is None


def test_bad_recipes_and_outputs_get_clear_errors(tmp_path):
    bad = [dict(TEMPLATES[0]), {**TEMPLATES[1], "answers": {"positive": "positif"}}]
    with pytest.raises(ValueError, match="every template must answer every label"):
        _spec(tmp_path, templates=bad)
    with pytest.raises(UserError, match="not in the id profile"):
        build(_spec(tmp_path, sources=[{"files": {"xyz": [str(tmp_path / "jav.csv")]}}]), tmp_path / "o1")
    with pytest.raises(UserError, match="no such file"):
        build(_spec(tmp_path, sources=[{"files": {"jav": [str(tmp_path / "nope.csv")]}}]), tmp_path / "o2")
    assert not (tmp_path / "o2").exists()  # nothing half-written
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not an sft-data output"):
        build(_spec(tmp_path), tmp_path / "home", overwrite=True)
    assert (tmp_path / "home" / "keep.txt").exists()
    build(_spec(tmp_path), tmp_path / "o3", log=lambda m: None)
    with pytest.raises(UserError, match="pass --overwrite"):
        build(_spec(tmp_path), tmp_path / "o3")


def test_the_nusax_recipe_builds_all_twelve_languages(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["sft-data", "recipes/id/sft-data-nusax.yaml", "--output", str(tmp_path / "sft")]) == 0
    stats = json.loads((tmp_path / "sft" / "stats.json").read_text())
    assert len(stats["languages"]) == 12 and all(v["docs_out"] == 500 for v in stats["languages"].values())
    assert stats["totals"]["docs_out"] == 6000 and not stats["rejected"]
    prompts = {stats["templates"][t]["prompt_language"] for t in stats["templates"] if stats["templates"][t]["records"]}
    assert prompts == {"eng", "ind"}
    assert "6,000 records written" in capsys.readouterr().err


def test_the_trainer_reads_sft_data_and_rejects_bad_chats_by_reason(tmp_path, train_env):
    """A tiny SFT run on an sft-data output with a broken record added: the trainer counts it
    under the reason the builder gives, and trains on the rest."""
    from countrytune.artifacts.recipe import load_recipe
    from pipeline.train import train

    build(_spec(tmp_path), tmp_path / "sft", log=lambda m: None)
    with (tmp_path / "sft" / "data" / "train-00000.jsonl").open("a") as f:
        f.write(json.dumps({"id": "x", "lang": "jav", "messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    recipe = load_recipe(ROOT / "recipes" / "id" / "tiny-cpu.yaml", [
        "task=sft", f"data.sources=[{{path: {tmp_path / 'sft'}}}]", "data.eval_fraction=0",
        "training.max_steps=2", "training.eval_every=0", "training.save_every=0",
        "training.sequence_length=64", "tokenizer.train_vocab_size=300",
        "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64"])
    train(recipe, train_env / "run", progress=False)
    docs = json.loads((train_env / "run" / "run.json").read_text())["data_docs"]
    assert docs["read"] == 6 and docs["train"] == 5 and docs["rejected"] == {"role_order": 1}


def test_the_shipped_sft_recipes_and_suite_are_valid(shared_data, monkeypatch):
    from pipeline.scoring.suite import load_suite
    from countrytune.artifacts.recipe import load_recipe

    monkeypatch.chdir(ROOT)
    for name in ("smollm2-sft-lora.yaml", "sft-lora.yaml"):
        recipe = load_recipe(ROOT / "recipes" / "id" / name)
        assert recipe.task == "sft" and recipe.evaluation.suite == "recipes/id/heldout-sft.yaml"
    suite = load_suite(ROOT / "recipes" / "id" / "heldout-sft.yaml")
    assert all(p.is_file() for p in suite.files()) and len(suite.text) == 12
    chat, generate = suite.classification["nusax_sentiment_chat"], suite.classification["nusax_sentiment_generate"]
    assert chat.chat and generate.chat and (chat.scoring, generate.scoring) == ("multiple_choice", "generate")
    # The instruction the suite asks is one of the training wordings, and no training file is scored.
    spec = InstructionSet.model_validate(read_yaml(ROOT / "recipes" / "id" / "sft-data-nusax.yaml"))
    assert chat.prompt in {t.user for t in spec.templates}
    train_files = {p for s in spec.sources for files in s.files.values() for p in files}
    assert not train_files & {str(p) for p in suite.files()}
