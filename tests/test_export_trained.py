"""The whole chain on a real training run: train, export to a registry, pull, load with
stock peft, and get the trained model's logits exactly."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from countrytune.artifacts.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_pulled_adapter_gives_the_trained_models_logits(sample_prep, train_env):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipeline.export import export_run, pull
    from pipeline.train import train

    recipe = load_recipe(ROOT / "recipes" / "id" / "tiny-cpu.yaml", [
        f"data.sources=[{{path: {sample_prep}}}]", "training.max_steps=3",
        "training.save_every=0", "training.eval_every=0", "training.sequence_length=64",
        "tokenizer.train_vocab_size=400", "model.tiny.hidden_size=32",
        "model.tiny.intermediate_size=64"])
    outcome = train(recipe, train_env / "run", progress=False)
    ref = export_run(train_env / "run", str(train_env / "registry"), "1.0.0")
    package = pull(ref, str(train_env / "registry"), train_env / "pulled")

    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["recipe"]["training"]["max_steps"] == 3
    assert manifest["eval"] and manifest["base_model"]["built_tiny"]

    base = AutoModelForCausalLM.from_pretrained(package / "base_model")
    loaded = PeftModel.from_pretrained(base, package).eval()
    trained = outcome.model.eval()
    ids = torch.randint(0, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
        want = trained(input_ids=ids).logits
        base_only = loaded.get_base_model()  # the adapter must matter, or the check is empty
        with loaded.disable_adapter():
            plain = base_only(input_ids=ids).logits
    assert torch.equal(got, want)
    assert not torch.allclose(plain, want)
