"""The training loop in one process: recipes end to end on the sample corpus, accumulation
equivalence, assistant-only loss, other architectures, trackers, resume in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from countrytune.artifacts.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "id" / "tiny-cpu.yaml"


def _recipe(prep: Path, *overrides: str):
    base = [f"data.sources=[{{path: {prep}}}]", "training.max_steps=4", "training.eval_every=0",
            "training.save_every=0", "training.log_every=2", "training.sequence_length=64",
            "tokenizer.train_vocab_size=400", "model.tiny.hidden_size=32",
            "model.tiny.intermediate_size=64", "data.eval_fraction=0.2"]
    return load_recipe(TINY, base + list(overrides))


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_tiny_recipe_trains_and_writes_a_complete_run(sample_prep, train_env):
    from pipeline.train import train

    run = train_env / "run"
    train(_recipe(sample_prep, "training.max_steps=6", "tracking.trackers=[wandb, tensorboard]"),
          run, progress=False)
    expected = {"recipe.yaml", "run.json", "metrics.jsonl", "eval.jsonl", "DONE", "adapter",
                "tokenizer", "base_model", "wandb", "tensorboard"}
    assert expected <= {p.name for p in run.iterdir()}
    assert list((run / "wandb").glob("offline-run-*")), "wandb ran offline in the run dir"
    adapter = _adapter(run)
    assert adapter and all(v.numel() for v in adapter.values())
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items()), "B trained"
    record = json.loads((run / "run.json").read_text())
    assert record["metrics"]["steps"] == 6
    langs = set(record["eval"])
    assert {"ind", "jav", "sun"} <= langs
    for r in record["eval"].values():
        assert r["tokens"] > 0 and r["perplexity"] == pytest.approx(2.718281828 ** r["loss"], rel=1e-6)
    shards = record["data"][0]["shards"]
    assert shards and all(len(s["sha256"]) == 64 for s in shards)
    docs = record["data_docs"]
    assert docs["read"] == docs["train"] + docs["eval"] + sum(docs["rejected"].values())
    losses = [json.loads(x)["train/loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in x]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_accumulation_1x8_equals_8x1(sample_prep, train_env):
    from pipeline.train import train

    runs = {}
    for name, mb, ga in (("1x8", 8, 1), ("8x1", 1, 8)):
        recipe = _recipe(sample_prep, "training.max_steps=2", f"training.micro_batch_size={mb}",
                         f"training.gradient_accumulation_steps={ga}")
        runs[name] = train_env / name
        train(recipe, runs[name], progress=False)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    a, b = _adapter(runs["1x8"]), _adapter(runs["8x1"])
    assert a.keys() == b.keys()
    for k in a:
        # Same rows, same token count in the denominator; only the order of fp32 sums
        # differs (one batched matmul vs eight), ~1e-7 relative per op over 2 Adam steps.
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    # And a per-micro-batch mean would NOT be equal: rows carry different token counts.
    rows_tokens = json.loads((runs["1x8"] / "run.json").read_text())["metrics"]["tokens"]
    assert rows_tokens == 2 * 8 * 64


@pytest.mark.parametrize("arch", ["qwen2", "gemma"])
def test_other_architectures_train(sample_prep, train_env, arch):
    from pipeline.train import train

    run = train_env / arch
    train(_recipe(sample_prep, f"model.tiny.architecture={arch}", "training.max_steps=2"), run,
          progress=False)
    config = json.loads((run / "base_model" / "config.json").read_text())
    assert config["model_type"] == arch
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 8


def test_in_process_resume_matches_uninterrupted(sample_prep, train_env):
    from accelerate.state import AcceleratorState, GradientState

    from pipeline.train import train

    recipe = _recipe(sample_prep, "training.max_steps=6", "training.save_every=3",
                     "lora.dropout=0.1")  # dropout: the RNG state must be restored too
    train(recipe, train_env / "full", progress=False)
    for stop in (3, None):
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        train(recipe, train_env / "split", progress=False, stop_after=stop)
    a, b = _adapter(train_env / "full"), _adapter(train_env / "split")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _chats(path: Path, n: int = 40) -> Path:
    rows = []
    for i in range(n):
        rows.append({"id": f"c{i}", "lang": "ind" if i % 2 else "jav", "messages": [
            {"role": "system", "content": "Jawab dengan singkat."},
            {"role": "user", "content": f"Berapa {i} tambah {i}?"},
            {"role": "assistant", "content": f"Hasilnya {2 * i}."},
            {"role": "user", "content": "Terima kasih."},
            {"role": "assistant", "content": "Sama-sama."}]})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_assistant_only_mask(tmp_path):
    from pipeline.training.data import assistant_target_mask
    from pipeline.training.tokenizer import train_tokenizer

    chats = [json.loads(x) for x in _chats(tmp_path / "c.jsonl").read_text().splitlines()]
    texts = [m["content"] for c in chats for m in c["messages"]]
    tok = train_tokenizer(texts * 5, 300, tmp_path / "tok")
    ids, mask = assistant_target_mask(tok, chats[7]["messages"])
    targeted = tok.decode([t for t, m in zip(ids, mask) if m])
    assert targeted == "Hasilnya 14.<|im_end|>\nSama-sama.<|im_end|>\n"
    untargeted = tok.decode([t for t, m in zip(ids, mask) if not m])
    assert "Berapa 7 tambah 7?" in untargeted and "Hasilnya" not in untargeted


def test_rejected_chats_take_no_held_out_slot(tmp_path):
    """A chat refused by check_chat is counted as a reject and leaves its held-out slot to the
    next kept chat of its language: bad records must not shrink the eval set."""
    from pipeline.training.data import is_eval_doc, prepare_data
    from pipeline.training.tokenizer import train_tokenizer

    good = [json.loads(x) for x in _chats(tmp_path / "good.jsonl", 200).read_text().splitlines()]
    # Each of the first eval-bound chats gets a broken twin just before it, with an id that is
    # also eval-bound: the old split gave the twin the slot.
    broken = [dict(r, id=f"broken-{r['id']}", messages=[{"role": "user", "content": "?"}]) for r in good]
    rows = [r for pair in zip(broken, good) for r in pair]
    chats = tmp_path / "mixed.jsonl"
    chats.write_text("\n".join(json.dumps(r) for r in rows))
    tok = train_tokenizer([m["content"] for c in good for m in c["messages"]] * 2, 300, tmp_path / "tok")
    recipe = _recipe(tmp_path, "task=sft", f"data.sources=[{{path: {chats}}}]", "data.eval_fraction=0.3",
                     "data.eval_max_docs_per_language=5", f"data.cache_dir={tmp_path / 'cache'}")
    data = prepare_data(recipe, tok, build=True)
    assert sum(data.docs_rejected.values()) == 200
    assert sum(is_eval_doc(r["id"], 0.3) for r in broken) > 10  # the twins would have taken slots
    assert len(data.eval) == 10 and len(data.train) == 190  # 5 per language, both languages


def test_sft_recipe_trains_on_chats(tmp_path, train_env):
    from pipeline.train import train

    chats = _chats(tmp_path / "chats.jsonl")
    recipe = _recipe(tmp_path, "task=sft", f"data.sources=[{{path: {chats}}}]",
                     "training.max_steps=2", "training.packing=false")
    train(recipe, train_env / "sft", progress=False)
    record = json.loads((train_env / "sft" / "run.json").read_text())
    assert record["task"] == "sft" and record["data_docs"]["read"] == 40


def test_bad_data_is_a_clear_error(tmp_path, train_env):
    from countrytune.errors import UserError
    from pipeline.train import train

    with pytest.raises(UserError, match="no Parquet or JSONL files"):
        train(_recipe(tmp_path / "nothing-here"), train_env / "x", progress=False)


def test_a_model_folder_without_safetensors_fails_before_any_data_work(sample_prep, train_env):
    from transformers import LlamaConfig

    from countrytune.errors import UserError
    from pipeline.train import train

    model_dir = train_env / "model"
    model_dir.mkdir()
    LlamaConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64).save_pretrained(model_dir)
    (model_dir / "pytorch_model.bin").write_bytes(b"pickled weights")
    from tests.export_fixtures import make_base

    _, tok_dir = make_base(train_env / "tok")
    recipe = load_recipe(TINY, [f"data.sources=[{{path: {sample_prep}}}]", "training.max_steps=2",
                                "model.tiny=null", f"model.name_or_path={model_dir}",
                                "tokenizer.train_vocab_size=null", f"tokenizer.name_or_path={tok_dir}"])
    with pytest.raises(UserError, match="no safetensors weights .found: pytorch_model.bin"):
        train(recipe, train_env / "run", progress=False)
    assert not (train_env / "cache").exists(), "nothing was tokenised"


def test_weighted_sources_are_drawn_to_their_weights_and_recorded(sample_prep, tmp_path, train_env):
    """Two sources holding the same language, weighted 3:1: the run draws them so and run.json
    says what was drawn from each (a recipe that weights only one source is refused)."""
    import pyarrow.parquet as pq

    from countrytune.errors import UserError
    from pipeline.train import train

    extra = tmp_path / "more-jav.jsonl"
    jav = [r["text"] for p in sorted((sample_prep / "data").glob("*.parquet"))
           for r in pq.read_table(p).to_pylist() if r["lang"] == "jav"]
    extra.write_text("".join(json.dumps({"id": f"x{i}", "text": t, "lang": "jav"}) + "\n"
                             for i, t in enumerate(jav)), encoding="utf-8")
    both = f"data.sources=[{{path: {sample_prep}, weight: 3}}, {{path: {extra}, weight: 1}}]"
    train(_recipe(sample_prep, both, "data.eval_fraction=0"), train_env / "w", progress=False)
    mix = json.loads((train_env / "w" / "run.json").read_text())["data_mixture"]
    from_extra = {k: v for k, v in mix.items() if k.endswith(f"from {extra}")}
    assert list(from_extra) == [f"jav from {extra}"] and from_extra[f"jav from {extra}"]["share"] == pytest.approx(0.25)
    assert sum(v["share"] for k, v in mix.items() if k.endswith(f"from {sample_prep}")) == pytest.approx(0.75, abs=1e-5)
    with pytest.raises(UserError, match="give every source a weight, or none"):
        _recipe(sample_prep, f"data.sources=[{{path: {sample_prep}, weight: 3}}, {{path: {extra}}}]")


def test_rows_the_model_or_the_machine_cannot_take_are_refused_in_seconds(sample_prep, train_env, tmp_path):
    # Issue 24: sequence_length 1e9 was accepted and the trainer OOM-killed after a minute.
    import time

    from countrytune.errors import UserError
    from pipeline.train import train

    started = time.monotonic()
    with pytest.raises(UserError, match=r"needs at least .* GiB of activations even recomputing every layer"):
        train(_recipe(sample_prep, "training.sequence_length=1000000000"), train_env / "huge", progress=False)
    assert time.monotonic() - started < 30
    assert not (train_env / "huge" / "checkpoints").exists()

    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.training.tokenizer import train_tokenizer

    train_tokenizer(["Kula nyuwun pirsa dalan menyang pasar."] * 20, 300, tmp_path / "tok")
    base = tmp_path / "base"
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=500, max_position_embeddings=128)).save_pretrained(base)
    with pytest.raises(UserError, match=r"sequence_length 256 is beyond the 128 positions"):
        train(_recipe(sample_prep, "model.tiny=null", f"model.name_or_path={base}", "training.sequence_length=256",
                      "tokenizer.train_vocab_size=null", f"tokenizer.name_or_path={tmp_path / 'tok'}"),
              train_env / "long", progress=False)
