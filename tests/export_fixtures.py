"""Builders of training run directories for the export tests (plain functions; each test
module wraps them in its own fixtures).

A run here is what pipeline/train.py leaves behind, made in a second instead of trained:
a 2-layer, 64-wide Llama with random weights, a BPE tokenizer trained on a few sentences,
and a peft LoRA whose B matrices are randomised so the adapter really changes the logits
(peft initialises B to zero, which would make "identical logits" prove nothing).
"""

from __future__ import annotations

import hashlib
import json
import shutil
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


def make_run(path: Path, base_dir: Path, tokenizer_dir: Path, prep_dir: Path, *, r: int = 8,
             lora: dict | None = None, tokenizer_differs: bool = False, done: bool = True,
             seed: int = 0) -> TinyRun:
    """Write a finished run directory per the trainer's contract."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path.mkdir(parents=True)
    shutil.copytree(base_dir, path / "base_model")
    shutil.copytree(tokenizer_dir, path / "tokenizer")
    base = AutoModelForCausalLM.from_pretrained(path / "base_model")
    settings = {"r": r, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                **(lora or {})}
    model = get_peft_model(base, LoraConfig(**settings))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    model.eval()
    input_ids = torch.tensor([[1, 5, 17, 42, 99, 150, 7, 2]])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    model.save_pretrained(path / "adapter")

    recipe = {"country": "id", "name": "cpt-lora", "model": {"tiny": {"layers": 2, "hidden": 64}},
              "lora": {"r": r, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
              "data": {"sources": [{"path": str(prep_dir)}]}}
    (path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    # The trainer's hash (pipeline.recipe.recipe_sha256): sorted-key JSON, default separators.
    recipe_sha = hashlib.sha256(json.dumps(recipe, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    shards = [{"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "docs": 1}
              for p in sorted((prep_dir / "data").glob("part-*.parquet"))]
    run = {
        "country": "id", "name": "cpt-lora", "languages": ["ind", "jav", "sun"],
        "base_model": {"name_or_path": str((path / "base_model").resolve()), "revision": None,
                       "config_sha256": hashlib.sha256((base_dir / "config.json").read_bytes()).hexdigest(),
                       "built_tiny": True},
        "tokenizer": {"path": "tokenizer", "differs_from_base": tokenizer_differs},
        "recipe_sha256": recipe_sha,
        "data": [{"source": str(prep_dir), "stats": str(prep_dir / "stats.json"),
                  "data_card": str(prep_dir / "DATA_CARD.md"), "shards": shards}],
        "metrics": {"steps": 10, "tokens": 20480, "train_loss": 4.21, "wall_s": 12.5},
        "eval": {"ind": {"loss": 4.5, "perplexity": 90.0, "tokens": 512},
                 "jav": {"loss": 4.8, "perplexity": 121.5, "tokens": 256}},
        "software": {"torch": torch.__version__},
        "started": "2026-11-28T06:00:00+00:00", "finished": "2026-11-28T06:01:00+00:00",
    }
    (path / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    if done:
        (path / "DONE").write_text("")
    return TinyRun(path, input_ids, logits)


def load_pulled(package_dir: Path):
    """Stock peft loading of a pulled package onto the base it names (shipped in base_model/)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(package_dir / "base_model")
    return PeftModel.from_pretrained(base, package_dir).eval()
