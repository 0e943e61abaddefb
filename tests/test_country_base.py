"""A country base from a tiny model: vocabulary extension that leaves every old token as it was,
training the new rows with LoRA, export as a base (merged weights equal the unmerged model),
and a plain LoRA on that base that vLLM can serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from countrytune_cli import main
from countrytune.errors import UserError
from pipeline.vocabulary import extend
from countrytune.artifacts.vocabulary_extension import RECORD_NAME
from pipeline.vocabulary.base import extend_base, read_corpus

HELDOUT = ["Kulo badhe tindak dhateng peken enjing menika.", "Abdi bade angkat ka pasar isuk-isuk pisan."]


def _tiny_base(out: Path, sample_prep: Path, tied: bool) -> Path:
    """A tiny Llama with a byte-level BPE tokenizer of 300 tokens, trained on the sample corpus;
    `tied`: one matrix for input embeddings and output head (SmolLM2, Gemma), else two (Llama 3)."""
    import pyarrow.parquet as pq
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.training.tokenizer import train_tokenizer

    texts = [r["text"] for p in sorted((sample_prep / "data").glob("*.parquet"))
             for r in pq.read_table(p, columns=["text"]).to_pylist()]
    tok = train_tokenizer(texts, 300, out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def _extend(base: Path, sample_prep: Path, to: Path) -> tuple[Path, dict]:
    corpus = read_corpus([sample_prep], None, 10**7)
    return to, extend_base(base, corpus, to, add=60, min_frequency=2, heldout={"jav": HELDOUT}, log=lambda m: None)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, sample_prep) -> Path:
    return _tiny_base(tmp_path_factory.mktemp("base") / "tiny", sample_prep, tied=False)


@pytest.fixture(scope="module")
def extended(tiny_base, sample_prep, tmp_path_factory) -> tuple[Path, dict]:
    return _extend(tiny_base, sample_prep, tmp_path_factory.mktemp("ext") / "tiny-ext")


def test_every_old_token_encodes_as_before_and_text_round_trips(tiny_base, extended):
    from transformers import AutoTokenizer

    to, record = extended
    old, new = AutoTokenizer.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(to)
    assert record["added_tokens"] == 60 and len(new) == len(old) + 60
    for token_id in range(len(old)):
        text = old.decode([token_id])
        assert new(text, add_special_tokens=False)["input_ids"] == old(text, add_special_tokens=False)["input_ids"]
    for text in HELDOUT:
        ids = new(text, add_special_tokens=False)["input_ids"]
        assert new.decode(ids) == text
        assert len(ids) <= len(old(text, add_special_tokens=False)["input_ids"])
    fert = record["fertility_on_heldout"]["jav"]
    assert fert["after"]["tokens"] < fert["before"]["tokens"]
    # The new rows start as their old pieces' mean, scaled to the pieces' mean norm.
    from safetensors.torch import load_file

    emb = load_file(to / "model.safetensors")["model.embed_tokens.weight"]
    first = record["new_tokens"][0]
    pieces = emb[first["old_pieces"]]
    expected = pieces.mean(0) * (pieces.norm(dim=1).mean() / pieces.mean(0).norm())
    assert torch.allclose(emb[first["id"]], expected, atol=1e-6)


def test_a_merge_that_would_change_an_old_token_is_refused(tiny_base):
    """Negative control for the check above: a new merge put before the old ones (as an added
    token would act) re-cuts an old token, and the extension is refused."""
    old = json.loads((tiny_base / "tokenizer.json").read_text())
    vocab, merges = old["model"]["vocab"], old["model"]["merges"]
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    # an old token built as (a, bc) whose first two characters a+b are no token of their own
    a, bc = next((a, bc) for a, bc in pairs if len(a) == 1 and len(bc) >= 2 and a + bc[0] not in vocab)
    bad = json.loads(json.dumps(old))
    bad["model"]["vocab"][a + bc[0]] = 1 + max(vocab.values())
    bad["model"]["merges"] = [[a, bc[0]] if isinstance(merges[0], list) else f"{a} {bc[0]}"] + merges
    with pytest.raises(RuntimeError, match="encode differently"):
        extend.check_old_tokens_unchanged(old, bad)


def test_bad_bases_and_corpora_get_clear_errors(tmp_path, sample_prep, tiny_base):
    with pytest.raises(UserError, match="not a `countrytune prep` output"):
        read_corpus([tmp_path], None, 100)
    (tmp_path / "nobase").mkdir()
    with pytest.raises(UserError, match="no tokenizer.json"):
        extend_base(tmp_path / "nobase", read_corpus([sample_prep], None, 10**6), tmp_path / "x", add=5,
                    min_frequency=2, heldout={}, log=lambda m: None)
    assert not (tmp_path / "x").exists()
    corpus = read_corpus([sample_prep], None, 10**6)
    with pytest.raises(UserError, match="1 or more"):
        extend_base(tiny_base, corpus, tmp_path / "y", add=0, min_frequency=2, heldout={}, log=lambda m: None)
    with pytest.raises(UserError, match="lower --min-frequency"):
        extend_base(tiny_base, corpus, tmp_path / "z", add=5, min_frequency=10**9, heldout={}, log=lambda m: None)
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    wordpiece = {"model": {"type": "WordPiece", "vocab": {}}}
    with pytest.raises(UserError, match="not a byte-pair-encoding"):
        extend.check_extendable(wordpiece, "t")


def _recipe(tmp_path: Path, base: Path, sample_prep: Path, name: str, *extra: str):
    from countrytune.artifacts.recipe import load_recipe

    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({
        "name": name, "country": "id", "task": "cpt", "model": {"name_or_path": str(base)},
        "data": {"sources": [{"path": str(sample_prep)}], "eval_fraction": 0},
        "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}, "optim": {"lr": 5.0e-3},
        "training": {"max_steps": 4, "sequence_length": 64, "micro_batch_size": 2, "eval_every": 0,
                     "save_every": 0}}))
    return load_recipe(path, list(extra))


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "separate-head"])
def test_new_rows_train_merge_into_a_country_base_and_plain_loras_on_it_serve(tied, sample_prep, train_env, capsys):
    """train_new_tokens trains the new rows with LoRA (held-out scoring before and after, as
    real bases do); export --as-base folds both into full weights whose logits equal the
    unmerged model's; a LoRA trained on the pulled base exports with no vLLM problem (the
    vocabulary is the base's own now)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.train import train

    base = _tiny_base(train_env / "tiny", sample_prep, tied)
    to, record = _extend(base, sample_prep, train_env / "tiny-ext")
    heldout = train_env / "heldout-jav.txt"
    heldout.write_text("\n".join(HELDOUT) + "\n", encoding="utf-8")
    suite = train_env / "suite.yaml"
    suite.write_text(json.dumps({"country": "id", "text": {"jav": [str(heldout)]}}), encoding="utf-8")
    run = train_env / "ext-run"
    outcome = train(_recipe(train_env, to, sample_prep, "tiny-ext", "lora.train_new_tokens=true",
                            f"evaluation.suite={suite}", "evaluation.before_and_after=true"), run, progress=False)
    assert json.loads((run / "run.json").read_text())["heldout_eval"]["bits_per_byte"]["jav"]["adapter"]
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["trainable_token_indices"]
    first, n = record["first_new_id"], record["added_tokens"]
    base_rows = AutoModelForCausalLM.from_pretrained(to).get_input_embeddings().weight
    trained = outcome.model.eval()
    with torch.no_grad():
        rows = trained.get_base_model().get_input_embeddings()(torch.arange(first, first + n))
    assert not torch.allclose(rows, base_rows[first:first + n])  # the new rows did train

    registry = train_env / "registry"
    # token rows cannot ship as a LoRA: export says so and names the way out
    assert main(["export", str(run), "--registry", str(registry), "--version", "1"]) == 2
    assert "trainable_token_indices" in capsys.readouterr().err
    assert main(["export", str(run), "--registry", str(registry), "--version", "1", "--as-base"]) == 0
    pulled = train_env / "country-base"
    assert main(["pull", "id/tiny-ext-base:1", "--registry", str(registry), "--to", str(pulled)]) == 0
    manifest = json.loads((pulled / "manifest.json").read_text())
    assert manifest["kind"] == "base" and (pulled / RECORD_NAME).is_file()
    assert "country base model" in (pulled / "README.md").read_text()
    merged = AutoModelForCausalLM.from_pretrained(pulled, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(pulled)
    ids = tok(HELDOUT[0], return_tensors="pt")["input_ids"]
    assert (ids >= first).any()  # the text uses new tokens
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, trained(input_ids=ids).logits, atol=1e-5)

    lora_run = train_env / "lora-on-base"
    train(_recipe(train_env, pulled, sample_prep, "on-country-base"), lora_run, progress=False)
    assert main(["export", str(lora_run), "--registry", str(registry), "--version", "1"]) == 0
    got = train_env / "on-base-pulled"
    assert main(["pull", "id/on-country-base:1", "--registry", str(registry), "--to", str(got)]) == 0
    lora_manifest = json.loads((got / "manifest.json").read_text())
    assert lora_manifest["compatibility"]["vllm_multi_lora"] is True
    assert lora_manifest["base_model"]["vocab_size"] == first + n


