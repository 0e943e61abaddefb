"""Generative scoring: translation by chrF++ (sacrebleu's CHRF(word_order=2)) and whether an
answer is in the language asked for, by prep's own language identifier."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sacrebleu.metrics import CHRF

from pipeline.scoring.generative import LanguageJudge, chrf_documents, consistent, corpus_chrf

IND = ["Saya pergi ke pasar pagi ini.", "Hujan turun deras sejak sore.", "Anak-anak bermain di halaman rumah."]
JAV = ["Aku lunga menyang pasar esuk iki.", "Udan deres wiwit sore.", "Bocah-bocah dolanan ing latar omah."]


def test_chrf_pp_of_a_perfect_and_an_empty_answer():
    values, _ = chrf_documents([JAV[0], ""], [JAV[0], JAV[0]])
    assert values == [100.0, 0.0]


def test_per_document_and_corpus_chrf_pp_are_sacrebleus():
    hyps = ["Aku lunga pasar esuk.", "Udan deres banget.", "Bocah dolanan ing omah."]
    values, stats = chrf_documents(hyps, JAV)
    metric = CHRF(word_order=2)
    assert values == pytest.approx([metric.sentence_score(h, [r]).score for h, r in zip(hyps, JAV)])
    assert float(corpus_chrf(np.asarray(stats, dtype=float))) == pytest.approx(metric.corpus_score(hyps, [JAV]).score)
    # negative control: chrF (no word n-grams) is another number
    assert metric.corpus_score(hyps, [JAV]).score != pytest.approx(CHRF().corpus_score(hyps, [JAV]).score)
    # a resample of every document once is the corpus score
    assert corpus_chrf(np.asarray(stats, dtype=float)[np.array([[0, 1, 2]])])[0] == pytest.approx(values and
                                                                                               metric.corpus_score(hyps, [JAV]).score)


def _first_text(path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.DictReader(f))["text"]


def test_a_javanese_answer_to_a_javanese_request_is_consistent_and_an_english_one_is_not(shared_data):
    sentiment = shared_data / "nusax" / "sentiment"
    javanese, english = _first_text(sentiment / "javanese" / "valid.csv"), _first_text(sentiment / "english" / "valid.csv")
    languages = LanguageJudge("id").languages([javanese, english, "", "123 ..."])
    assert languages[:2] == ["jav", "eng"]
    assert consistent(languages, "jav") == [1.0, 0.0, 0.0, 0.0]  # no letters: no language at all


@pytest.fixture(scope="module")
def translation_eval(tmp_path_factory):
    """`countrytune eval` of a tiny random base and a random LoRA on a 3-sentence suite."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from countrytune_cli import main
    from tests.export_fixtures import make_base

    root = tmp_path_factory.mktemp("translation")
    base_dir, tok_dir = make_base(root)
    files = {}
    for lang, sentences in (("ind", IND), ("jav", JAV)):
        files[lang] = root / f"{lang}.jsonl"
        files[lang].write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences), encoding="utf-8")
    suite = {"country": "id", "translation": {"mt": {
        "prompt": "{{source_language}} ke {{target_language}}: {{text}} =", "max_new_tokens": 6,
        "language_names": {"ind": "Indonesia", "jav": "Jawa"},
        "directions": {"ind-jav": {"source": [str(files["ind"])], "reference": [str(files["jav"])]},
                       "jav-ind": {"source": [str(files["jav"])], "reference": [str(files["ind"])]}}}}}
    (root / "suite.yaml").write_text(yaml.safe_dump(suite), encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2.0, generator=torch.Generator().manual_seed(0))
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(adapter)
    out = root / "eval"
    assert main(["eval", "--base", str(base_dir), "--adapter", str(adapter), "--suite", str(root / "suite.yaml"),
                 "--output", str(out)]) == 0
    return out


