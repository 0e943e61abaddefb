"""lm-evaluation-harness scores a model in memory: its numbers equal the model's own
log-likelihoods, and the adapter switched off is the base exactly."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.evaluation.harness import score_model
from pipeline.evaluation.suite import EvalSuite, materialise
from tests.export_fixtures import SENTENCES, make_base

CHOICES = {"a": "pasar", "b": "omah", "c": "desa"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("harness")
    base_dir, tok_dir = make_base(root)
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": s, "label": "abc"[i % 3]}) + "\n"
                               for i, s in enumerate(SENTENCES)), encoding="utf-8")
    suite = EvalSuite(country="id", text={"jav": [str(heldout)]}, classification={
        "topic": {"files": {"jav": [str(heldout)]}, "prompt": "{{text}} Tempat:", "choices": CHOICES}})
    sets = materialise(suite, root / "eval")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tok_dir), sets, root / "eval" / "tasks"


def _loglik(model, ids: list[int], context: int) -> float:
    """Sum of log p(token) for ids[context:] given everything before it."""
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(float(logp[i - 1, ids[i]]) for i in range(context, len(ids)))


def test_bits_per_byte_equals_the_models_own_loglikelihood(tiny):
    model, tok, sets, tasks = tiny
    scores = score_model(model, tok, sets, tasks, batch_size=4, log=lambda m: None)
    bpb = scores["ct_bits_per_byte_jav"]
    texts = [SENTENCES[int(i.rsplit(":", 1)[1]) - 1] for i in bpb.ids]  # ids are file:record
    assert sorted(texts) == sorted(SENTENCES)
    assert bpb.weights == [len(t.encode("utf-8")) for t in texts]
    # lm-eval scores every token of the document after one prefix token (BOS here).
    for text, got in zip(texts, bpb.values):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        assert got == pytest.approx(_loglik(model, ids, 1), rel=1e-4)


def test_multiple_choice_picks_the_likeliest_answer_word(tiny):
    model, tok, sets, tasks = tiny
    scores = score_model(model, tok, sets, tasks, batch_size=4, log=lambda m: None)
    topic = scores["ct_topic_jav"]
    rows = [int(i.rsplit(":", 1)[1]) - 1 for i in topic.ids]
    assert topic.gold == [r % 3 for r in rows]
    for text, pred in zip((SENTENCES[r] for r in rows), topic.predictions):
        context = tok(f"{text} Tempat:", add_special_tokens=False)["input_ids"]
        likelihoods = []
        for word in CHOICES.values():
            whole = tok(f"{text} Tempat: {word}", add_special_tokens=False)["input_ids"]
            likelihoods.append(_loglik(model, whole, len(context)))
        assert pred == max(range(3), key=likelihoods.__getitem__)


def test_adapter_off_is_the_base_exactly_and_on_is_not(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok, sets, tasks = tiny
    base = score_model(model, tok, sets, tasks, batch_size=4, log=lambda m: None)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    try:
        with peft_model.disable_adapter():
            off = score_model(peft_model, tok, sets, tasks, batch_size=4, log=lambda m: None)
        on = score_model(peft_model, tok, sets, tasks, batch_size=4, log=lambda m: None)
    finally:
        peft_model.unload()  # give the module-scoped base model back unchanged
    name = "ct_bits_per_byte_jav"
    assert off[name].values == base[name].values
    assert on[name].values != base[name].values  # negative control: the adapter does change them