def test_the_corpus_is_balanced_and_read_only_as_far_as_needed(sample_prep):
    import pyarrow.parquet as pq

    shards = sorted((sample_prep / "data").glob("*.parquet"))
    every = read_corpus([sample_prep], None, 10**9)
    assert "eng" not in every.chars and len(every.inputs) == len(shards)  # English left out by default
    few = read_corpus([sample_prep], ["jav"], 50)
    assert set(few.chars) == {"jav"} and 50 <= few.chars["jav"] < 50 + max(len(t) for t in few.texts) + 1
    first_jav = next(i for i, p in enumerate(shards) if "jav" in set(pq.read_table(p, columns=["lang"])["lang"].to_pylist()))
    assert len(few.inputs) == first_jav + 1  # stopped at the shard that filled the share


def test_full_parameter_cpt_resumes_exactly_and_exports_a_country_base(sample_prep, train_env, capsys):
    """method: full on an extended base with a tied head: every weight trains, RUN/model is a
    complete model, a split run (its base scores lost between attempts, so the base is
    loaded again to score it) ends bit-identical to an uninterrupted one; export refuses a
    LoRA package and pushes a country base whose logits are the trained model's, and
    `countrytune eval` on the run gives the trainer's table."""
    from accelerate.state import AcceleratorState, GradientState
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from pipeline.train import train

    base = _tiny_base(train_env / "tiny", sample_prep, tied=True)
    to, record = _extend(base, sample_prep, train_env / "tiny-ext")
    heldout = train_env / "heldout-jav.txt"
    heldout.write_text("\n".join(HELDOUT) + "\n", encoding="utf-8")
    suite = train_env / "suite.yaml"
    suite.write_text(json.dumps({"country": "id", "text": {"jav": [str(heldout)]}}), encoding="utf-8")
    recipe = _recipe(train_env, to, sample_prep, "tiny-full", "method=full", "optim.lr=1e-3",
                     "training.save_every=2", f"evaluation.suite={suite}", "evaluation.before_and_after=true")
    outcome = train(recipe, train_env / "whole", progress=False)
    for stop in (2, None):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        train(recipe, train_env / "split", progress=False, stop_after=stop)
        (train_env / "split" / "heldout_eval" / "scores" / "base.json").unlink(missing_ok=True)
    whole, split = (load_file(train_env / r / "model" / "model.safetensors") for r in ("whole", "split"))
    assert whole.keys() == split.keys() and "model.embed_tokens.weight" in whole
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    parent = load_file(to / "model.safetensors")
    assert all(not torch.equal(whole[k], parent[k]) for k in whole if k.endswith("proj.weight"))
    runs = [json.loads((train_env / r / "run.json").read_text()) for r in ("whole", "split")]
    assert runs[0]["method"] == "full" and runs[0]["heldout_eval"] == runs[1]["heldout_eval"]
    bpb = runs[0]["heldout_eval"]["bits_per_byte"]["jav"]
    assert bpb["adapter"] != bpb["base"]

    out = train_env / "eval"
    assert main(["eval", "--adapter", str(train_env / "whole"), "--suite", str(suite), "--output", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())["bits_per_byte"]["jav"]
    assert again["base"] == pytest.approx(bpb["base"]) and again["adapter"] == pytest.approx(bpb["adapter"])

    registry = train_env / "registry"
    capsys.readouterr()
    assert main(["export", str(train_env / "whole"), "--registry", str(registry), "--version", "1"]) == 2
    assert "--as-base" in capsys.readouterr().err
    assert main(["export", str(train_env / "whole"), "--registry", str(registry), "--version", "1", "--as-base"]) == 0
    pulled = train_env / "pulled"
    assert main(["pull", "id/tiny-full-base:1", "--registry", str(registry), "--to", str(pulled)]) == 0
    manifest = json.loads((pulled / "manifest.json").read_text())
    assert manifest["kind"] == "base" and manifest["method"] == "full" and manifest["adapter"] is None
    assert (pulled / RECORD_NAME).is_file()  # the parent's vocabulary extension record travels
    assert "every weight trained" in (pulled / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(pulled, dtype=torch.float32).eval()
    ids = torch.tensor([[1, record["first_new_id"], 5, 9]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, outcome.model.eval()(input_ids=ids).logits)


def test_an_imported_base_keeps_its_provenance_with_one_more_derivation(tiny_base, sample_prep, tmp_path):
    """Extending a base that `countrytune model import` wrote (a provenance.json beside it): the
    extended model keeps the parent's licence and origin, lists its own files with their hashes,
    and names the parent (by its provenance's SHA-256) and the extension record."""
    import shutil

    from countrytune.artifacts.provenance import PROVENANCE_NAME, read_provenance
    from countrytune.hashing import sha256_file
    from tests.export_fixtures import write_import_provenance

    base = tmp_path / "imported"
    shutil.copytree(tiny_base, base)
    write_import_provenance(base, "tiny-imported", gguf_sha256="1" * 64)
    to, record = _extend(base, sample_prep, tmp_path / "extended")

    derived = read_provenance(to)
    assert derived.model_name == f"tiny-imported+{record['added_tokens']}tok"
    assert derived.licence.name == "Apache-2.0" and derived.source.gguf_sha256 == "1" * 64
    listed = {f.path: f.sha256 for f in derived.files}
    on_disk = {p.name: sha256_file(p) for p in to.iterdir() if p.name != PROVENANCE_NAME}
    assert listed == on_disk and RECORD_NAME in listed and "model.safetensors" in listed
    [step] = derived.derivations
    assert step.kind == "vocabulary_extension" and step.parent == str(base) and step.record == RECORD_NAME
    assert step.parent_model_name == "tiny-imported"
    assert step.parent_provenance_sha256 == sha256_file(base / PROVENANCE_NAME)
