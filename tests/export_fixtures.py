"""Builders for the export tests (plain functions; each test module wraps them in fixtures).

`make_run` is a real run of the trainer (the tiny-cpu recipe renamed cpt-lora: a 2-layer,
64-wide Llama with LoRA r=8 on q_proj and v_proj, 6 steps, ~5 s), so export reads exactly
what training writes (run.json's schema is countrytune/artifacts/run_record.py). `make_base` builds a
tiny base and tokenizer for tests that only need a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE_VOCAB = 256  # more rows than the tokenizer's ~200 tokens, like real padded vocabularies
SENTENCES = [
    "Saya pergi ke pasar untuk membeli sayur dan buah segar.",
    "Kulo badhe tindak dhateng peken enjing menika.",
    "Abdi bade angkat ka pasar isuk-isuk pisan.",
    "Pemerintah daerah membangun jalan baru di desa kami.",
    "Bocah-bocah padha dolanan ing latar omah.",
    "Hujan turun deras sejak sore hingga malam hari.",
]


@dataclass
class TinyRun:
    """A run directory and what the in-memory peft model computed before saving."""

    path: Path
    input_ids: object  # torch.Tensor; typed loosely so importing this module needs no torch
    logits: object


def make_prep_dir(out: Path) -> Path:
    """Run the real prep on the embedded sample corpus (~3 s)."""
    from data_prep.config import PrepConfig
    from data_prep.runner import run_prep

    config = yaml.safe_load((ROOT / "recipes/id/prep-sample.yaml").read_text(encoding="utf-8"))
    config.update(inputs=[str(ROOT / p) for p in config["inputs"]], output=str(out), workers=1)
    run_prep(PrepConfig(**config), show_progress=False)
    return out


def make_base(out: Path) -> tuple[Path, Path]:
    """A tiny random Llama (safetensors) and a tiny BPE tokenizer: (base_dir, tokenizer_dir)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    tokenizer_dir = out / "tokenizer"
    fast.save_pretrained(tokenizer_dir)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=BASE_VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    base_dir = out / "base_model"
    LlamaForCausalLM(config).save_pretrained(base_dir)
    return base_dir, tokenizer_dir


def write_import_provenance(base: Path, model_name: str, gguf_sha256: str = "0" * 64) -> None:
    """A provenance.json as `countrytune model import` writes one, listing the folder's files by
    hash (the GGUF it names is made up: a test base, not an imported one)."""
    import datetime as dt

    from countrytune.artifacts.provenance import (Licence, Provenance, Quantisation, SourceRef, WrittenFile,
                                                  write_provenance)
    from countrytune.hashing import sha256_file

    write_provenance(base, Provenance(
        model_name=model_name, architecture="llama",
        source=SourceRef(kind="gguf", files=[f"{model_name}.gguf"], gguf_sha256=gguf_sha256),
        licence=Licence(name="Apache-2.0", source="given by the user"),
        quantisation=Quantisation(file_type="ALL_F32", tensor_types={"F32": 1}, written_dtype="float32"),
        chat_template=False, imported=dt.datetime.now(dt.timezone.utc).isoformat(), software={},
        files=[WrittenFile(path=p.name, sha256=sha256_file(p), size=p.stat().st_size)
               for p in sorted(base.iterdir())]))


def make_run(path: Path, prep_dir: Path, *, overrides: tuple[str, ...] = (),
             stop_after: int | None = None) -> TinyRun:
    """Train the tiny recipe into `path` for real; `overrides` are `--set` values."""
    import torch
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from countrytune.artifacts.recipe import load_recipe
    from pipeline.train import train

    recipe = load_recipe(ROOT / "recipes/id/tiny-cpu.yaml", [
        f"data.sources=[{{path: {prep_dir}}}]", f"data.cache_dir={path.parent / '.cache'}",
        "name=cpt-lora", "training.max_steps=6", "training.eval_every=0", "training.save_every=0",
        "training.log_every=2", "training.sequence_length=64", "tokenizer.train_vocab_size=400",
        "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "lora.r=8", "lora.alpha=16",
        "lora.target_modules=[q_proj, v_proj]", "data.eval_fraction=0.2", *overrides])
    try:
        outcome = train(recipe, path, progress=False, stop_after=stop_after)
    finally:  # accelerate keeps process-wide state; the next run in this process starts clean
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()
    model = outcome.model.eval()
    input_ids = torch.tensor([[1, 5, 17, 42, 99, 150, 7, 2]])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    return TinyRun(path, input_ids, logits)


def load_pulled(package_dir: Path):
    """Stock peft loading of a pulled package onto the base it names (shipped in base_model/)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(package_dir / "base_model")
    return PeftModel.from_pretrained(base, package_dir).eval()


def recipes_with_storage(root: Path, allowed: list[str]) -> Path:
    """A recipes folder whose `id` profile allows only `allowed` storage locations; point
    $COUNTRYTUNE_RECIPES at it."""
    data = yaml.safe_load((ROOT / "recipes/countries/id.yaml").read_text(encoding="utf-8"))
    data["storage"]["allowed_output_locations"] = allowed
    path = root / "recipes" / "countries" / "id.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return root / "recipes"
