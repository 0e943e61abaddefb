"""Held-out suites: files become lm-eval tasks, bad records become counted rejects, and the
statistics of base against adapter are right."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from countrytune.errors import UserError
from pipeline.scoring.harness import DocScores
from pipeline.scoring.compare import compare
from pipeline.scoring.suite import EvalSuite, load_suite, materialise
from tests.conftest import ROOT


def _suite(tmp_path) -> EvalSuite:
    jav = tmp_path / "jav.csv"
    jav.write_text("id,text,label\n1,Aku seneng banget,positive\n2,Ora enak,negative\n"
                   "3,Biasa wae,neutral\n4,,positive\n5,Apik tenan,amazing\n", encoding="utf-8")
    eng = tmp_path / "eng.jsonl"
    eng.write_text('{"text": "Good food."}\n{"text": ""}\nnot json\n{"text": "Slow service."}\n'
                   '{"text": "NUL\\u0000 inside"}\n', encoding="utf-8")
    return EvalSuite(country="id", text={"jav": [str(jav)], "eng": [str(eng)]},
                     classification={"sentiment": {
                         "files": {"jav": [str(jav)]}, "prompt": "{{text}}\nSentiment:",
                         "choices": {"negative": "negative", "neutral": "neutral", "positive": "positive"}}})


def test_sets_are_written_as_lm_eval_tasks_and_rejects_are_counted(tmp_path):
    sets = materialise(_suite(tmp_path), tmp_path / "out")
    by = {(s.task, s.lang): s for s in sets}
    assert sorted(by) == [("bits_per_byte", "eng"), ("bits_per_byte", "jav"), ("sentiment", "jav")]
    eng = by[("bits_per_byte", "eng")]
    # prep's reader rules: what prep would reject (here NUL bytes, issue 24) is never scored
    assert eng.docs == 2 and eng.rejected == {"empty_text": 1, "invalid_json": 1, "nul_bytes": 1}
    senti = by[("sentiment", "jav")]
    assert senti.docs == 3 and senti.rejected == {"unknown_label": 1, "empty_field": 1}
    rows = [json.loads(x) for x in senti.data.read_text().splitlines()]
    assert rows[0]["query"] == "Aku seneng banget\nSentiment:"
    assert rows[0]["choices"] == ["negative", "neutral", "positive"] and rows[0]["gold"] == 2
    # Every reject is written out with its reason: in = scored + rejected, per set.
    rejects = [json.loads(x) for x in (tmp_path / "out" / "heldout" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == sum(sum(s.rejected.values()) for s in sets)
    assert {r["reason"] for r in rejects} == {"empty_text", "invalid_json", "nul_bytes", "unknown_label", "empty_field"}
    task = yaml.safe_load((tmp_path / "out" / "tasks" / f"{senti.lm_eval_name}.yaml").read_text())
    assert task["include"] == "_multiple_choice_yaml"
    assert task["dataset_kwargs"]["data_files"]["test"] == str(senti.data.resolve())
    assert (tmp_path / "out" / "tasks" / "_multiple_choice_yaml").is_file()


def test_selection_caps_and_user_text(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("satu baris\ndua baris\ntiga baris\n", encoding="utf-8")
    sets = materialise(_suite(tmp_path), tmp_path / "out", tasks=["bits_per_byte"],
                       languages=["jav", "min"], extra_text={"min": [str(mine)]}, max_docs=2)
    assert [(s.task, s.lang, s.docs) for s in sets] == [("bits_per_byte", "jav", 2), ("bits_per_byte", "min", 2)]
    with pytest.raises(UserError, match="unknown evaluation task"):
        materialise(_suite(tmp_path), tmp_path / "out", tasks=["belebele"])
    with pytest.raises(UserError, match="no such file"):
        materialise(None, tmp_path / "out", extra_text={"jav": [str(tmp_path / "missing.jsonl")]})


def test_the_shipped_suite_is_valid_and_its_files_exist(shared_data, monkeypatch):
    monkeypatch.chdir(ROOT)
    suite = load_suite(ROOT / "recipes" / "id" / "heldout.yaml")
    assert "eng" in suite.text and {"jav", "sun", "min", "ban", "bug", "mad"} <= set(suite.text)
    assert all(p.is_file() for p in suite.files())


def test_bits_per_byte_and_its_paired_stderr():
    ids = ["a", "b", "c", "d"]
    base = DocScores("bits_per_byte", ids, [-100.0, -50.0, -80.0, -60.0], weights=[40, 20, 30, 25])
    better = DocScores("bits_per_byte", ids, [v * 0.8 for v in base.values], weights=base.weights)
    c = compare(base, better)
    assert c.base == pytest.approx(290 / 115 / math.log(2))
    assert c.adapter == pytest.approx(0.8 * c.base) and c.relative_diff == pytest.approx(-0.2)
    # The same documents move together: the paired stderr of the difference is far below what
    # independent errors would give (negative control: shuffled pairing is much noisier).
    assert c.stderr < 0.5 * math.hypot(c.base_stderr, c.adapter_stderr)
    shuffled = DocScores("bits_per_byte", ids, better.values[::-1], weights=base.weights)
    assert compare(base, shuffled).stderr > 2 * c.stderr
    with pytest.raises(ValueError, match="different documents"):
        compare(base, DocScores("bits_per_byte", ids[::-1], better.values, weights=base.weights))


def test_accuracy_and_macro_f1():
    ids = ["a", "b", "c", "d"]
    base = DocScores("acc", ids, [1, 0, 0, 1], predictions=[0, 0, 0, 2], gold=[0, 1, 2, 2])
    adapter = DocScores("acc", ids, [1, 1, 1, 1], predictions=[0, 1, 2, 2], gold=[0, 1, 2, 2])
    c = compare(base, adapter)
    assert (c.base, c.adapter, c.diff) == (0.5, 1.0, 0.5)
    assert c.macro_f1["adapter"] == 1.0
    assert c.macro_f1["base"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3)  # class 0: 1 right, 2 false alarms


def test_macro_f1_counts_answers_that_are_no_label_against_their_gold():
    ids = ["a", "b", "c", "d"]
    base = DocScores("exact_match", ids, [0, 0, 0, 0], predictions=[-1, -1, -1, -1], gold=[0, 1, 2, 2], classes=3)
    adapter = DocScores("exact_match", ids, [1, 1, 0, 1], predictions=[0, 1, -1, 2], gold=[0, 1, 2, 2], classes=3)
    c = compare(base, adapter)
    assert c.macro_f1["base"] == 0.0
    assert c.macro_f1["adapter"] == pytest.approx((1 + 1 + 2 / 3) / 3)  # class 2: 1 of 2 found, no false alarm
    assert c.macro_f1["diff"] == pytest.approx(c.macro_f1["adapter"]) and c.macro_f1["stderr"] > 0
    from countrytune.artifacts.results import HeldoutResults, markdown_table

    table = markdown_table(HeldoutResults({"t": {"jav": c}}))
    assert "| t | jav | exact_match | 4 |" in table and "| t | jav | macro_f1 | 4 | 0.0000 | 0.8889 |" in table
