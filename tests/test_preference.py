"""Preference tuning: the DPO loss against its definition computed answer by answer; the
verifier's order; and the whole chain in one process (sft-data -> SFT -> on-policy pairs ->
`task: dpo` starting from the SFT adapter -> export), recorded in run.json, manifest and card.
Two processes under DeepSpeed with exact resume: tests/test_train_distributed.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from tests.preference_fixtures import IND, JAV

TINY = ROOT / "recipes" / "id" / "tiny-cpu.yaml"


def _tiny_lm(vocab: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.training.model import add_lora
    from countrytune.artifacts.recipe import LoraSpec

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    return add_lora(model, LoraSpec(r=4, alpha=8), seed=0)


def _pairs_docs(rng, n_pairs: int):
    """Tokenised pairs: documents 2k (chosen) and 2k+1 (rejected), a prompt then a target answer."""
    from pipeline.training.packing import TokenizedDocs

    tokens, targets, offsets = [], [], [0]
    for _ in range(2 * n_pairs):
        prompt, answer = int(rng.integers(3, 8)), int(rng.integers(2, 6))
        tokens.append(rng.integers(1, 64, prompt + answer))
        targets.append(np.r_[np.zeros(prompt, bool), np.ones(answer, bool)])
        offsets.append(offsets[-1] + prompt + answer)
    return TokenizedDocs(np.concatenate(tokens).astype(np.int32), np.concatenate(targets),
                         np.asarray(offsets), np.zeros(2 * n_pairs, np.int16), ("jav",), np.zeros(2 * n_pairs, np.int16),
                         paired=True)


def _answer_logp(model, tokens: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    """log p(answer | prompt) of one chat alone, from the model's own logits."""
    ids = torch.as_tensor(tokens, dtype=torch.long)[None]
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)[0, :-1]
    picked = logp.gather(1, ids[0, 1:, None])[:, 0]
    return picked[torch.as_tensor(targets[1:])].sum()


@pytest.mark.parametrize("packing", [True, False])
def test_dpo_loss_on_packed_pairs_is_the_definition_pair_by_pair(packing):
    from pipeline.training.packing import layout_pairs
    from pipeline.training.preference_loss import PreferenceLossModel, pairs_in

    rng = np.random.default_rng(0)
    docs = _pairs_docs(rng, 5)
    model = _tiny_lm()
    beta = 0.3
    loss_model = PreferenceLossModel(model, beta)
    batch = layout_pairs(docs, docs.docs_of("jav"), 64, 0, packing=packing).materialise()
    assert (len(batch) < 5) == packing  # packed: several pairs a row
    as_dict = {"input_ids": batch.input_ids, "labels": batch.labels, "position_ids": batch.position_ids}
    assert pairs_in(as_dict) == 5
    # A fresh LoRA (B = 0) is the base: every margin is 0 and each pair costs log 2.
    assert loss_model(**as_dict).item() == pytest.approx(5 * math.log(2), rel=1e-6)
    with torch.no_grad():  # move the adapter away from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    expected = 0.0
    for k in range(5):
        sides = []
        for d in (2 * k, 2 * k + 1):
            tokens, targets = docs.doc(d)
            policy = _answer_logp(model, tokens, targets)
            with model.disable_adapter():
                reference = _answer_logp(model, tokens, targets)
            sides.append(policy - reference)
        expected += -torch.nn.functional.logsigmoid(beta * (sides[0] - sides[1])).item()
    assert loss_model(**as_dict).item() == pytest.approx(expected, rel=1e-4)
    # chosen_nll: each pair adds that weight times its chosen answer's NLL per target token.
    nll = 0.0
    for k in range(5):
        tokens, targets = docs.doc(2 * k)
        nll += -_answer_logp(model, tokens, targets).item() / int(targets[1:].sum())
    with_nll = PreferenceLossModel(model, beta, chosen_nll=0.5)
    assert with_nll(**as_dict).item() == pytest.approx(expected + 0.5 * nll, rel=1e-4)


