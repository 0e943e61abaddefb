"""lm-evaluation-harness scores a model in memory: its numbers equal the model's own
log-likelihoods, and the adapter switched off is the base exactly."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.scoring.harness import score_model
from pipeline.scoring.suite import EvalSuite, materialise
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


CHAT = ("{% for m in messages %}<s>{{ m['role'] }} : {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant :{% endif %}")


@pytest.fixture(scope="module")
def chat_sets(tiny, tmp_path_factory):
    """The topic set asked through a chat template: by multiple choice and by generation."""
    from transformers import AutoTokenizer

    model, tok, _, _ = tiny
    root = tmp_path_factory.mktemp("chat")
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": s, "label": "abc"[i % 3]}) + "\n"
                               for i, s in enumerate(SENTENCES)), encoding="utf-8")
    spec = {"files": {"jav": [str(heldout)]}, "prompt": "{{text}} Tempat?", "choices": CHOICES, "chat": True}
    suite = EvalSuite(country="id", classification={"topic_mc": spec,
                                                    "topic_gen": {**spec, "scoring": "generate", "max_new_tokens": 4}})
    sets = materialise(suite, root / "eval")
    chat_tok = AutoTokenizer.from_pretrained(tok.name_or_path)
    chat_tok.chat_template = CHAT
    return model, chat_tok, sets, root / "eval" / "tasks"


def _chat_prompt(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": f"{text} Tempat?"}], tokenize=False,
                                   add_generation_prompt=True)


def test_chat_multiple_choice_scores_the_reply_after_the_template(chat_sets):
    model, tok, sets, tasks = chat_sets
    scores = score_model(model, tok, [s for s in sets if s.task == "topic_mc"], tasks, batch_size=4,
                         log=lambda m: None)["ct_topic_mc_jav"]
    assert scores.classes == 3
    for doc_id, pred in zip(scores.ids, scores.predictions):
        prompt = _chat_prompt(tok, SENTENCES[int(doc_id.rsplit(":", 1)[1]) - 1])
        context = tok(prompt, add_special_tokens=False)["input_ids"]
        # the answer word starts the assistant's reply: no space is put before it
        likelihoods = [_loglik(model, tok(prompt + word, add_special_tokens=False)["input_ids"], len(context))
                       for word in CHOICES.values()]
        assert pred == max(range(3), key=likelihoods.__getitem__)


def test_generated_answers_are_the_models_greedy_text_matched_to_the_labels(chat_sets):
    from pipeline.scoring.harness import answer_index

    model, tok, sets, tasks = chat_sets
    scores = score_model(model, tok, [s for s in sets if s.task == "topic_gen"], tasks, batch_size=4,
                         log=lambda m: None)["ct_topic_gen_jav"]
    assert scores.metric == "exact_match" and len(scores.outputs) == len(SENTENCES)
    for doc_id, output, pred in zip(scores.ids, scores.outputs, scores.predictions):
        prompt = _chat_prompt(tok, SENTENCES[int(doc_id.rsplit(":", 1)[1]) - 1])
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        mine = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
        assert output.strip() == mine.strip()
        assert pred == answer_index(output, list(CHOICES.values()))
    assert scores.values == [float(p == g) for p, g in zip(scores.predictions, scores.gold)]


def test_answers_match_labels_as_lm_evals_exact_match_does():
    from pipeline.scoring.harness import answer_index

    words = ["negative", "neutral", "positive"]
    assert answer_index(" Positive.", words) == 2 and answer_index("neutral\n", words) == 1
    assert answer_index("The sentiment is neutral.", words) == -1 and answer_index("", words) == -1


def test_a_chat_set_needs_a_chat_template(tiny, chat_sets):
    from countrytune.errors import UserError

    model, tok, _, _ = tiny
    _, _, sets, tasks = chat_sets
    with pytest.raises(UserError, match="has none"):
        score_model(model, tok, sets[:1], tasks, log=lambda m: None)