def test_translation_rows_have_corpus_chrf_pp_and_a_paired_stderr(translation_eval):
    from countrytune.artifacts.results import RESULTS_NAME, read_results

    res = read_results(translation_eval / RESULTS_NAME).root
    assert set(res) == {"mt", "mt_language"}
    assert set(res["mt"]) == {"ind-jav", "jav-ind"} and set(res["mt_language"]) == {"ind", "jav"}
    scores = {label: json.loads((translation_eval / "scores" / f"{label}.json").read_text(encoding="utf-8"))
              for label in ("base", "adapter")}
    for direction, row in res["mt"].items():
        target = direction.split("-")[1]
        refs = JAV if target == "jav" else IND
        assert row.metric == "chrf++" and row.docs == 3
        assert row.stderr is not None and row.stderr >= 0 and row.adapter is not None
        for label, value in (("base", row.base), ("adapter", row.adapter)):
            doc = scores[label][f"ct_mt_{direction}"]
            order = [int(i.rsplit(":", 1)[1]) - 1 for i in doc["ids"]]
            wanted = [refs[i] for i in order]
            assert value == pytest.approx(CHRF(word_order=2).corpus_score(doc["outputs"], [wanted]).score)
            assert doc["values"] == pytest.approx([CHRF(word_order=2).sentence_score(h, [r]).score
                                                   for h, r in zip(doc["outputs"], wanted)])
            assert doc["target"] == target and len(doc["languages"]) == 3
        assert row.diff == pytest.approx(row.adapter - row.base)
        sources = [(IND if target == "jav" else JAV)[i] for i in order]  # copying the input scores this
        assert row.copy_source == pytest.approx(CHRF(word_order=2).corpus_score(sources, [wanted]).score)
        assert 0 < row.copy_source < 100
    for lang, row in res["mt_language"].items():
        assert row.metric == "language_consistency" and row.docs == 3 and 0 <= row.base <= 1
        langs = scores["base"][f"ct_mt_{'jav' if lang == 'ind' else 'ind'}-{lang}"]["languages"]
        assert row.base == pytest.approx(sum(x == lang for x in langs) / 3)


def test_translation_tasks_are_stock_lm_eval_tasks(translation_eval):
    text = (translation_eval / "tasks" / "ct_mt_ind-jav.yaml").read_text(encoding="utf-8")
    assert "include: _translate_yaml" in text and '"max_gen_toks": 6' in text
    assert (translation_eval / "tasks" / "ct_chrf.py").is_file()
    rows = [json.loads(x) for x in (translation_eval / "heldout" / "mt_ind-jav.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == JAV and rows[0]["query"] == f"Indonesia ke Jawa: {IND[0]} ="


def test_another_adapter_reuses_the_base_scores_only_where_they_are_the_same(translation_eval, tmp_path, capsys):
    """--base-scores: the base as an earlier eval scored it, refused when the model's settings,
    the records or the task (here max_new_tokens) differ."""
    import yaml

    from countrytune_cli import main

    root = translation_eval.parent
    args = ["eval", "--base", str(root / "base_model"), "--adapter", str(root / "adapter"), "--base-scores", str(translation_eval)]
    assert main([*args, "--suite", str(root / "suite.yaml"), "--output", str(tmp_path / "again")]) == 0
    for name in ("scores/base.json", "scores/adapter.json", "results.json"):
        assert (tmp_path / "again" / name).read_text() == (translation_eval / name).read_text(), name
    assert main([*args, "--suite", str(root / "suite.yaml"), "--batch-size", "3", "--output", str(tmp_path / "b")]) == 2
    assert "scored with batch_size 8, this eval's is 3" in capsys.readouterr().err
    suite = yaml.safe_load((root / "suite.yaml").read_text(encoding="utf-8"))
    suite["translation"]["mt"]["max_new_tokens"] = 7
    (tmp_path / "longer.yaml").write_text(yaml.safe_dump(suite), encoding="utf-8")
    assert main([*args, "--suite", str(tmp_path / "longer.yaml"), "--output", str(tmp_path / "c")]) == 2
    assert "held-out set ct_mt_ind-jav differs there" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    # negative control: without --base-scores the same command scores the base itself
    assert main([*args[:-2], "--suite", str(tmp_path / "longer.yaml"), "--output", str(tmp_path / "c")]) == 0


def test_unparallel_files_are_refused(tmp_path):
    from countrytune.errors import UserError
    from pipeline.scoring.suite import EvalSuite, materialise

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("satu\ndua\n", encoding="utf-8")
    b.write_text("siji\n", encoding="utf-8")
    suite = EvalSuite(country="id", translation={"mt": {"directions": {"ind-jav": {"source": [str(a)],
                                                                                   "reference": [str(b)]}}}})
    with pytest.raises(UserError, match="parallel"):
        materialise(suite, tmp_path / "out")
    with pytest.raises(ValueError, match="source"):
        EvalSuite(country="id", translation={"mt": {"directions": {"jav": {"source": [], "reference": []}}}})