def test_the_reference_is_the_adapter_the_run_started_from_held_frozen(tmp_path):
    """preference.reference initial (lora.init_from): the reference is the SFT model, so every
    pair starts at margin 0 (loss log 2) and stays measured against it while the trained
    copy moves; the output holds the trained adapter only. reference base: margins start at
    the SFT adapter's own log-ratios against the base."""
    from pipeline.training.builders import add_reference_adapter, load_initial_adapter
    from pipeline.training.packing import layout_pairs
    from pipeline.training.preference_loss import REFERENCE_ADAPTER, PreferenceLossModel
    from pipeline.training.trained_weights import AdapterWeights

    sft = _tiny_lm()
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    sft.save_pretrained(tmp_path / "sft")
    docs = _pairs_docs(np.random.default_rng(2), 5)
    batch = layout_pairs(docs, docs.docs_of("jav"), 64, 0, packing=True).materialise()
    as_dict = {"input_ids": batch.input_ids, "labels": batch.labels, "position_ids": batch.position_ids}

    against_base = _tiny_lm()
    load_initial_adapter(against_base, tmp_path / "sft")
    assert abs(PreferenceLossModel(against_base, 0.3)(**as_dict).item() - 5 * math.log(2)) > 0.05

    model = _tiny_lm()
    load_initial_adapter(model, tmp_path / "sft")
    add_reference_adapter(model, tmp_path / "sft")
    loss_model = PreferenceLossModel(model, 0.3)
    loss = loss_model(**as_dict)
    assert loss.item() == pytest.approx(5 * math.log(2), rel=1e-6)
    loss.backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if f".{REFERENCE_ADAPTER}." in n}
    assert trained and frozen and all(f".{REFERENCE_ADAPTER}." not in n for n in trained)
    assert all(p.grad is not None for n, p in trained.items() if "lora_A" in n)
    torch.optim.SGD(trained.values(), lr=1.0).step()
    expected = 0.0
    for k in range(5):
        sides = [_answer_logp(model, *docs.doc(d)) - _answer_logp(sft, *docs.doc(d)) for d in (2 * k, 2 * k + 1)]
        expected += -torch.nn.functional.logsigmoid(0.3 * (sides[0] - sides[1])).item()
    assert expected != pytest.approx(5 * math.log(2), rel=1e-3)  # the step moved the policy
    assert loss_model(**as_dict).item() == pytest.approx(expected, rel=1e-4)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)

    AdapterWeights(model).save(tmp_path / "out", is_main=True)
    assert not (tmp_path / "out" / REFERENCE_ADAPTER).exists()
    from safetensors.torch import load_file

    assert load_file(tmp_path / "out" / "adapter_model.safetensors").keys() == \
        load_file(tmp_path / "sft" / "adapter_model.safetensors").keys()


def test_a_pair_longer_than_a_row_is_refused_with_the_length_it_needs():
    from countrytune.errors import UserError
    from pipeline.training.packing import layout_pairs

    docs = _pairs_docs(np.random.default_rng(1), 3)
    with pytest.raises(UserError, match="training.sequence_length to at least"):
        layout_pairs(docs, docs.docs_of("jav"), 8, 0, packing=True)


