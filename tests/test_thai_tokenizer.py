"""Thai through `countrytune tokenizer`: words are the Thailand profile's (PyThaiNLP), and
`tokenizer extend` on a few hundred real Thai sentences cuts Thai tokens per word while every
old token keeps its id. A tiny Llama whose byte-level BPE learnt only English stands in for
SmolLM2, which also reads Thai nearly byte by byte."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from countrytune.profiles import load_profile
from countrytune_cli import main
from tests.conftest import SHARED_DATA

PUD = SHARED_DATA / "pud"


def _pud(lang: str) -> list[str]:
    if not (PUD / f"{lang}-dev.csv").is_file():
        pytest.skip(f"PUD not found at {PUD} (the shared/ folder beside the checkout)")
    with (PUD / f"{lang}-dev.csv").open(encoding="utf-8", newline="") as f:
        return [r["text"] for r in csv.DictReader(f)]


def _jsonl(path: Path, texts: list[str], lang: str) -> Path:
    path.write_text("".join(json.dumps({"id": f"{lang}{i}", "text": t, "lang": lang}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def thai(tmp_path_factory) -> dict:
    """300 Thai sentences prepared for training, 40 others in a held-out suite with English,
    and a tiny base whose 300-token byte-level BPE learnt English only."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from data_prep.config import PrepConfig
    from data_prep.runner import run_prep
    from pipeline.training.tokenizer import train_tokenizer

    tha, eng = _pud("tha"), _pud("eng")
    tmp = tmp_path_factory.mktemp("thai")
    prep = tmp / "prep"
    run_prep(PrepConfig(inputs=[str(_jsonl(tmp / "train.jsonl", tha[40:340], "tha"))], output=str(prep),
                        country="th", stages=["normalize"], workers=1), overwrite=True, show_progress=False)
    suite = tmp / "heldout.yaml"
    suite.write_text(f"country: th\ntext:\n  tha: [{_jsonl(tmp / 'tha.jsonl', tha[:40], 'tha')}]\n"
                     f"  eng: [{_jsonl(tmp / 'eng.jsonl', eng[:40], 'eng')}]\n", encoding="utf-8")
    base = tmp / "base"
    tok = train_tokenizer(eng[40:], 300, base)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(base)
    return {"prep": prep, "suite": suite, "base": base, "heldout": tha[:40], "tmp": tmp}


def test_report_counts_thai_words_by_the_profiles_segmenter(thai):
    out = thai["tmp"] / "report.json"
    # no --country: the suite's country (th) says how each language splits into words
    assert main(["tokenizer", "report", "--suite", str(thai["suite"]), "--tokenizer", str(thai["base"]),
                 "--json", str(out)]) == 0
    (tha,) = [by["tha"] for by in json.loads(out.read_text()).values()]
    words = load_profile("th").words_of("tha")
    assert tha["words"] == sum(len(words(t)) for t in thai["heldout"])
    assert tha["words"] > 5 * sum(len(t.split()) for t in thai["heldout"])  # not white-space chunks


def test_extend_on_thai_cuts_tokens_per_word_and_keeps_every_old_id(thai):
    to, out = thai["tmp"] / "base-th", thai["tmp"] / "extend.json"
    assert main(["tokenizer", "extend", "--suite", str(thai["suite"]), "--base", str(thai["base"]),
                 "--corpus", str(thai["prep"]), "--add", "300", "--to", str(to), "--json", str(out)]) == 0
    fertility = json.loads(out.read_text())["tha"]
    before, after = fertility["before"], fertility["after"]
    assert before["words"] == after["words"] == sum(len(load_profile("th").words_of("tha")(t)) for t in thai["heldout"])
    assert after["tokens_per_word"] <= 0.7 * before["tokens_per_word"], fertility  # issue 27: 30% fewer
    old = json.loads((thai["base"] / "tokenizer.json").read_text(encoding="utf-8"))
    new = json.loads((to / "tokenizer.json").read_text(encoding="utf-8"))
    assert all(new["model"]["vocab"][t] == i for t, i in old["model"]["vocab"].items())
    assert [(t["content"], t["id"]) for t in new["added_tokens"]] == [(t["content"], t["id"]) for t in old["added_tokens"]]
    added = sorted(i for t, i in new["model"]["vocab"].items() if t not in old["model"]["vocab"])
    assert added == list(range(300, 600))  # the next free ids, after the 300 old ones