def test_verifier_prefers_the_asked_language_then_the_closer_answer():
    from pipeline.preference.verifier import Prompt, Verifier

    verifier = Verifier("id", chosen_fallback="reference")
    prompt = Prompt("translation:ind>jav:1", "jav", "translation",
                    [{"role": "user", "content": "Terjemahkan ke bahasa Jawa: " + IND[0]}], JAV[0], "t")
    ranked = verifier.rank(prompt, [IND[0], "Aku lunga menyang pasar.", JAV[0], ""])
    assert ranked.chosen[0] == JAV[0] and ranked.chosen[1].language == "jav"
    assert ranked.rejected[0] == IND[0] and ranked.rejected_because == "wrong language (ind)"
    # No sample in Javanese: the reference stands as the chosen answer, and says so.
    ranked = verifier.rank(prompt, [IND[0], IND[1]])
    assert ranked.chosen == (JAV[0], ranked.chosen[1]) and ranked.chosen[1].origin == "reference"
    assert Verifier("id", chosen_fallback="skip").rank(prompt, [IND[0], IND[1]]).reason == "no_sample_passed"
    # Labels: the right word wins, however it is written; all right: nothing to prefer.
    label = Prompt("sentiment:jav:1", "jav", "classification", [{"role": "user", "content": "?"}], "positif", "t")
    ranked = verifier.rank(label, ["negatif", "Positif."])
    assert ranked.chosen[0] == "Positif." and ranked.rejected_because == "wrong label"
    assert verifier.rank(label, ["positif", "Positif, jelas."]).reason == "no_preference"
    # Answers that differ in case or punctuation only teach punctuation: no pair, also when one
    # is the reference standing in.
    assert verifier.rank(label, ["positif", "Positif!"]).reason == "same_answers"
    assert verifier.rank(prompt, [JAV[0], JAV[0].upper() + " !"]).reason == "same_answers"
    assert verifier.rank(prompt, [JAV[0].upper()], finished=[False]).reason == "same_answers"
    # Two translations in the language asked whose chrF++ differ by less than min_chrf_gap: the
    # preference would be a sentence score's noise.
    close = [JAV[0], JAV[0].replace(".", "") + " wae."]
    scores = [j.score for j in verifier.judge_answers(prompt, close, [True, True])]
    assert 0 < abs(scores[0] - scores[1]) < 20
    assert Verifier("id", "reference", min_chrf_gap=20).rank(prompt, close).reason == "chrf_too_close"
    assert Verifier("id", "reference", min_chrf_gap=0).rank(prompt, close).chosen[0] == JAV[0]
    # A cut-off answer (no end of turn within max_new_tokens) is never chosen, however close:
    # the finished one is, and the cut-off one is the rejected side.
    ranked = verifier.rank(prompt, [JAV[0], JAV[1]], finished=[False, True])
    assert ranked.chosen[0] == JAV[1] and ranked.rejected[0] == JAV[0]
    assert ranked.rejected_because == "cut off at max_new_tokens" and not ranked.rejected[1].finished
    ranked = verifier.rank(label, ["Positif. Positif. Positif", "negatif"], finished=[False, True])
    assert ranked.chosen[1].origin == "reference" and ranked.chosen_because == "reference: no sample with the right label"
    ranked = verifier.rank(prompt, [JAV[0], IND[0]], finished=[False, True])
    assert ranked.chosen[1].origin == "reference" and ranked.rejected[0] == IND[0]
    assert ranked.chosen_because == "reference: every passing sample cut off at max_new_tokens"


def test_the_sampler_folds_the_adapter_into_the_weights_and_keeps_the_policy_s_logits(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.preference.sampling import Policy, Sampler
    from tests.export_fixtures import make_base

    base, tokenizer = make_base(tmp_path)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(1)
    for name, p in policy.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: an adapter that changes nothing proves nothing
            p.data.normal_(0, 0.05)
    policy.save_pretrained(tmp_path / "adapter")
    sampler = Sampler(Policy(tmp_path, str(base), tmp_path / "adapter", str(tokenizer)), temperature=1.0,
                      top_p=1.0, max_new_tokens=4, seed=0)
    assert not [n for n, _ in sampler.model.named_parameters() if "lora" in n]
    ids = torch.randint(4, 200, (2, 12))
    with torch.no_grad():
        want, got = policy.eval()(ids).logits, sampler.model(ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    assert (want - base_logits).abs().max() > 1e-2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_an_adapter_stays_apart_where_folding_it_in_would_change_it(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from countrytune.hf_models import for_inference
    from tests.export_fixtures import make_base

    base, _ = make_base(tmp_path)
    bf16 = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16),
                          LoraConfig(r=4, target_modules="all-linear"))
    new_token_rows = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                    LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices=[5, 6]))
    plain = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"]))
    assert for_inference(bf16) is bf16 and for_inference(new_token_rows) is new_token_rows
    assert for_inference(plain) is not plain


def test_a_contrast_pair_sets_the_reference_against_the_same_sentence_in_another_language():
    from countrytune.artifacts.preference import Judgement
    from pipeline.preference.contrast import ParallelSentences, contrast
    from pipeline.preference.verifier import Prompt, Ranked

    sun = ["Abdi angkat ka pasar enjing ieu.", "Ibu masak sangu goreng di dapur.", JAV[2].upper()]
    def record(src, tgt, i, answer):
        return {"id": f"translation:{src}>{tgt}:{i}", "lang": tgt,
                "messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": answer}]}
    records = [record("ind", "jav", i, JAV[i]) for i in range(3)] + [record("ind", "sun", i, sun[i]) for i in range(3)]
    records += [record("jav", "ind", i, IND[i]) for i in range(3)]
    records += [{"id": "sentiment:jav:0", "lang": "jav", "messages": [{"role": "assistant", "content": "positif"}]}]
    parallel = ParallelSentences(records)
    asked = [Prompt(f"translation:ind>jav:{i}", "jav", "translation", [{"role": "user", "content": "?"}], JAV[i], "t")
             for i in range(3)]
    assert parallel.others(asked[0]) == {"sun": sun[0], "ind": IND[0]}
    assert parallel.others(Prompt("sentiment:jav:0", "jav", "classification", [], "positif", "t")) == {}

    def drifted(lang):
        return Ranked(None, ("x", Judgement(origin="sample", language=lang, language_ok=False, score=0.0, why="")))
    # The language the worst sample drifted into, when the sentence is there in it, even
    # outside the spec's languages (a copied Indonesian source).
    for lang in ("sun", "ind"):
        other, pair = contrast(asked[0], drifted(lang), parallel, ["jav", "sun"], 0)
        assert other == lang and pair.chosen[0] == JAV[0] and pair.rejected[0] == parallel.others(asked[0])[lang]
        assert pair.chosen[1].origin == "reference" and pair.rejected[1].origin == "parallel"
        assert pair.rejected[1].language == lang and not pair.rejected[1].language_ok and 0 < pair.rejected[1].score < 100
    # No drift (or into a language the sentence is not in): one of the spec's languages.
    assert contrast(asked[1], Ranked(None, None, reason="no_preference"), parallel, ["jav", "sun"], 0)[0] == "sun"
    assert contrast(asked[1], drifted("mad"), parallel, ["jav", "sun"], 0)[0] == "sun"
    assert contrast(asked[1], drifted("mad"), parallel, ["jav"], 0)[1].reason == "no_parallel_sentence"
    # The same words in both languages teach nothing.
    assert contrast(asked[2], drifted("sun"), parallel, None, 0)[1].reason == "same_answers"


def _sft_data(tmp_path: Path) -> Path:
    from data_prep.instructions import InstructionSet, build

    for lang, sentences in (("ind", IND), ("jav", JAV)):
        rows = "".join(f"{i},\"{s}\"\n" for i, s in enumerate(sentences))
        (tmp_path / f"{lang}.csv").write_text("id,text\n" + rows, encoding="utf-8")
    spec = InstructionSet.model_validate({"name": "t", "country": "id", "tasks": [{
        "name": "translation", "kind": "translation",
        "sources": [{"files": {lang: [str(tmp_path / f"{lang}.csv")] for lang in ("ind", "jav")}}],
        "directions": [["ind", "jav"], ["jav", "ind"]],
        "language_names": {"eng": {"ind": "Indonesian", "jav": "Javanese"}},
        "templates": [{"id": "en", "prompt_language": "eng",
                       "user": "Translate this {{source_language}} sentence into {{target_language}}.\n\n{{text}}"}]}]})
    build(spec, tmp_path / "sft-data", log=lambda m: None)
    return tmp_path / "sft-data"


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_sft_then_on_policy_pairs_then_dpo_from_the_sft_adapter_recorded_to_the_card(tmp_path, train_env):
    from countrytune.artifacts.manifest import read_manifest
    from countrytune.artifacts.prep_output import read_stats
    from countrytune.artifacts.recipe import load_recipe
    from countrytune.hashing import sha256_file
    from pipeline.export import export_run, pull
    from pipeline.preference.pairs import PairsSpec, build
    from pipeline.train import train

    chats = _sft_data(tmp_path)
    common = ["training.sequence_length=512", "training.eval_every=0", "training.save_every=0",
              "training.log_every=1", "model.tiny.hidden_size=32", "model.tiny.intermediate_size=64"]
    sft = train_env / "sft"
    train(load_recipe(TINY, common + ["task=sft", f"data.sources=[{{path: {chats}}}]", "training.max_steps=2",
                                      "tokenizer.train_vocab_size=300", "data.eval_fraction=0"]), sft, progress=False)
    _reset_accelerate()

    spec = PairsSpec(name="t", country="id", prompts=str(chats), samples_per_prompt=3, max_new_tokens=10,
                     max_prompts_per_language=4, batch_size=4, contrast_pairs=True)
    stats = build(spec, sft, tmp_path / "pairs", log=lambda m: None, progress=False)
    written = read_stats(tmp_path / "pairs" / "stats.json")
    assert written.kind == "preference-pairs"
    # 8 prompts (4 a direction), each translation prompt one contrast pair more.
    assert stats["preference"]["prompts"] == 8 and stats["preference"]["contrast_pairs"] == {"tried": 8, "written": 8}
    assert written.totals.records_in == 16 == written.totals.docs_out + written.totals.rejected
    pairs = [json.loads(x) for x in (tmp_path / "pairs" / "data" / "train-00000.jsonl").read_text().splitlines()]
    assert len(pairs) == written.totals.docs_out > 8
    assert all(p["chosen"] != p["rejected"] and p["chosen_judgement"]["why"] for p in pairs)
    contrasts = [p for p in pairs if p["id"].startswith("contrast:")]
    # The rejected side is the prompt's own sentence in the other language (here the source).
    assert len(contrasts) == 8 and all(
        p["rejected"] == (IND if p["lang"] == "jav" else JAV)[int(p["source"].rsplit(":", 1)[1])] for p in contrasts)
    assert all(p["rejected_judgement"]["origin"] == "parallel" and p["chosen_judgement"]["origin"] == "reference"
               for p in contrasts)
    assert "8 contrast pairs tried" in (tmp_path / "pairs" / "DATA_CARD.md").read_text()
    assert stats["preference"]["adapter"]["weights_sha256"] == sha256_file(sft / "adapter" / "adapter_model.safetensors")
    assert sum(stats["preference"]["chosen_because"].values()) == len(pairs)

    dpo = train_env / "dpo"
    train(load_recipe(TINY, common + [
        "task=dpo", f"data.sources=[{{path: {tmp_path / 'pairs'}}}]", "training.max_steps=3", "optim.lr=1e-2",
        "model.tiny=null", f"model.name_or_path={sft / 'base_model'}", f"tokenizer.name_or_path={sft / 'tokenizer'}",
        f"lora.init_from={sft / 'adapter'}", "tokenizer.train_vocab_size=null", "data.eval_fraction=0.3"]), dpo, progress=False)
    record = json.loads((dpo / "run.json").read_text())
    assert record["task"] == "dpo"
    assert record["initial_adapter"]["weights_sha256"] == stats["preference"]["adapter"]["weights_sha256"]
    assert record["preference"]["beta"] == 0.1 and "started from" in record["preference"]["reference"]
    assert record["preference"]["pairs"][0]["chosen_because"] == stats["preference"]["chosen_because"]
    logged = [json.loads(x) for x in (dpo / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert len(logged) == 3 and all(0 <= m["train/reward_accuracy"] <= 1 for m in logged)
    # The reference is the SFT adapter the run starts from: step 1 sees every margin at 0.
    assert logged[0]["train/loss"] == pytest.approx(math.log(2), rel=1e-4)
    assert logged[0]["train/reward_margin"] == pytest.approx(0, abs=1e-6)
    assert logged[-1]["train/loss"] < logged[0]["train/loss"]
    for e in record["eval"].values():
        assert e["pairs"] >= 1 and e["perplexity"] is None

    package = pull(export_run(dpo, str(tmp_path / "registry"), "1"), str(tmp_path / "registry"), tmp_path / "pulled")
    manifest = read_manifest(package)
    assert manifest.preference.pairs[0]["verifier"] and manifest.initial_adapter.path == str((sft / "adapter").resolve())
    card = (package / "README.md").read_text()
    assert "Preference tuning (DPO)" in card and "## Preference tuning" in card and "why chosen" in card
    assert "8 of the pairs are contrast pairs" in card


def test_a_dpo_recipe_refuses_what_it_cannot_score():
    from countrytune.errors import UserError
    from countrytune.artifacts.recipe import load_recipe

    with pytest.raises(UserError, match="method: full has no adapter"):
        load_recipe(TINY, ["task=dpo", "method=full"])
    with pytest.raises(UserError, match="fused"):
        load_recipe(TINY, ["task=dpo", "kernels.fused_linear_cross_entropy=true"])


def test_an_initial_adapter_of_another_shape_is_refused(tmp_path):
    from countrytune.errors import UserError
    from pipeline.training.builders import load_initial_adapter

    model = _tiny_lm()
    model.save_pretrained(tmp_path / "r4")
    other = _tiny_lm()
    other.peft_config["default"].r = 8  # what the adapter's config says must be the recipe's
    with pytest.raises(UserError, match="has r 4, the recipe 8"):
        load_initial_adapter(other, tmp_path / "r4")
